//! Gives the system back the memory glibc's allocator keeps after the hub freed it.
//!
//! glibc's malloc returns freed memory to the system only from the top of each arena. After a
//! connect storm, or once thousands of accounts aged out and were forgotten, the freed blocks
//! lie between live ones (stream state allocated during the storm, the accounts still held),
//! so the process keeps its high-water mark for as long as it runs. `malloc_trim(0)` walks
//! every arena and gives whole free pages back with `madvise`, which is what brings the RSS back
//! near what the hub holds (BENCHMARKS.md, "Accounts come and go").
//!
//! It is the one `unsafe` call in the workspace: a foreign function that takes no pointer and
//! that glibc serializes with every other allocator call. Only with glibc and the system
//! allocator: mimalloc and jemalloc give memory back on their own schedule, and other C
//! libraries have no such call. What it does not do: decide anything about what the hub
//! holds; it only returns what is already free.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the free pages are given back: short enough that memory freed by a storm or by
/// forgetting accounts is back with the system within seconds. A trim walks the arenas' free
/// lists, not the live heap, on a blocking thread so no stream waits for it; the fan-out
/// benchmark with and without it differs by less than the machine's noise (BENCHMARKS.md,
/// "Accounts come and go").
pub const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Gives free pages back every [`TRIM_INTERVAL`] until `shutdown`; does nothing where there
/// is no glibc `malloc_trim` or another allocator is in use.
pub fn spawn(shutdown: CancellationToken) {
    if !AVAILABLE {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let released = tokio::task::spawn_blocking(release).await.unwrap_or(false);
            tracing::trace!(released, took_us = started.elapsed().as_micros() as u64, "allocator trimmed");
        }
    });
}

/// Whether [`release`] can do anything in this build.
const AVAILABLE: bool = cfg!(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"), not(feature = "jemalloc")));

/// Asks glibc to return the free pages of every arena; returns whether it gave any back.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"), not(feature = "jemalloc")))]
#[allow(unsafe_code)]
fn release() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc locks each arena
    // while it walks it, as every malloc and free does.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"), not(feature = "jemalloc"))))]
fn release() -> bool {
    false
}

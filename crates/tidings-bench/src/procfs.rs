//! What the kernel says about the targets: resident memory of a process tree and the TCP
//! socket memory of the whole machine.

use std::collections::{BTreeSet, HashMap};

/// `VmRSS` of one process, in KiB; `None` when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The parent pid of every process on the machine.
fn parents() -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> BTreeSet<u32> {
    let parents = parents();
    let mut set = BTreeSet::from([root]);
    loop {
        let before = set.len();
        for (pid, ppid) in &parents {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// Summed `VmRSS` of a process tree, in KiB, leaving out the pids in `exclude`.
pub fn tree_rss_kib(root: u32, exclude: &[u32]) -> u64 {
    tree(root).into_iter().filter(|p| !exclude.contains(p)).filter_map(rss_kib).sum()
}

/// User plus system CPU time of one process so far, in seconds (clock ticks of 10 ms).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime field 14 and stime field 15 (1-based).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Summed CPU time of a process tree, in seconds.
pub fn tree_cpu_secs(root: u32) -> f64 {
    tree(root).into_iter().filter_map(cpu_secs).sum()
}

/// Names of the processes in a tree, for the report.
pub fn tree_names(root: u32) -> Vec<String> {
    tree(root)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// The `mem` field of the `TCP:` line of `/proc/net/sockstat`: pages of socket buffers held
/// by all TCP sockets of the machine (both ends of a loopback connection count).
pub fn tcp_mem_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields.windows(2).find(|w| w[0] == "mem").and_then(|w| w[1].parse().ok())
}

/// CPU time the whole machine has been busy so far (every process, ours or not, and the
/// kernel), in core-seconds: user, nice, system, irq, softirq and steal of `/proc/stat`.
pub fn machine_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<u64>();
    Some(busy as f64 / 100.0)
}

/// The machine's 1-minute load average.
pub fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Size of a memory page, in bytes.
pub const PAGE_BYTES: u64 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measured() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(tree(me).contains(&me));
        assert!(tcp_mem_pages().is_some());
        assert!(machine_busy_secs().unwrap() > 0.0);
    }
}

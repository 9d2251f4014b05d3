#!/usr/bin/env bash
# Side-by-side benchmarks of the Tidings hub, Nchan and Pushpin on this machine.
#
#   bench/run.sh                 # every scenario at the issue's sizes against all three
#   bench/run.sh --quick         # smoke run: 1,000 streams, 3 s of publishing
#   bench/run.sh --targets tidings --scenarios idle,fanout --repeat 3
#
# Sizes also come from the environment: BENCH_STREAMS, BENCH_ACCOUNTS, BENCH_FANOUT_RATE,
# BENCH_MANY_RATE, BENCH_RESUME_RATE, BENCH_DURATION. Every other argument goes to
# `tidings bench run` (see `tidings bench run --help`). Results: bench/results/<UTC time>.json
# and .md. Needs root for apt-get when a peer is missing.
#
# BENCH_TIDINGS_BIN=<path> serves the hub from another `tidings` binary (one built with
# another allocator, say) while this checkout's build drives the load:
#
#   cargo build --release -p tidings --features jemalloc && cp target/release/tidings /tmp/tidings-jemalloc
#   BENCH_TIDINGS_BIN=/tmp/tidings-jemalloc bench/run.sh --targets tidings --scenarios idle
set -euo pipefail
cd "$(dirname "$0")/.."

# The peers, from Debian's packages, installed when missing. Their packaged services are not
# used: the harness starts its own instances on loopback with the configs in crates/tidings-bench/peers/.
need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v pushpin >/dev/null || need+=(pushpin)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
    # Packaged services start on install and would hold ports and memory during the run.
    for svc in nginx pushpin; do
        if command -v systemctl >/dev/null; then systemctl stop "$svc" 2>/dev/null || true; fi
        service "$svc" stop 2>/dev/null || true
    done
fi

# 10,000 streams need 10,000 descriptors in the hub and in the load generator; the harness
# splits its streams over worker processes above --per-process (15,000 by default).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n)" >&2

cargo build --release -p tidings
bin="${CARGO_TARGET_DIR:-target}/release/tidings"

mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%dT%H%M%SZ).json"
"$bin" bench run --out "$out" "$@"

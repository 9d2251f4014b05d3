#!/usr/bin/env bash
# Relay throughput and commit -> delivery latency, beside direct POST /events, in one run:
# starts its own PostgreSQL (initdb into a temp dir), a hub (memory engine) and
# `tidings relay postgres` on loopback, then runs the `outbox_bench` example against them.
#
#   bench/outbox.sh                       # 5,000 activities x 3 rounds, latency at 200/s
#   bench/outbox.sh --count 20000 --rate 500 --repeat 5
#
# Arguments go to the example (--count, --concurrency, --latency-count, --rate, --repeat).
# PostgreSQL runs with its defaults (fsync on, synchronous_commit on): a commit is on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_bin="${TIDINGS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
[ -x "$pg_bin/postgres" ] || { echo "error: PostgreSQL server not found; install it (Debian: apt-get install postgresql) or set TIDINGS_PG_BIN" >&2; exit 1; }

cargo build --release -p tidings --bin tidings
cargo build --release -p tidings-relay --example outbox_bench
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/tidings"

work="$(mktemp -d)"
chmod 755 "$work"   # the postgres user must reach its directory inside
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/pg/data/postmaster.pid" ] && kill "$(head -n1 "$work/pg/data/postmaster.pid")" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work/pg"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
as_pg "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
as_pg "$pg_bin/postgres" -D "$work/pg/data" -p "$port" -k "$work/pg" -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on >"$work/pg.log" 2>&1 &
pids+=($!)
db="postgres://postgres@127.0.0.1:$port/postgres"
for _ in $(seq 100); do "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done

key="bench-pub-$RANDOM$RANDOM"
cat >"$work/hub.toml" <<TOML
listen = "127.0.0.1:0"
[[auth.tokens]]
token = "bench-user"
account = "bench"
user = "bench@example.com"
session = "s-bench"
[[auth.publishers]]
key = "$key"
[history]
max_events = 100000
TOML
TIDINGS_LOG=warn "$bin" serve --config "$work/hub.toml" >"$work/hub.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on http://" "$work/hub.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on http://" "$work/hub.out" || { cat "$work/hub.out" >&2; exit 1; }
hub="http://$(grep -o 'listening on http://[^ ]*' "$work/hub.out" | head -n1 | sed 's|listening on http://||')"

TIDINGS_LOG=warn "$bin" relay postgres --database-url "$db" --url "$hub" --key "$key" --create-schema --listen 127.0.0.1:0 >"$work/relay.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on http://" "$work/relay.out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on http://" "$work/relay.out" || { cat "$work/relay.out" >&2; exit 1; }
relay="http://$(grep -o 'listening on http://[^ ]*' "$work/relay.out" | head -n1 | sed 's|listening on http://||')"
for _ in $(seq 100); do curl -fs "$relay/readyz" | grep -q '"role":"active"' && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(uname -sr); PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')"
"$target/release/examples/outbox_bench" --database-url "$db" --hub "$hub" --key "$key" --token bench-user --account bench "$@"
echo "relay metrics:"
curl -fs "$relay/metrics" | grep -E '^tidings_relay_(rows_relayed_total|rows_duplicate_total|lag_seconds_(sum|count)) '

#!/usr/bin/env bash
# Runs the whole lottery on this host, no Docker: the server plus one client per
# agency file, all on 127.0.0.1; prints the winners per agency and stops the server
# with SIGTERM. Exit code 0 only if every agency got its winners and the server
# stopped cleanly.
#
#   scripts/run_local.sh [DATA_DIR]     (default: agencies/)
#
# Environment: PORT (default 12345), BATCH (CLI_BATCH_MAX_AMOUNT, default 200),
# WORK (where logs and the bets file go; default a fresh temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

data=${1:-agencies}
port=${PORT:-12345}
work=${WORK:-$(mktemp -d)}
mapfile -t files < <(find "$data" -maxdepth 1 -name 'agency-*.csv' 2>/dev/null | sort -V)
n=${#files[@]}
if [ "$n" -eq 0 ]; then
    echo "no agency-*.csv files in $data" >&2
    exit 2
fi

cargo build --release --locked --quiet
bin=target/release

SERVER_HOST=127.0.0.1 SERVER_PORT=$port SERVER_AGENCIES=$n SERVER_STORAGE="$work/bets.csv" \
    "$bin/server" --config config/server.toml >"$work/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "action: listen | result: success" "$work/server.log" && break
    sleep 0.1
done

pids=()
for k in $(seq "$n"); do
    CLI_ID=$k CLI_SERVER_ADDRESS=127.0.0.1:$port CLI_DATA="$data/agency-$k.csv" \
        CLI_BATCH_MAX_AMOUNT=${BATCH:-200} \
        "$bin/client" --config config/client.toml >"$work/client-$k.log" 2>&1 &
    pids+=($!)
done
failed=0
for k in $(seq "$n"); do
    if ! wait "${pids[$((k - 1))]}"; then
        failed=1
    fi
done

kill -TERM $server
server_rc=0
wait $server || server_rc=$?
trap - EXIT

scripts/winners_table.sh "$work" "$n"
stored=$(wc -l <"$work/bets.csv")
echo
echo "bets stored: $stored   logs: $work"
grep -h "result: fail" "$work"/*.log || true
if [ "$failed" -ne 0 ] || [ "$server_rc" -ne 0 ]; then
    echo "FAILED (clients ok: $((1 - failed)), server exit code: $server_rc)" >&2
    exit 1
fi

#!/usr/bin/env bash
# The whole lottery in containers (what `make demo` runs once the images are built):
# starts the compose file's server and agencies on an empty bets volume, waits for every
# agency, stops the server with `docker compose stop` (SIGTERM), prints the draw per
# agency (bets, winners, their documents, the draw's duration), and removes the
# containers, the networks and the bets volume. Ctrl-C stops it at once (and cleans up).
# Exit code 0 only if every agency got its winners and the server exited 0.
#
#   scripts/docker_demo.sh [COMPOSE_FILE]        (default docker-compose.yaml)
#
# It refuses to start while a container with one of the file's container names
# (`server`, `client1` …) exists, and says which Compose project it belongs to.
# The containers' logs go to a directory of their own ($TMPDIR/loteria-demo.XXXXXX),
# removed at the end of a run that succeeded or was interrupted; a failed run keeps it
# and prints its path.
# Environment: KEEP=1 keeps the stopped containers, the volume and the logs for
# inspection; HOLD=1 (`make demo-watch`) leaves the server and its status page up
# once every agency is done, until Ctrl-C, then prints the table and cleans up;
# DEMO_TIMEOUT (seconds, default 300) bounds the wait for all the agencies;
# LOTERIA_STATUS_PORT (default 8080; another free one if 8080 is taken) is where the
# status page is published on 127.0.0.1 while the demo runs.
set -euo pipefail

file=$(realpath "${1:-docker-compose.yaml}")
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose -f "$file")
else
    compose=(docker-compose -f "$file")
fi
say() { echo "demo: $*"; }
problem() { echo "demo: $*" >&2; }

mapfile -t services < <("${compose[@]}" config --services)
mapfile -t clients < <(printf '%s\n' "${services[@]}" | grep -x 'client[0-9]*' | sort -V)
n=${#clients[@]}

# Containers in the way (the names are fixed): say whose, with the command that
# removes that lottery, and start nothing.
CHECK_NAMES_AS=demo scripts/check_names.sh "$file" || exit 1

# The status page goes on 127.0.0.1:8080 unless that port is taken.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${LOTERIA_STATUS_PORT:-}" ]; then
    LOTERIA_STATUS_PORT=8080
    if port_busy 8080; then
        LOTERIA_STATUS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        say "127.0.0.1:8080 is taken: the status page goes on port $LOTERIA_STATUS_PORT"
    fi
fi
export LOTERIA_STATUS_PORT

# The logs of this run; removed at the end unless KEEP=1 or the run failed (then its
# path is printed). `outcome` says which: set to "ok" or "interrupted" where the run
# ends that way; anything else (an error, a failed agency) is a failure.
work=$(mktemp -d "${TMPDIR:-/tmp}/loteria-demo.XXXXXX")
outcome=failed
waits=()
cleanup() {
    trap - INT TERM
    [ ${#waits[@]} -eq 0 ] || kill "${waits[@]}" 2>/dev/null || true
    if [ -n "${hold_pid:-}" ]; then kill "$hold_pid" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" != 1 ]; then
        "${compose[@]}" down --volumes --remove-orphans --timeout 5 >"$work/down.log" 2>&1 ||
            { problem "could not remove the containers (docker compose down):" \
                "$(tail -n 3 "$work/down.log")"; outcome=failed; }
    fi
    if [ "$outcome" = failed ]; then
        problem "the logs of this run are kept in $work"
    elif [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$work"
    elif [ "$outcome" != ok ]; then
        problem "KEEP=1: the logs of this run are kept in $work"
    fi
}
interrupted() {
    problem "interrupted: stopping and removing the lottery's containers"
    outcome=interrupted
    exit 130 # the EXIT trap cleans up
}
trap cleanup EXIT
trap interrupted INT TERM

# No container of this file exists, so this only drops a bets volume left by a lottery
# whose containers were removed without `down --volumes`: the draw counts this run only.
"${compose[@]}" down --volumes --remove-orphans >"$work/down.log" 2>&1 || true
if ! "${compose[@]}" up --detach --no-build >"$work/up.log" 2>&1; then
    problem "the lottery did not start (docker compose up):"
    sed 's/^/    /' "$work/up.log" >&2
    exit 1 # the EXIT trap removes what it started and keeps the logs
fi
if [ "${HOLD:-0}" = 1 ]; then
    say "server + $n agencies started; status page: http://127.0.0.1:$LOTERIA_STATUS_PORT/" \
        "(or: make status LOOP=100 PERIOD=2s)"
else
    say "server + $n agencies started; status page: http://127.0.0.1:$LOTERIA_STATUS_PORT/" \
        "(or: make status; gone when the demo ends: make demo-watch runs one to watch)"
fi

# Each wait runs in the background and the script waits for it with the `wait`
# builtin, which a signal interrupts: Ctrl-C takes effect at once.
deadline=$((SECONDS + ${DEMO_TIMEOUT:-300}))
for k in $(seq "$n"); do
    timeout "$((deadline - SECONDS > 0 ? deadline - SECONDS : 1))" \
        docker wait "client$k" >"$work/client-$k.code" 2>/dev/null &
    waits+=($!)
done
failed=0
for k in $(seq "$n"); do
    waited=0
    wait "${waits[$((k - 1))]}" || waited=$?
    code=$(cat "$work/client-$k.code")
    docker logs "client$k" >"$work/client-$k.log" 2>&1 || true
    if [ "$waited" = 124 ]; then
        problem "agency $k (client$k) did not finish within DEMO_TIMEOUT=${DEMO_TIMEOUT:-300} s;" \
            "its last log line: $(tail -n 1 "$work/client-$k.log")"
        failed=1
    elif [ -z "$code" ]; then
        problem "agency $k: no container client$k to wait for (docker wait failed)"
        failed=1
    elif [ "$code" != 0 ]; then
        problem "agency $k (client$k) failed with exit code $code; its last log line:" \
            "$(tail -n 1 "$work/client-$k.log")"
        failed=1
    fi
done
waits=()
# HOLD=1 (`make demo-watch`): the draw is done; the server and its status page stay up
# until Ctrl-C, then the demo goes on (stop, table, down).
if [ "${HOLD:-0}" = 1 ]; then
    say "every agency is done; the status page stays at" \
        "http://127.0.0.1:$LOTERIA_STATUS_PORT/ until Ctrl-C (then the table, and down)"
    trap 'trap - INT TERM' INT TERM
    sleep infinity &
    hold_pid=$!
    wait "$hold_pid" || true
    kill "$hold_pid" 2>/dev/null || true
    hold_pid=
    trap interrupted INT TERM
    echo
fi
"${compose[@]}" stop server >"$work/stop.log" 2>&1 ||
    problem "docker compose stop server failed: $(tail -n 1 "$work/stop.log")"
server_rc=$(docker inspect -f '{{.State.ExitCode}}' server)
docker logs server >"$work/server.log" 2>&1
stored=$({ docker cp server:/app/data/bets.csv - | tar -xO | wc -l; } 2>/dev/null) ||
    stored="? (no bets file)"

scripts/winners_table.sh "$work" "$n"
echo
grep -h "result: fail" "$work"/*.log || true
if [ "$server_rc" != 0 ]; then
    problem "the server exited with code $server_rc; its last log line:" \
        "$(tail -n 1 "$work/server.log")"
fi
if [ "$failed" -ne 0 ] || [ "$server_rc" != 0 ]; then
    echo "bets stored: $stored"
    problem "FAILED: see the lines above and the logs in $work"
    exit 1 # the EXIT trap removes the lottery and keeps the logs
fi
outcome=ok
if [ "${KEEP:-0}" = 1 ]; then
    echo "bets stored: $stored   logs: $work (KEEP=1: kept, with the stopped containers" \
        "and the volume)"
else
    echo "bets stored: $stored   (logs removed; KEEP=1 keeps them and the stopped containers)"
fi

#!/usr/bin/env bash
# The whole lottery in containers (what `make demo` runs once the images are built):
# starts the compose file's server and agencies on an empty bets volume, waits for every agency, stops the
# server with `docker compose stop` (SIGTERM), prints the winners per agency, and
# removes the containers, the network and the bets volume.
# Exit code 0 only if every agency got its winners and the server exited 0.
#
#   scripts/docker_demo.sh [COMPOSE_FILE]        (default docker-compose.yaml)
#
# It refuses to start while a container named `server` exists (a lottery started with
# `make docker-compose-up`, say): stop that one first with `make docker-compose-down`.
# Environment: KEEP=1 keeps the stopped containers and the volume for inspection;
# DEMO_TIMEOUT (seconds, default 300) bounds the wait for all the agencies.
set -euo pipefail

file=$(realpath "${1:-docker-compose.yaml}")
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose -f "$file")
else
    compose=(docker-compose -f "$file")
fi
if docker inspect --type container server >/dev/null 2>&1; then
    echo "a container named 'server' exists already: remove that lottery first" \
        "(make docker-compose-down)" >&2
    exit 1
fi
mapfile -t clients < <("${compose[@]}" config --services | grep -x 'client[0-9]*' | sort -V)
n=${#clients[@]}
work=$(mktemp -d)

cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        "${compose[@]}" down --volumes --remove-orphans 2>/dev/null || true
    fi
}
trap cleanup EXIT
# No server container exists, so this only drops a bets volume left by a lottery
# whose containers were removed without `down --volumes`: the draw counts this run only.
"${compose[@]}" down --volumes --remove-orphans 2>/dev/null
"${compose[@]}" up --detach --no-build

failed=0
deadline=$((SECONDS + ${DEMO_TIMEOUT:-300}))
for k in $(seq "$n"); do
    left=$((deadline - SECONDS))
    code=$(timeout "$((left > 0 ? left : 1))" docker wait "client$k") || code="none (timed out)"
    docker logs "client$k" >"$work/client-$k.log" 2>&1
    if [ "$code" != 0 ]; then
        echo "client$k: exit code $code" >&2
        failed=1
    fi
done
"${compose[@]}" stop server
server_rc=$(docker inspect -f '{{.State.ExitCode}}' server)
docker logs server >"$work/server.log" 2>&1
stored=$({ docker cp server:/app/data/bets.csv - | tar -xO | wc -l; } 2>/dev/null) ||
    stored="? (no bets file)"

scripts/winners_table.sh "$work" "$n"
echo
echo "bets stored: $stored   logs: $work"
grep -h "result: fail" "$work"/*.log || true
if [ "$failed" -ne 0 ] || [ "$server_rc" != 0 ]; then
    echo "FAILED (every client exited 0: $((1 - failed)), server exit code: $server_rc)" >&2
    exit 1
fi

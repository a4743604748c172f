#!/usr/bin/env bash
# The whole lottery in containers (what `make demo` runs once the images are built):
# starts the compose file's server and agencies from scratch (an earlier run's
# containers and bets volume are removed first), waits for every agency, stops the
# server with `docker compose stop` (SIGTERM), prints the winners per agency, and
# removes the containers, the network and the volume.
# Exit code 0 only if every agency got its winners and the server exited 0.
#
#   scripts/docker_demo.sh [COMPOSE_FILE]        (default docker-compose.yaml)
#
# Environment: KEEP=1 keeps the stopped containers and the volume for inspection
# (remove them with `make docker-compose-down`); DEMO_TIMEOUT (seconds, default 300)
# bounds the wait for each agency.
set -euo pipefail
cd "$(dirname "$0")/.."

file=${1:-docker-compose.yaml}
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose -f "$file")
else
    compose=(docker-compose -f "$file")
fi
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-loteria}
mapfile -t clients < <("${compose[@]}" config --services | grep -x 'client[0-9]*' | sort -V)
n=${#clients[@]}
work=$(mktemp -d)

"${compose[@]}" down --volumes --remove-orphans 2>/dev/null
"${compose[@]}" up --detach --no-build
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        "${compose[@]}" down --volumes --remove-orphans 2>/dev/null
    fi
}
trap cleanup EXIT

failed=0
for k in $(seq "$n"); do
    code=$(timeout "${DEMO_TIMEOUT:-300}" docker wait "client$k") || code="no exit (timeout)"
    docker logs "client$k" >"$work/client-$k.log" 2>&1
    if [ "$code" != 0 ]; then
        echo "client$k: exit code $code" >&2
        failed=1
    fi
done
"${compose[@]}" stop server
server_rc=$(docker inspect -f '{{.State.ExitCode}}' server)
docker logs server >"$work/server.log" 2>&1
stored=$(docker cp server:/app/data/bets.csv - | tar -xO | wc -l)

scripts/winners_table.sh "$work" "$n"
echo
echo "bets stored: $stored   logs: $work"
grep -h "result: fail" "$work"/*.log || true
if [ "$failed" -ne 0 ] || [ "$server_rc" != 0 ]; then
    echo "FAILED (every client exited 0: $((1 - failed)), server exit code: $server_rc)" >&2
    exit 1
fi

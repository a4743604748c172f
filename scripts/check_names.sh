#!/usr/bin/env bash
# Are the compose file's container names free? The names are fixed (container_name:
# `server`, `client1` …), so a lottery started by hand, by another checkout or by the
# tests blocks another one. For each Compose project holding some of them, one line on
# stderr naming it and the exact command that removes that lottery; exit 1. Exit 0
# (silently) when the names are free. It creates nothing and changes nothing.
#
#   scripts/check_names.sh [--allow-own] [COMPOSE_FILE]     (default docker-compose.yaml)
#
# --allow-own: containers of this file's own Compose project are no conflict (`up` on
# a running lottery of the same project is fine; `make demo` wants none at all).
# CHECK_NAMES_AS (default "check_names") starts each line: the caller's name.
set -euo pipefail

allow_own=0
if [ "${1:-}" = --allow-own ]; then
    allow_own=1
    shift
fi
file=$(realpath "${1:-docker-compose.yaml}")
cd "$(dirname "$0")/.."
as=${CHECK_NAMES_AS:-check_names}
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose -f "$file")
    down="docker compose"
else
    compose=(docker-compose -f "$file")
    down=docker-compose
fi
problem() { echo "$as: $*" >&2; }

# Compose names the project after the compose file's directory (lower case, only
# letters, digits, - and _), unless COMPOSE_PROJECT_NAME says otherwise.
project=${COMPOSE_PROJECT_NAME:-$(basename "$(dirname "$file")" | LC_ALL=C tr '[:upper:]' '[:lower:]' | LC_ALL=C tr -cd 'a-z0-9_-')}
if ! services=$("${compose[@]}" config --services 2>&1); then
    problem "cannot read $file: $services"
    exit 1
fi
mapfile -t clients < <(printf '%s\n' "$services" | grep -x 'client[0-9]*' | sort -V)

declare -A owned=() where=() # project -> container names, its compose files
for name in server "${clients[@]}"; do
    labels=$(docker inspect --type container -f \
        '{{index .Config.Labels "com.docker.compose.project"}}|{{index .Config.Labels "com.docker.compose.project.config_files"}}' \
        "$name" 2>/dev/null) || continue
    owner=${labels%%|*}
    owner=${owner:--} # "-": made outside Compose
    [ "$allow_own" = 1 ] && [ "$owner" = "$project" ] && continue
    owned[$owner]+=" $name"
    where[$owner]=${labels#*|}
done
[ ${#owned[@]} -gt 0 ] || exit 0
for owner in "${!owned[@]}"; do
    names=${owned[$owner]# }
    if [ "$names" = "${names// /}" ]; then
        these="the container '$names' exists"
    else
        these="the containers ${names// /, } exist"
    fi
    if [ "$owner" = - ]; then
        problem "$these, made outside Compose; remove with:" \
            "docker rm -f ${owned[$owner]# }"
    elif [ "$owner" = "$project" ]; then
        # `make docker-compose-down` acts on the repository's own compose file under
        # its default project name only: for anything else, the command itself.
        files=${where[$owner]:-$file}
        if [ "$file" = "$(realpath docker-compose.yaml)" ] && [ -z "${COMPOSE_PROJECT_NAME:-}" ]; then
            how="make docker-compose-down"
        else
            how="$down -p $owner -f ${files//,/ -f } down --volumes"
        fi
        problem "$these: a lottery of this compose file" \
            "(Compose project '$owner') is there already; remove it with: $how"
    else
        files=${where[$owner]}
        problem "$these, of the Compose project" \
            "'$owner'${files:+ (started from ${files//,/ and })}; remove that" \
            "lottery with: $down -p $owner ${files:+-f ${files//,/ -f }} down --volumes"
    fi
done
exit 1

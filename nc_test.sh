#!/usr/bin/env bash
# Echo check: is the lottery server up and answering?
#
# Sends one ECHO frame (docs/PROTOCOL.md: version 2, kind 0x05, u16 big-endian length,
# payload) with netcat from a throw-away container attached to the server container's
# own network — no netcat on the host, no published port — and expects the very same
# bytes back. Prints exactly one verdict line on stdout and exits 0 / 1:
#   action: test_echo_server | result: success
#   action: test_echo_server | result: fail       (the reason goes to stderr)
#
# Environment (all optional):
#   NC_TEST_SERVER   container name and host name of the server   (default server)
#   NC_TEST_PORT     its port                                      (default 12345)
#   NC_TEST_NETWORK  network to attach to          (default: the server container's)
#   NC_TEST_IMAGE    image with busybox nc and timeout        (default busybox:1.35)
#   NC_TEST_TIMEOUT  seconds to wait for the answer                    (default 5)
set -uo pipefail

server=${NC_TEST_SERVER:-server}
port=${NC_TEST_PORT:-12345}
image=${NC_TEST_IMAGE:-busybox:1.35}
wait_s=${NC_TEST_TIMEOUT:-5}

verdict() {
    echo "action: test_echo_server | result: $1"
    [ "$1" = success ]
    exit
}

fail() {
    echo "nc_test.sh: $*" >&2
    verdict fail
}

if [ "$(docker inspect --type container -f '{{.State.Running}}' "$server" 2>/dev/null)" != true ]; then
    fail "no running container named '$server' (start the lottery: make docker-compose-up)"
fi
network=${NC_TEST_NETWORK:-$(docker inspect --type container -f \
    '{{range $name, $_ := .NetworkSettings.Networks}}{{println $name}}{{end}}' "$server" |
    head -n 1)}
[ -n "$network" ] || fail "container '$server' is on no network"

# A fresh message each time, so that a stale or canned answer cannot pass.
message="nc_test $$ $(date +%s%N)"
length=${#message} # ASCII only: characters are bytes
frame=$(mktemp)
reply=$(mktemp)
errors=$(mktemp)
trap 'rm -f "$frame" "$reply" "$errors"' EXIT
# shellcheck disable=SC2059 # the format is built on purpose: two octal escapes
printf "\\002\\005$(printf '\\%03o\\%03o' $((length >> 8)) $((length & 255)))%s" \
    "$message" >"$frame"

# The server closes the connection when nc half-closes after sending; `timeout` bounds
# the wait if nothing answers.
docker run --rm -i --network "$network" "$image" \
    timeout "$wait_s" nc "$server" "$port" <"$frame" >"$reply" 2>"$errors"
status=$?

if cmp -s "$frame" "$reply"; then
    verdict success
elif [ ! -s "$reply" ]; then
    detail=$(head -c 300 "$errors" | tr '\n' ' ')
    fail "no answer from $server:$port on network $network" \
        "(docker run exit code $status${detail:+: $detail})"
else
    fail "$server:$port answered $(wc -c <"$reply") bytes that are not the message sent"
fi

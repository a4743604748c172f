#!/bin/sh
# Echo check: is the lottery server up and answering?
#
# Sends one ECHO frame (docs/PROTOCOL.md: version 3, kind 0x05, u16 big-endian length,
# payload) with netcat from a throw-away container attached to the server container's
# own network — no netcat on the host, no published port — and expects the very same
# bytes back. Prints exactly one verdict line on stdout and exits 0 / 1:
#   action: test_echo_server | result: success
#   action: test_echo_server | result: fail       (the reason goes to stderr)
#
# POSIX sh (the same verdict under dash and bash; tested with both); needs docker and
# mktemp besides the POSIX tools.
#
# Environment (all optional):
#   NC_TEST_SERVER   container name and host name of the server   (default server)
#   NC_TEST_PORT     its port                                      (default 12345)
#   NC_TEST_NETWORK  network to attach to (default: the server container's network
#                    whose name ends in _lottery, else its first one)
#   NC_TEST_IMAGE    image with busybox nc and timeout        (default busybox:1.35)
#   NC_TEST_TIMEOUT  seconds to wait for the answer                    (default 5)
set -u

server=${NC_TEST_SERVER:-server}
port=${NC_TEST_PORT:-12345}
image=${NC_TEST_IMAGE:-busybox:1.35}
wait_s=${NC_TEST_TIMEOUT:-5}
# The protocol version (protocol::VERSION) and the ECHO kind, as octal escapes.
version='\003'
echo_kind='\005'

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
networks=$(docker inspect --type container -f \
    '{{range $name, $_ := .NetworkSettings.Networks}}{{println $name}}{{end}}' "$server")
network=${NC_TEST_NETWORK:-}
if [ -z "$network" ]; then
    network=$(printf '%s\n' "$networks" | grep '_lottery$' | sed -n 1p)
fi
if [ -z "$network" ]; then
    network=$(printf '%s\n' "$networks" | sed -n 1p)
fi
[ -n "$network" ] || fail "container '$server' is on no network"

# A fresh message each time, so that a stale or canned answer cannot pass.
nonce=$(od -An -N4 -tu4 /dev/urandom 2>/dev/null | tr -d ' \n')
message="nc_test $$ $(date +%s) ${nonce:-0}"
length=${#message} # ASCII only: characters are bytes (well under 8188)
frame=$(mktemp) || fail "mktemp failed"
reply=$(mktemp) || fail "mktemp failed"
errors=$(mktemp) || fail "mktemp failed"
trap 'rm -f "$frame" "$reply" "$errors"' EXIT
trap 'exit 1' HUP INT TERM
# The header's escapes are built first (the length's two bytes in octal), then used as
# the format; the message goes in as an argument, never interpreted.
header="$version$echo_kind$(printf '\\%03o\\%03o' $((length >> 8)) $((length & 255)))"
# shellcheck disable=SC2059 # the format is built on purpose: four octal escapes
printf "$header%s" "$message" >"$frame"

# The server closes the connection when nc half-closes after sending; `timeout` bounds
# the wait if nothing answers.
docker run --rm -i --network "$network" "$image" \
    timeout "$wait_s" nc "$server" "$port" <"$frame" >"$reply" 2>"$errors"
status=$?

if cmp -s "$frame" "$reply"; then
    verdict success
elif [ ! -s "$reply" ]; then
    detail=$(dd if="$errors" bs=300 count=1 2>/dev/null | tr '\n' ' ')
    fail "no answer from $server:$port on network $network" \
        "(docker run exit code $status${detail:+: $detail})"
else
    fail "$server:$port answered $(wc -c <"$reply" | tr -d ' ') bytes that are not the" \
        "message sent"
fi

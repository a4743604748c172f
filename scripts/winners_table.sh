#!/usr/bin/env bash
# Prints the draw per agency from the logs in LOG_DIR: the server's one
# `action: draw_summary` line (LOG_DIR/server.log: bets and winners per agency, the
# draw's duration) and each client's LOG_DIR/client-K.log for K = 1..N (the winners it
# received: `consulta_ganadores`, and their documents: `ganadores`). Without a
# draw_summary line (a server that does not log one, no server log) the bets column
# comes from the clients' `upload` summaries instead.
#
#   scripts/winners_table.sh LOG_DIR N
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: scripts/winners_table.sh LOG_DIR N" >&2
    exit 2
fi
dir=$1
n=$2

# The value of `key: value` in a log line ("" if absent).
field() { printf '%s\n' "$1" | tr '|' '\n' | sed -n "s/^ *$2: *\(.*[^ ]\) *$/\1/p" | sed -n 1p; }
# The value for agency K in a "1:15000,2:17000" list ("" if absent).
per_agency() { printf '%s\n' "$1" | tr ',' '\n' | sed -n "s/^ *$2:\([0-9]*\) *$/\1/p" | sed -n 1p; }

summary=""
if [ -f "$dir/server.log" ]; then
    summary=$(grep 'action: draw_summary | result: success' "$dir/server.log" | tail -n 1 || true)
fi
bets_per_agency=$(field "$summary" bets_per_agency)
winners_per_agency=$(field "$summary" winners_per_agency)

if [ -n "$summary" ]; then
    printf '\n%-8s %8s %8s %9s  %s\n' agency bets winners received documents
else
    printf '\n%-8s %8s %9s  %s\n' agency bets received documents
fi
for k in $(seq "$n"); do
    log="$dir/client-$k.log"
    [ -f "$log" ] || log=/dev/null
    received=$(grep -o 'cant_ganadores: [0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
    dnis=$(grep -o 'action: ganadores | .*dnis: .*' "$log" | sed 's/.*dnis: //; s/ |.*//' |
        tail -n 1 || true)
    if [ -n "$summary" ]; then
        bets=$(per_agency "$bets_per_agency" "$k")
        winners=$(per_agency "$winners_per_agency" "$k")
        printf '%-8s %8s %8s %9s  %s\n' "$k" "${bets:-0}" "${winners:-0}" \
            "${received:-FAILED}" "$dnis"
    else
        bets=$(grep -o 'action: upload | result: success | client_id: [0-9]* | bets_sent: [0-9]*' \
            "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
        printf '%-8s %8s %9s  %s\n' "$k" "${bets:--}" "${received:-FAILED}" "$dnis"
    fi
done
if [ -n "$summary" ]; then
    printf '%-8s %8s %8s\n' all "$(field "$summary" bets)" "$(field "$summary" winners)"
    echo
    echo "draw: $(field "$summary" winners) winners among $(field "$summary" bets) bets of" \
        "$(field "$summary" agencies) agencies, drawn in $(field "$summary" duration)"
fi

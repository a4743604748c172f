#!/usr/bin/env bash
# Prints the winners per agency from the clients' logs: LOG_DIR/client-K.log for
# K = 1..N (the log lines `upload`, `consulta_ganadores` and `ganadores`).
#
#   scripts/winners_table.sh LOG_DIR N
set -euo pipefail
dir=$1
n=$2
printf '\n%-8s %8s %10s  %s\n' agency bets winners documents
for k in $(seq "$n"); do
    log="$dir/client-$k.log"
    bets=$(grep -o 'action: upload | result: success | client_id: [0-9]* | bets_sent: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '-')
    count=$(grep -o 'cant_ganadores: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 'FAILED')
    dnis=$(grep -o 'action: ganadores | .*dnis: .*' "$log" | sed 's/.*dnis: //' || true)
    printf '%-8s %8s %10s  %s\n' "$k" "$bets" "$count" "$dnis"
done

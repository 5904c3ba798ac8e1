#!/usr/bin/env bash
# Per-row server cost of the bulk lane's INSERT into meta.assets, by the order of each chunk's
# rows (BENCHMARKS.md, "Bulk load"). Starts a throwaway cluster with the load benchmark's
# settings, applies the migrations, generates a staging table of the benchmark's column rows,
# then inserts them in 50,000-row statements in each order and prints µs per row.
#
#   bash engine/load/benches/insert_order.sh            # 2M rows
#   ROWS=10000000 bash engine/load/benches/insert_order.sh
#
# Runs as a user that may run initdb (as root it uses the postgres account). Needs ~1 GB of disk
# per million rows.
set -euo pipefail
source "$(dirname "$0")/throwaway_cluster.sh"
run() { # $1: ORDER BY list
    P -c "TRUNCATE meta.assets; CHECKPOINT" >/dev/null
    {
        echo '\timing on'
        insert_statements 50000 "$1"
    } | P | awk -v rows="$ROWS" -v order="$1" \
        '/Time:/ { t += $2 } END { printf "%-28s %.2f us/row (%.0f rows/s)\n", order, t * 1000 / rows, rows / (t / 1000) }'
}
echo "$ROWS rows, 50,000 per statement, one backend:"
for order in "guid" "part, guid" "guid" "part, guid"; do run "$order"; done

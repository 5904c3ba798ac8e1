#!/usr/bin/env bash
# Server cost of each per-row check of meta.assets, alone (BENCHMARKS.md, "Bulk load"): a
# count(*) over the staged column rows with the check's expression as the filter, against the
# same count without one. Starts its own throwaway cluster (throwaway_cluster.sh).
#
#   bash engine/load/benches/check_costs.sh              # 2M rows
set -euo pipefail
source "$(dirname "$0")/throwaway_cluster.sh"
ALNUM="'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'"
ALNUM_HEX="decode('4142434445464748494a4b4c4d4e4f505152535455565758595a6162636465666768696a6b6c6d6e6f707172737475767778797a30313233343536373839', 'hex')"
HEAD="octet_length(type_name) BETWEEN 1 AND 64 AND ascii(type_name) BETWEEN 65 AND 90"
time_of() { # $1 filter; prints ms
    P -c "SET max_parallel_workers_per_gather = 0" -c '\timing on' \
      -c "SELECT count(*) FROM stage WHERE $1" | awk '/Time:/ { print $2 }'
}
time_of true >/dev/null # warm the cache
base=$(time_of true)
printf "%s rows; no filter: %.0f ms\n" "$ROWS" "$base"
while IFS='|' read -r label expr; do
    t=$(time_of "$expr")
    awk -v l="$label" -v t="$t" -v b="$base" -v n="$ROWS" 'BEGIN { printf "%-44s %.2f us/row\n", l, (t - b) * 1000 / n }'
done <<EOF2
type name, regular expression (before 0007)|type_name ~ '^[A-Z][A-Za-z0-9]{0,63}\$'
type name, ltrim(text) (0007)|$HEAD AND ltrim(type_name, $ALNUM) = ''
type name, ltrim(bytea) (0009)|$HEAD AND ltrim(convert_to(type_name, 'UTF8'), $ALNUM_HEX) = ''::bytea
guid derived from tenant and qualified name|guid = meta.asset_guid('bench', qualified_name)
the other checks|qualified_name <> '' AND jsonb_typeof(attributes) = 'object' AND status IN ('ACTIVE', 'DELETED') AND parent_guid IS DISTINCT FROM guid
EOF2

#!/usr/bin/env bash
# Per-row CPU time of one backend inserting the bulk lane's rows (grouped by partition, as the
# loader sends them) under variants of the schema and session (BENCHMARKS.md, "Bulk load").
# Starts its own throwaway cluster (throwaway_cluster.sh); reads the backend's CPU time from
# /proc, so it runs on the same machine as the cluster.
#
#   ROWS=4000000 bash engine/load/benches/insert_variants.sh          # about 7 minutes
#   VARIANTS="text_check bytes_check" bash engine/load/benches/insert_variants.sh
#   ROWS=4000000 VARIANTS="bytes_check children_nodedup children_hash no_children bytes_check
#       children_nodedup children_hash no_children" bash engine/load/benches/insert_variants.sh
set -euo pipefail
source "$(dirname "$0")/throwaway_cluster.sh"
P -c "ALTER TABLE stage SET (autovacuum_enabled = off)" >/dev/null
run() { # $1 label, $2 setup SQL, $3 undo SQL, $4 rows per statement, $5 session SQL
    P -c "$2" >/dev/null
    P -c "TRUNCATE meta.assets; CHECKPOINT" >/dev/null
    {
        echo "$5"
        echo 'SELECT pg_backend_pid() AS pid \gset'
        echo '\setenv BPID :pid'
        echo "\\! awk '{ print \"cpu0\", \$14 + \$15 }' /proc/\$BPID/stat"
        echo 'SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset'
        insert_statements "$4" "part, guid"
        echo "SELECT 'wall', extract(epoch FROM clock_timestamp()) - :t0;"
        echo "\\! awk '{ print \"cpu1\", \$14 + \$15 }' /proc/\$BPID/stat"
    } | P | awk -v rows="$ROWS" -v label="$1" '
        $1 == "cpu0" { c0 = $2 } $1 == "cpu1" { c1 = $2 } /^wall/ { split($0, a, "|"); w = a[2] }
        END { printf "%-14s wall %.2f us/row, backend CPU %.2f us/row\n", label, w * 1e6 / rows, (c1 - c0) * 1e4 / rows }'
    P -c "$3" >/dev/null
}
RULE="octet_length(type_name) BETWEEN 1 AND 64 AND ascii(type_name) BETWEEN 65 AND 90"
TEXT_CHECK="ALTER TABLE meta.assets DROP CONSTRAINT assets_type_name_bytes;
    ALTER TABLE meta.assets ADD CONSTRAINT assets_type_name_text CHECK ($RULE
        AND ltrim(type_name, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789') = '')"
BYTES_CHECK="ALTER TABLE meta.assets DROP CONSTRAINT assets_type_name_text;
    ALTER TABLE meta.assets ADD CONSTRAINT assets_type_name_bytes CHECK ($RULE
        AND ltrim(convert_to(type_name, 'UTF8'), decode('4142434445464748494a4b4c4d4e4f505152535455565758595a6162636465666768696a6b6c6d6e6f707172737475767778797a30313233343536373839', 'hex')) = ''::bytea)"
PARTIAL="DROP INDEX meta.assets_type_idx;
    CREATE INDEX assets_type_idx ON meta.assets (tenant_id, type_name) WHERE type_name <> 'Column'"
FULL="DROP INDEX meta.assets_type_idx; CREATE INDEX assets_type_idx ON meta.assets (tenant_id, type_name)"
CHILDREN="DROP INDEX IF EXISTS meta.assets_children_idx; CREATE INDEX assets_children_idx ON meta.assets (parent_guid)"
echo "$ROWS rows, one backend, rows grouped by partition"
for v in ${VARIANTS:-bytes_check text_check work_mem chunk_200k partial_type bytes_check text_check work_mem chunk_200k partial_type}; do
    case $v in
        bytes_check) run "$v" "SELECT 1" "SELECT 1" 50000 "" ;;               # the schema as migrated
        text_check) run "$v" "$TEXT_CHECK" "$BYTES_CHECK" 50000 "" ;;         # 0007's type check
        work_mem) run "$v" "SELECT 1" "SELECT 1" 50000 "SET work_mem = '64MB';" ;;
        chunk_200k) run "$v" "SELECT 1" "SELECT 1" 200000 "" ;;
        partial_type) run "$v" "$PARTIAL" "$FULL" 50000 "" ;;                # type index without columns
        children_nodedup) run "$v" "DROP INDEX meta.assets_children_idx;
            CREATE INDEX assets_children_idx ON meta.assets (parent_guid) WITH (deduplicate_items = off)" "$CHILDREN" 50000 "" ;;
        children_hash) run "$v" "DROP INDEX meta.assets_children_idx;
            CREATE INDEX assets_children_idx ON meta.assets USING hash (parent_guid)" "$CHILDREN" 50000 "" ;;
        no_children) run "$v" "DROP INDEX meta.assets_children_idx" "$CHILDREN" 50000 "" ;;  # its whole cost
        *) echo "unknown variant $v" >&2; exit 2 ;;
    esac
done

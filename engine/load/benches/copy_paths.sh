#!/usr/bin/env bash
# Two ways to write the bulk lane's new rows, compared in one backend (BENCHMARKS.md, "Bulk
# load", measured and not taken):
#   A  binary COPY into a TEMP staging table, then INSERT ... SELECT into meta.assets (the loader)
#   B  binary COPY straight into each partition of meta.assets (multi-insert, no staging)
# Same rows, 50,000-row chunks grouped by partition, each chunk one transaction.
#
#   bash engine/load/benches/copy_paths.sh              # 2M rows, about 3 minutes
#
# Starts its own throwaway cluster (throwaway_cluster.sh); server-side COPY files need the
# superuser it connects as.
set -euo pipefail
source "$(dirname "$0")/throwaway_cluster.sh"
mkdir -p "$DIR/f"; [ "$(id -u)" = 0 ] && chown postgres "$DIR/f"
# Server-side files: each chunk whole (A) and split by partition (B), rows grouped by partition.
{
for ((s = 0; s < ROWS; s += 50000)); do
  echo "COPY (SELECT guid, parent_guid, 'bench'::text, type_name, status, name, qualified_name, attributes FROM stage WHERE n > $s AND n <= $s + 50000 ORDER BY part, guid) TO '$DIR/f/c$s.bin' (FORMAT binary);"
  for r in $(seq 0 31); do
    echo "COPY (SELECT guid, parent_guid, 'bench'::text, type_name, status, name, qualified_name, attributes FROM stage WHERE n > $s AND n <= $s + 50000 AND part = $r ORDER BY guid) TO '$DIR/f/c${s}_$r.bin' (FORMAT binary);"
  done
done
} | P
A() {
  P -c "TRUNCATE meta.assets; CHECKPOINT" >/dev/null
  {
    echo "SET temp_buffers = '64MB';"
    echo "CREATE TEMP TABLE st (guid uuid NOT NULL, parent_guid uuid, tenant_id text, type_name text NOT NULL, status text NOT NULL, name text NOT NULL, qualified_name text NOT NULL, attributes jsonb NOT NULL) ON COMMIT DELETE ROWS;"
    echo '\timing on'
    for ((s = 0; s < ROWS; s += 50000)); do
      echo "BEGIN; COPY st FROM '$DIR/f/c$s.bin' (FORMAT binary); INSERT INTO meta.assets (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes) SELECT guid, parent_guid, 'bench', type_name, status, name, qualified_name, attributes FROM st; COMMIT;"
    done
  } | P | awk -v rows="$ROWS" '/Time:/ { t += $2 } END { printf "A staging+insert  %.2f us/row\n", t * 1000 / rows }'
}
B() {
  P -c "TRUNCATE meta.assets; CHECKPOINT" >/dev/null
  {
    echo '\timing on'
    for ((s = 0; s < ROWS; s += 50000)); do
      echo "BEGIN;"
      for r in $(seq 0 31); do
        printf "COPY meta.assets_p%02d (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes) FROM '%s' (FORMAT binary);\n" $r "$DIR/f/c${s}_$r.bin"
      done
      echo "COMMIT;"
    done
  } | P | awk -v rows="$ROWS" '/Time:/ { t += $2 } END { printf "B copy partitions %.2f us/row\n", t * 1000 / rows }'
}
for i in 1 2; do A; B; done
P -c "SELECT count(*) FROM meta.assets"

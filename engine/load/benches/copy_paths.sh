#!/usr/bin/env bash
# Two ways to write the bulk lane's new rows, compared in one backend (BENCHMARKS.md, "Bulk
# load", measured and not taken):
#   A  binary COPY into a TEMP staging table, then INSERT ... SELECT into meta.assets (the loader)
#   B  binary COPY straight into each partition of meta.assets (multi-insert, no staging)
# Same rows, 50,000-row chunks grouped by partition, each chunk one transaction.
#
#   bash engine/load/benches/copy_paths.sh              # 2M rows, about 3 minutes
#
# Starts its own throwaway cluster (as insert_order.sh); server-side COPY files need the
# superuser it connects as.
set -euo pipefail
ROWS=${ROWS:-2000000}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${LILY_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
DIR=$(mktemp -d)
chmod 755 "$DIR"
PORT=${PORT:-55441}
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
cleanup() { as_pg "$BIN/pg_ctl -D $DIR/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT
as_pg "$BIN/initdb -D $DIR/data -U postgres -A trust" >/dev/null
cat >>"$DIR/data/postgresql.conf" <<EOF
port=$PORT
unix_socket_directories='$DIR'
listen_addresses=''
wal_level=logical
fsync=off
full_page_writes=off
shared_buffers=1GB
max_wal_size=2GB
checkpoint_timeout=30min
jit=off
EOF
as_pg "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w start" >/dev/null
P() { "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -qAt -v ON_ERROR_STOP=1 "$@"; }
for f in "$ROOT"/engine/metastore/migrations/*.sql; do P -f "$f" >/dev/null; done
P <<SQL
INSERT INTO meta.tenants VALUES ('bench', 'bench');
CREATE UNLOGGED TABLE stage AS
SELECT row_number() OVER () AS n, meta.asset_guid('bench', qn) AS guid,
       meta.asset_guid('bench', tbl) AS parent_guid, 'Column'::text AS type_name,
       'ACTIVE'::text AS status, cname AS name, qn AS qualified_name,
       jsonb_build_object('dataType', 'NUMBER(38,0)', 'order', c, 'isNullable', c % 3 <> 0,
                          'isPrimary', c = 0)
         || CASE WHEN c % 4 = 0 THEN '{"description":"Identifier of the customer account"}'::jsonb
                 ELSE '{}'::jsonb END AS attributes
FROM (SELECT t, c,
             format('default/snowflake/1700000000/DB_%s/SCHEMA_%s/TABLE_%s', t % 8,
                    lpad((t % 64)::text, 2, '0'), lpad(t::text, 6, '0')) AS tbl,
             format('COLUMN_%s', lpad(c::text, 3, '0')) AS cname
      FROM generate_series(0, $ROWS / 100 - 1) t, generate_series(0, 99) c) x,
     LATERAL (SELECT tbl || '/' || cname AS qn) q;
ALTER TABLE stage ADD COLUMN part int;
INSERT INTO meta.assets (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes)
SELECT guid, parent_guid, 'bench', type_name, status, name, qualified_name, attributes FROM stage;
UPDATE stage s SET part = right(a.tableoid::regclass::text, 2)::int FROM meta.assets a WHERE a.guid = s.guid;
CREATE INDEX ON stage (n);
VACUUM ANALYZE stage;
SQL
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

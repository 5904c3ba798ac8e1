# Sourced by insert_order.sh and copy_paths.sh: a throwaway cluster with the load benchmark's
# settings, migrated, holding `stage`: ROWS of the benchmark's column rows (100 columns a table,
# the same names and attributes), `n` their order in the file and `part` the hash partition of
# meta.assets each guid lands in, as the server computes it. Defines P (psql to it), DIR (its
# directory, removed on exit), ROWS, and insert_statements.

ROWS=${ROWS:-2000000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
BIN=${LILY_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
DIR=$(mktemp -d)
chmod 755 "$DIR"
PORT=${PORT:-55439}
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
# The load benchmark's rows: 100 columns a table, the same names and attributes; `part` is the
# hash partition of meta.assets each guid lands in, as the server computes it.
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
UPDATE stage s SET part = right(a.tableoid::regclass::text, 2)::int
FROM meta.assets a WHERE a.guid = s.guid;
CREATE INDEX ON stage (n);
VACUUM ANALYZE stage;
SQL

# The bulk lane's INSERT of every staged row into meta.assets, $1 rows a statement, each
# statement's rows in the order $2 (an ORDER BY list over stage's columns).
insert_statements() {
    local s
    for ((s = 0; s < ROWS; s += $1)); do
        echo "INSERT INTO meta.assets (guid, parent_guid, tenant_id, type_name, status, name, qualified_name, attributes)
              SELECT guid, parent_guid, 'bench', type_name, status, name, qualified_name, attributes
              FROM (SELECT * FROM stage WHERE n > $s AND n <= $s + $1 ORDER BY $2) s;"
    done
}

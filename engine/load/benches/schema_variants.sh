#!/usr/bin/env bash
# Fresh loads of the load benchmark's estate under schema variants (benches/variants/*.sql,
# applied after migrating), interleaved so each round sees the machine in the same state.
# "baseline" is the schema as migrated. Prints each fresh load's line (BENCHMARKS.md, "Bulk load").
#
#   bash engine/load/benches/schema_variants.sh                     # 10M columns, 2 rounds, ~25 min
#   ROUNDS=1 LILY_LOAD_ROWS=1000000 VARIANTS="baseline hash_children" bash engine/load/benches/schema_variants.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
VARIANTS=${VARIANTS:-baseline hash_children hash_children_partial_type primary_key_only}
cd "$ROOT"
cargo bench -p lily-load --bench load --no-run 2>/dev/null
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
    for v in $VARIANTS; do
        setup=()
        [ "$v" = baseline ] || setup=(LILY_LOAD_SETUP_SQL="$ROOT/engine/load/benches/variants/$v.sql")
        printf 'round %s %-28s ' "$round" "$v"
        # A failed run (a bad variant file, no disk) is shown, not swallowed.
        if ! out=$(env "${setup[@]}" LILY_LOAD_ROWS="${LILY_LOAD_ROWS:-10000000}" LILY_LOAD_RUNS=1 RUST_BACKTRACE=0 \
            cargo bench -p lily-load --bench load 2>&1); then
            printf 'failed:\n%s\n' "$(tail -n 15 <<<"$out")"
            exit 1
        fi
        grep 'run 1/1' <<<"$out" | grep -o 'bulk [0-9]* rows in [0-9.]*s = [0-9]* rows/s'
    done
done

//! Which hash partition of `meta.assets` a guid lands in, computed here so a chunk's rows can be
//! sent grouped by partition.
//!
//! Rows in guid order land in a different partition almost every row; PostgreSQL then switches
//! the target partition, its heap page and its three indexes on every tuple. Grouped by
//! partition (guid order within each), the same insert costs about a fifth less server time
//! (BENCHMARKS.md, "Bulk load"). The grouping is only an order: a wrong guess costs speed, never
//! correctness. Still, the computation is checked against the server before it is used
//! ([`discover`]), and without a match the loader keeps plain guid order.
//!
//! PostgreSQL's hash partitioning of one `uuid` key: the key's 16 bytes go through the
//! extended `hash_bytes` (Bob Jenkins' lookup3, 64-bit result, seeded with the partitioning
//! seed), that hash is combined into a zero row hash, and the remainder modulo the partitions'
//! modulus picks the partition.

use tokio_postgres::Client;
use uuid::Uuid;

/// The seed PostgreSQL hashes partition keys with.
const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;
/// What combining a single key's hash into the zero row hash adds to it. Checked against the
/// server by [`discover`] and by this module's tests.
const ROW_HASH_OFFSET: u64 = 0x49a0_f4dd_15e5_a8e3;

/// The hash partitioning of `meta.assets`: `modulus` partitions on `guid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashPartitions {
    modulus: u64,
}

impl HashPartitions {
    /// The remainder (partition) of `guid`.
    pub(crate) fn remainder(&self, guid: u128) -> u32 {
        (row_hash(&guid.to_be_bytes()) % self.modulus) as u32
    }
}

/// The partitioning of `meta.assets` if it is hash partitioned on its guid alone and this
/// module computes its partitions as the server does (checked on sample guids); `None`
/// otherwise, and the loader keeps guid order.
pub(crate) async fn discover(client: &Client) -> Option<HashPartitions> {
    let row = client
        .query_opt(
            "SELECT max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'modulus (\\d+)', 'i'))[1]::int8)
             FROM pg_partitioned_table p
             JOIN pg_inherits i ON i.inhparent = p.partrelid
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE p.partrelid = to_regclass('meta.assets') AND p.partstrat = 'h' AND p.partnatts = 1",
            &[],
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, "reading the partitioning of meta.assets"))
        .ok()??;
    let modulus: i64 = row.get::<_, Option<i64>>(0)?;
    let partitions = HashPartitions {
        modulus: u64::try_from(modulus).ok().filter(|m| *m > 0)?,
    };
    // Guids spread over the key space; the server answers whether each is in the partition
    // computed here.
    let samples: Vec<u128> = (0u64..64)
        .map(|i| u128::from(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) << 64 | u128::from(i))
        .collect();
    let remainders: Vec<i32> = samples
        .iter()
        .map(|g| partitions.remainder(*g) as i32)
        .collect();
    let samples: Vec<String> = samples
        .iter()
        .map(|g| Uuid::from_u128(*g).to_string())
        .collect();
    let agreed = client
        .query_one(
            "SELECT bool_and(satisfies_hash_partition('meta.assets'::regclass, $1::int4, r, g))
             FROM unnest($2::text[]::uuid[], $3::int4[]) AS u(g, r)",
            &[&(modulus as i32), &samples, &remainders],
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, "checking the partitions of meta.assets"))
        .ok()?
        .get::<_, Option<bool>>(0)?;
    if agreed {
        Some(partitions)
    } else {
        tracing::debug!(
            modulus,
            "meta.assets partitions not computed as the server does; rows stay in guid order"
        );
        None
    }
}

/// PostgreSQL's partition row hash of a single 16-byte key.
fn row_hash(key: &[u8; 16]) -> u64 {
    hash_bytes_extended(key, PARTITION_SEED).wrapping_add(ROW_HASH_OFFSET)
}

/// lookup3's `mix`: reversible mixing of three 32-bit words.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

/// lookup3's `final`: the last avalanche of the three words.
fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// PostgreSQL's seeded 64-bit `hash_bytes_extended`, for a 16-byte key (a uuid) on the
/// little-endian word order every supported server platform here uses.
fn hash_bytes_extended(key: &[u8; 16], seed: u64) -> u64 {
    let word = |i: usize| u32::from_le_bytes([key[i], key[i + 1], key[i + 2], key[i + 3]]);
    let init = 0x9e37_79b9u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    // Twelve bytes a round; the last four go into `a`.
    a = a.wrapping_add(word(0));
    b = b.wrapping_add(word(4));
    c = c.wrapping_add(word(8));
    mix(&mut a, &mut b, &mut c);
    a = a.wrapping_add(word(12));
    finish(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid(s: &str) -> u128 {
        Uuid::parse_str(s).unwrap().as_u128()
    }

    /// Values from PostgreSQL 15: `uuid_hash_extended(g, 8816678312871386365)` and the remainder
    /// `satisfies_hash_partition('meta.assets'::regclass, 32, r, g)` accepts.
    #[test]
    fn hashes_and_partitions_as_the_server() {
        let cases = [
            (
                "00000000-0000-0000-0000-000000000000",
                -5281082146396728638i64,
                5u32,
            ),
            (
                "ffffffff-ffff-ffff-ffff-ffffffffffff",
                -148986464341306210,
                1,
            ),
            (
                "52f8f556-8327-42c9-834a-d942b515e43f",
                5699970289705233858,
                5,
            ),
            (
                "c1bc876c-17be-537c-ab55-d9a0329439a6",
                -2971790860001545893,
                30,
            ),
        ];
        let p = HashPartitions { modulus: 32 };
        for (g, hash, remainder) in cases {
            let g = guid(g);
            assert_eq!(
                hash_bytes_extended(&g.to_be_bytes(), PARTITION_SEED) as i64,
                hash,
                "{g:x}"
            );
            assert_eq!(p.remainder(g), remainder, "{g:x}");
        }
    }

    /// Against a real server: the migrated `meta.assets` is found with its 32 partitions, and
    /// rows inserted land where [`HashPartitions::remainder`] said (`tableoid`).
    #[tokio::test]
    async fn discovered_partitions_match_where_rows_land() {
        let pg = lily_pgharness::PgCluster::start().await.unwrap();
        pg.create_database("lily").await.unwrap();
        let client = pg.connect("lily").await.unwrap();
        let before = discover(&client).await;
        assert_eq!(before, None, "no meta.assets yet");
        lily_metastore::migrate(&client).await.unwrap();
        let p = discover(&client)
            .await
            .expect("hash partitions found and checked");
        assert_eq!(p, HashPartitions { modulus: 32 });
        client
            .batch_execute("INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
            .await
            .unwrap();
        let rows = client
            .query(
                "INSERT INTO meta.assets (guid, tenant_id, type_name, name, qualified_name)
                 SELECT meta.asset_guid('acme', 'c/' || i), 'acme', 'Column', 'c' || i, 'c/' || i
                 FROM generate_series(1, 2000) i
                 RETURNING guid::text, right(tableoid::regclass::text, 2)::int",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 2000);
        for r in rows {
            let g: String = r.get(0);
            let landed: i32 = r.get(1);
            assert_eq!(p.remainder(guid(&g)) as i32, landed, "{g}");
        }
    }
}

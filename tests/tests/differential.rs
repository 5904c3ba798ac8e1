//! The differential test: one randomized workload, replicated both by PostgreSQL's own logical
//! replication (a subscription into database `native`) and by the engine (capture + lily-mirror
//! into database `mirror`). Afterwards every table must be identical, row for row, in `src`,
//! `native` and `mirror`.
//!
//! `LILY_DIFF_SEED` replays a run (the seed is printed); `LILY_DIFF_TXNS` sets the number of
//! transactions (default 2000).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::time::{Duration, Instant};

use lily_pgharness::{ClusterOptions, PgCluster};
use lily_tests::{
    capture_config, compare_table, create_databases, current_lsn, ended, prepare_source,
    slot_confirmed, start_capture, wait_for_slot,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DDL: &str = "
CREATE TABLE public.assets (
    guid uuid PRIMARY KEY,
    tenant text,
    qualified_name text,
    name text,
    attributes jsonb,
    version bigint,
    updated_at timestamptz
);
ALTER TABLE public.assets ALTER COLUMN attributes SET STORAGE EXTERNAL;
CREATE TABLE public.scores (
    tenant text,
    id int8,
    tags text[],
    score numeric(12,3),
    payload bytea,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE public.blobs (id int8 PRIMARY KEY, kind text, body text, rev int4);
ALTER TABLE public.blobs REPLICA IDENTITY FULL;
ALTER TABLE public.blobs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE public.events (kind text, n int4, note text);
ALTER TABLE public.events REPLICA IDENTITY FULL;
";

const TABLES: [&str; 4] = [
    "public.assets",
    "public.scores",
    "public.blobs",
    "public.events",
];

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "o'hara"];
const KINDS: [&str; 4] = ["alpha", "beta", "gamma", "δέλτα"];

/// Keys believed to exist, with O(1) insert, remove and random pick.
struct KeySet<K> {
    keys: Vec<K>,
    index: HashMap<K, usize>,
}

impl<K: Clone + Eq + Hash> KeySet<K> {
    fn new() -> Self {
        KeySet {
            keys: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn insert(&mut self, k: K) {
        if !self.index.contains_key(&k) {
            self.index.insert(k.clone(), self.keys.len());
            self.keys.push(k);
        }
    }

    fn remove(&mut self, k: &K) -> bool {
        let Some(i) = self.index.remove(k) else {
            return false;
        };
        let last = self.keys.len() - 1;
        self.keys.swap(i, last);
        self.keys.pop();
        if i < last {
            self.index.insert(self.keys[i].clone(), i);
        }
        true
    }

    fn pick(&self, rng: &mut StdRng) -> Option<K> {
        (!self.keys.is_empty()).then(|| self.keys[rng.random_range(0..self.keys.len())].clone())
    }

    fn take(&mut self) -> Vec<K> {
        self.index.clear();
        std::mem::take(&mut self.keys)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// What one statement did to the key model, for undoing a rolled-back (sub)transaction.
enum Undo {
    AssetAdded(u64),
    AssetRemoved(u64),
    ScoreAdded((usize, u64)),
    ScoreRemoved((usize, u64)),
    BlobAdded(u64),
    BlobRemoved(u64),
    Truncated(usize, Vec<u64>, Vec<(usize, u64)>),
}

/// The generator: a seeded RNG and a model of which keys exist.
struct Workload {
    rng: StdRng,
    assets: KeySet<u64>,
    scores: KeySet<(usize, u64)>,
    blobs: KeySet<u64>,
    next_key: u64,
    bulk_moves: u64,
    undo: Vec<Undo>,
    stats: HashMap<&'static str, u64>,
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn guid(k: u64) -> String {
    format!("'00000001-0000-4000-8000-{k:012x}'")
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            assets: KeySet::new(),
            scores: KeySet::new(),
            blobs: KeySet::new(),
            next_key: 1,
            bulk_moves: 0,
            undo: Vec::new(),
            stats: HashMap::new(),
        }
    }

    fn count(&mut self, what: &'static str, n: u64) {
        *self.stats.entry(what).or_default() += n;
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// Text with quotes, backslashes, separators, unicode and control characters.
    fn text(&mut self, max: usize) -> String {
        const PIECES: [&str; 16] = [
            "a", "Z", "0", " ", "'", "\"", "\\", ",", "{", "}", "é", "✓", "😀", "\n", "\t", "NULL",
        ];
        let len = self.rng.random_range(0..=max);
        let mut s = String::new();
        for _ in 0..len {
            if self.chance(0.6) {
                s.push(char::from(b'a' + self.rng.random_range(0..26u8)));
            } else {
                s.push_str(PIECES[self.rng.random_range(0..PIECES.len())]);
            }
        }
        s
    }

    fn text_or_null(&mut self, max: usize) -> String {
        if self.chance(0.1) {
            "NULL".into()
        } else {
            let t = self.text(max);
            lit(&t)
        }
    }

    fn hex(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        for _ in 0..bytes {
            let _ = write!(s, "{:02x}", self.rng.random::<u8>());
        }
        s
    }

    fn json_value(&mut self, depth: u32) -> String {
        match self.rng.random_range(0..if depth > 2 { 5 } else { 7 }) {
            0 => "null".into(),
            1 => self.chance(0.5).to_string(),
            2 => self.rng.random_range(-1_000_000i64..1_000_000).to_string(),
            3 => format!("{:.3}", self.rng.random_range(-1000.0..1000.0f64)),
            4 => {
                let t = self.text(12);
                json_string(&t)
            }
            5 => {
                let n = self.rng.random_range(0..4);
                let items: Vec<String> = (0..n).map(|_| self.json_value(depth + 1)).collect();
                format!("[{}]", items.join(", "))
            }
            _ => {
                let n = self.rng.random_range(0..4);
                let fields: Vec<String> = (0..n)
                    .map(|i| {
                        let k = json_string(&format!("k{i}{}", self.text(3)));
                        format!("{k}: {}", self.json_value(depth + 1))
                    })
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
        }
    }

    /// jsonb attributes: NULL, a small document, or now and then a 6-14 KB one (TOASTed).
    fn attributes(&mut self) -> String {
        if self.chance(0.08) {
            return "NULL".into();
        }
        if self.chance(0.12) {
            let kb = self.rng.random_range(3..=7);
            let blob = self.hex(kb * 1024);
            return format!(
                "'{{\"blob\": \"{blob}\", \"n\": {}}}'::jsonb",
                self.rng.random_range(0..100)
            );
        }
        let v = self.json_value(0);
        format!("{}::jsonb", lit(&format!("{{\"doc\": {v}}}")))
    }

    fn timestamp(&mut self) -> String {
        if self.chance(0.05) {
            return "NULL".into();
        }
        // 1990..2030, microsecond precision, computed exactly by the server.
        let micros = self
            .rng
            .random_range(631_152_000_000_000i64..1_893_456_000_000_000);
        format!("'epoch'::timestamptz + {micros} * interval '1 microsecond'")
    }

    fn numeric(&mut self) -> String {
        if self.chance(0.08) {
            return "NULL".into();
        }
        let int = self.rng.random_range(0..100_000_000u64);
        let frac = self.rng.random_range(0..1000u32);
        let sign = if self.chance(0.3) { "-" } else { "" };
        format!("{sign}{int}.{frac:03}")
    }

    fn tags(&mut self) -> String {
        if self.chance(0.08) {
            return "NULL".into();
        }
        let n = self.rng.random_range(0..5);
        let items: Vec<String> = (0..n).map(|_| self.text_or_null(8)).collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    }

    fn payload(&mut self) -> String {
        if self.chance(0.08) {
            return "NULL".into();
        }
        let n = self.rng.random_range(0..40);
        format!("'\\x{}'::bytea", self.hex(n))
    }

    fn body(&mut self) -> String {
        if self.chance(0.3) {
            let t = self.text(40);
            return lit(&t);
        }
        // 3-16 KB: stored out of line (STORAGE EXTERNAL).
        let kb = self.rng.random_range(3..=16);
        let seed = self.hex(4);
        format!(
            "(SELECT string_agg(md5('{seed}' || g::text), '') FROM generate_series(1, {}) g)",
            kb * 32
        )
    }

    fn statement(&mut self, sql: &mut String) {
        let table = self.rng.random_range(0..100);
        match table {
            0..35 => self.asset_statement(sql),
            35..70 => self.score_statement(sql),
            70..85 => self.blob_statement(sql),
            _ => self.event_statement(sql),
        }
        sql.push_str(";\n");
    }

    fn asset_statement(&mut self, sql: &mut String) {
        let op = self.rng.random_range(0..100);
        let existing = self.assets.pick(&mut self.rng);
        match (op, existing) {
            (0..40, _) | (_, None) => {
                let k = self.key();
                let tenant = if self.chance(0.05) {
                    "NULL".to_string()
                } else {
                    lit(TENANTS[self.rng.random_range(0..TENANTS.len())])
                };
                let name = self.text_or_null(16);
                let qn = {
                    let t = self.text(20);
                    lit(&format!("default/{k}/{t}"))
                };
                let attrs = self.attributes();
                let ts = self.timestamp();
                let _ = write!(
                    sql,
                    "INSERT INTO public.assets VALUES ({}, {tenant}, {qn}, {name}, {attrs}, 1, {ts})",
                    guid(k)
                );
                self.assets.insert(k);
                self.undo.push(Undo::AssetAdded(k));
                self.count("asset insert", 1);
            }
            (40..58, Some(k)) => {
                // Leaves attributes alone: an unchanged TOAST value when it is big.
                let name = self.text_or_null(16);
                let ts = self.timestamp();
                let _ = write!(
                    sql,
                    "UPDATE public.assets SET name = {name}, version = version + 1, updated_at = {ts} WHERE guid = {}",
                    guid(k)
                );
                self.count("asset update (attributes unchanged)", 1);
            }
            (58..70, Some(k)) => {
                let attrs = self.attributes();
                let _ = write!(
                    sql,
                    "UPDATE public.assets SET attributes = {attrs}, version = version + 1 WHERE guid = {}",
                    guid(k)
                );
                self.count("asset update (attributes)", 1);
            }
            (70..80, Some(k)) => {
                let new = self.key();
                let _ = write!(
                    sql,
                    "UPDATE public.assets SET guid = {}, version = version + 1 WHERE guid = {}",
                    guid(new),
                    guid(k)
                );
                self.assets.remove(&k);
                self.assets.insert(new);
                self.undo.push(Undo::AssetRemoved(k));
                self.undo.push(Undo::AssetAdded(new));
                self.count("asset key change", 1);
            }
            (80..98, Some(k)) => {
                let _ = write!(sql, "DELETE FROM public.assets WHERE guid = {}", guid(k));
                self.assets.remove(&k);
                self.undo.push(Undo::AssetRemoved(k));
                self.count("asset delete", 1);
            }
            (_, Some(_)) => {
                // A multi-row update.
                let tenant = TENANTS[self.rng.random_range(0..TENANTS.len())];
                let m = self.rng.random_range(0..7);
                let _ = write!(
                    sql,
                    "UPDATE public.assets SET version = version + 10 WHERE tenant = {} AND version % 7 = {m}",
                    lit(tenant)
                );
                self.count("asset multi-row update", 1);
            }
        }
    }

    fn score_statement(&mut self, sql: &mut String) {
        let op = self.rng.random_range(0..100);
        let existing = self.scores.pick(&mut self.rng);
        let key_sql = |(t, id): (usize, u64)| format!("tenant = {} AND id = {id}", lit(TENANTS[t]));
        match (op, existing) {
            (0..40, _) | (_, None) => {
                let k = (self.rng.random_range(0..TENANTS.len()), self.key());
                let (tags, score, payload) = (self.tags(), self.numeric(), self.payload());
                let _ = write!(
                    sql,
                    "INSERT INTO public.scores VALUES ({}, {}, {tags}, {score}, {payload})",
                    lit(TENANTS[k.0]),
                    k.1
                );
                self.scores.insert(k);
                self.undo.push(Undo::ScoreAdded(k));
                self.count("score insert", 1);
            }
            (40..70, Some(k)) => {
                let (tags, score) = (self.tags(), self.numeric());
                let payload = if self.chance(0.5) {
                    self.payload()
                } else {
                    "payload".into()
                };
                let _ = write!(
                    sql,
                    "UPDATE public.scores SET tags = {tags}, score = {score}, payload = {payload} WHERE {}",
                    key_sql(k)
                );
                self.count("score update", 1);
            }
            (70..82, Some(k)) => {
                let new = (self.rng.random_range(0..TENANTS.len()), self.key());
                let _ = write!(
                    sql,
                    "UPDATE public.scores SET tenant = {}, id = {} WHERE {}",
                    lit(TENANTS[new.0]),
                    new.1,
                    key_sql(k)
                );
                self.scores.remove(&k);
                self.scores.insert(new);
                self.undo.push(Undo::ScoreRemoved(k));
                self.undo.push(Undo::ScoreAdded(new));
                self.count("score key change", 1);
            }
            (82..98, Some(k)) => {
                let _ = write!(sql, "DELETE FROM public.scores WHERE {}", key_sql(k));
                self.scores.remove(&k);
                self.undo.push(Undo::ScoreRemoved(k));
                self.count("score delete", 1);
            }
            (_, Some(_)) => {
                let m = self.rng.random_range(0..11);
                let _ = write!(
                    sql,
                    "UPDATE public.scores SET tags = tags || ARRAY['multi'] WHERE id % 11 = {m} AND tenant = {}",
                    lit(TENANTS[self.rng.random_range(0..TENANTS.len())])
                );
                self.count("score multi-row update", 1);
            }
        }
    }

    fn blob_statement(&mut self, sql: &mut String) {
        let op = self.rng.random_range(0..100);
        let existing = self.blobs.pick(&mut self.rng);
        match (op, existing) {
            (0..35, _) | (_, None) => {
                let k = self.key();
                let kind = lit(KINDS[self.rng.random_range(0..KINDS.len())]);
                let body = self.body();
                let _ = write!(
                    sql,
                    "INSERT INTO public.blobs VALUES ({k}, {kind}, {body}, 0)"
                );
                self.blobs.insert(k);
                self.undo.push(Undo::BlobAdded(k));
                self.count("blob insert", 1);
            }
            (35..65, Some(k)) => {
                let _ = write!(sql, "UPDATE public.blobs SET rev = rev + 1 WHERE id = {k}");
                self.count("blob update (body unchanged)", 1);
            }
            (65..80, Some(k)) => {
                let body = self.body();
                let _ = write!(
                    sql,
                    "UPDATE public.blobs SET body = {body}, rev = rev + 1 WHERE id = {k}"
                );
                self.count("blob update (body)", 1);
            }
            (80..88, Some(k)) => {
                let new = self.key();
                let _ = write!(sql, "UPDATE public.blobs SET id = {new} WHERE id = {k}");
                self.blobs.remove(&k);
                self.blobs.insert(new);
                self.undo.push(Undo::BlobRemoved(k));
                self.undo.push(Undo::BlobAdded(new));
                self.count("blob key change", 1);
            }
            (_, Some(k)) => {
                let _ = write!(sql, "DELETE FROM public.blobs WHERE id = {k}");
                self.blobs.remove(&k);
                self.undo.push(Undo::BlobRemoved(k));
                self.count("blob delete", 1);
            }
        }
    }

    fn event_statement(&mut self, sql: &mut String) {
        let kind = lit(KINDS[self.rng.random_range(0..KINDS.len())]);
        let n = self.rng.random_range(0..5);
        match self.rng.random_range(0..100) {
            0..50 => {
                // Duplicates on purpose: the table has no key.
                let note = if self.chance(0.5) {
                    "NULL".to_string()
                } else {
                    lit(["dup", "it's", "ünï"][self.rng.random_range(0..3)])
                };
                let _ = write!(
                    sql,
                    "INSERT INTO public.events VALUES ({kind}, {n}, {note})"
                );
                self.count("event insert", 1);
            }
            50..80 => {
                let note = self.text_or_null(10);
                let _ = write!(
                    sql,
                    "UPDATE public.events SET n = n + 1, note = {note} \
                     WHERE ctid = (SELECT ctid FROM public.events WHERE kind = {kind} AND n = {n} LIMIT 1)"
                );
                self.count("event update", 1);
            }
            _ => {
                let _ = write!(
                    sql,
                    "DELETE FROM public.events WHERE ctid = (SELECT ctid FROM public.events WHERE kind = {kind} LIMIT 1)"
                );
                self.count("event delete", 1);
            }
        }
    }

    /// A transaction of 5,000-20,000 rows done by one set-based statement.
    fn big(&mut self, sql: &mut String) {
        let n = self.rng.random_range(5_000..=20_000u64);
        match self.rng.random_range(0..6) {
            0 => {
                let base = self.next_key;
                self.next_key += n;
                let _ = writeln!(
                    sql,
                    "INSERT INTO public.assets SELECT ('00000001-0000-4000-8000-' || lpad(to_hex({base} + g), 12, '0'))::uuid, \
                     'bulk', 'default/bulk/' || g, 'asset ' || g, jsonb_build_object('i', g, 's', md5(g::text)), g % 5, \
                     '2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series(1, {n}) g;"
                );
                for g in 1..=n {
                    self.assets.insert(base + g);
                    self.undo.push(Undo::AssetAdded(base + g));
                }
                self.count("bulk asset insert rows", n);
            }
            1 => {
                let base = self.next_key;
                self.next_key += n;
                let t = self.rng.random_range(0..TENANTS.len());
                let _ = writeln!(
                    sql,
                    "INSERT INTO public.scores SELECT {}, {base} + g, ARRAY['bulk', (g % 10)::text], (g % 100000) * 1.5, \
                     decode(md5(g::text), 'hex') FROM generate_series(1, {n}) g;",
                    lit(TENANTS[t])
                );
                for g in 1..=n {
                    self.scores.insert((t, base + g));
                    self.undo.push(Undo::ScoreAdded((t, base + g)));
                }
                self.count("bulk score insert rows", n);
            }
            2 => {
                let m = self.rng.random_range(0..3);
                let _ = writeln!(
                    sql,
                    "UPDATE public.scores SET score = COALESCE(score, 0) / 2 + 1, tags = tags || ARRAY['bulk-updated'] \
                     WHERE id % 3 = {m};"
                );
                self.count("bulk score update", 1);
            }
            3 => {
                let _ = writeln!(
                    sql,
                    "UPDATE public.assets SET version = version + 1, name = name || '+' WHERE version % 4 = 1;"
                );
                self.count("bulk asset update", 1);
            }
            4 => {
                // Key-changing updates in bulk (far above every generated id, so no collisions).
                self.bulk_moves += 1;
                let off = self.bulk_moves * 1_000_000_000_000;
                let m = self.rng.random_range(0..5);
                let _ = writeln!(
                    sql,
                    "UPDATE public.scores SET id = id + {off} WHERE id % 5 = {m};"
                );
                let moved: Vec<(usize, u64)> = self
                    .scores
                    .keys
                    .iter()
                    .copied()
                    .filter(|(_, id)| id % 5 == m)
                    .collect();
                for k in moved {
                    self.scores.remove(&k);
                    self.scores.insert((k.0, k.1 + off));
                    self.undo.push(Undo::ScoreRemoved(k));
                    self.undo.push(Undo::ScoreAdded((k.0, k.1 + off)));
                }
                self.count("bulk score key change", 1);
            }
            _ => {
                let m = self.rng.random_range(0..4);
                let _ = writeln!(sql, "DELETE FROM public.scores WHERE id % 4 = {m};");
                let gone: Vec<(usize, u64)> = self
                    .scores
                    .keys
                    .iter()
                    .copied()
                    .filter(|(_, id)| id % 4 == m)
                    .collect();
                for k in gone {
                    self.scores.remove(&k);
                    self.undo.push(Undo::ScoreRemoved(k));
                }
                self.count("bulk score delete", 1);
            }
        }
    }

    fn truncate(&mut self, sql: &mut String) {
        let t = self.rng.random_range(0..TABLES.len());
        let _ = writeln!(sql, "TRUNCATE {};", TABLES[t]);
        let (assets, scores) = match t {
            0 => (self.assets.take(), Vec::new()),
            1 => (Vec::new(), self.scores.take()),
            2 => (self.blobs.take(), Vec::new()),
            _ => (Vec::new(), Vec::new()),
        };
        self.undo.push(Undo::Truncated(t, assets, scores));
        self.count("truncate", 1);
    }

    fn undo_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            match self.undo.pop().expect("len > mark") {
                Undo::AssetAdded(k) => {
                    self.assets.remove(&k);
                }
                Undo::AssetRemoved(k) => self.assets.insert(k),
                Undo::ScoreAdded(k) => {
                    self.scores.remove(&k);
                }
                Undo::ScoreRemoved(k) => self.scores.insert(k),
                Undo::BlobAdded(k) => {
                    self.blobs.remove(&k);
                }
                Undo::BlobRemoved(k) => self.blobs.insert(k),
                Undo::Truncated(t, a, s) => match t {
                    0 => a.into_iter().for_each(|k| self.assets.insert(k)),
                    1 => s.into_iter().for_each(|k| self.scores.insert(k)),
                    2 => a.into_iter().for_each(|k| self.blobs.insert(k)),
                    _ => {}
                },
            }
        }
    }

    /// One transaction as a single simple-query string; `false` if it rolls back.
    fn transaction(&mut self, sql: &mut String) -> bool {
        sql.clear();
        self.undo.clear();
        sql.push_str("BEGIN;\n");
        let r = self.rng.random_range(0..1000);
        if r < 4 {
            self.big(sql);
        } else if r < 6 {
            self.truncate(sql);
        }
        let size = match self.rng.random_range(0..100) {
            0..70 => self.rng.random_range(1..=10),
            70..95 => self.rng.random_range(10..=50),
            _ => self.rng.random_range(50..=200),
        };
        for i in 0..size {
            if i == size / 2 && self.chance(0.03) {
                // A subtransaction that rolls back: none of it may appear anywhere.
                let mark = self.undo.len();
                sql.push_str("SAVEPOINT s;\n");
                for _ in 0..self.rng.random_range(1..5) {
                    self.statement(sql);
                }
                sql.push_str("ROLLBACK TO SAVEPOINT s;\n");
                self.undo_to(mark);
                self.count("rolled-back savepoints", 1);
            }
            self.statement(sql);
        }
        if self.chance(0.05) {
            sql.push_str("ROLLBACK;");
            self.undo_to(0);
            self.count("rolled-back transactions", 1);
            false
        } else {
            sql.push_str("COMMIT;");
            true
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_native_replication_agree() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let seed = env_u64("LILY_DIFF_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let txns = env_u64("LILY_DIFF_TXNS").unwrap_or(2000);
    println!("differential: seed {seed} (replay with LILY_DIFF_SEED={seed}), {txns} transactions");
    let started = Instant::now();

    let cluster = PgCluster::start_with(
        ClusterOptions::default()
            .setting("wal_receiver_status_interval", "1s")
            .setting("max_worker_processes", "16")
            .setting("max_logical_replication_workers", "8"),
    )
    .await
    .expect("harness cluster starts");
    create_databases(&cluster, &["src", "native", "mirror"], DDL).await;
    let src = cluster.connect("src").await.unwrap();
    let native = cluster.connect("native").await.unwrap();
    let mirror_db = cluster.connect("mirror").await.unwrap();
    prepare_source(&src).await;
    let list = TABLES.join(", ");
    src.batch_execute(&format!("CREATE PUBLICATION native_pub FOR TABLE {list}"))
        .await
        .unwrap();
    src.batch_execute(&format!("CREATE PUBLICATION lily_pub FOR TABLE {list}"))
        .await
        .unwrap();
    // Both slots exist before the first change, so both see all of them.
    for slot in ["native_slot", "lily_slot"] {
        src.batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
        ))
        .await
        .unwrap();
    }
    native
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION native_sub CONNECTION 'host={} port={} user={} password={} dbname=src' \
             PUBLICATION native_pub WITH (create_slot = false, slot_name = 'native_slot', copy_data = false)",
            cluster.host(),
            cluster.port(),
            cluster.superuser(),
            cluster.password()
        ))
        .await
        .unwrap();

    let (capture, sub) = start_capture(
        capture_config(&cluster.url("src"), "lily_slot", "lily_pub", &TABLES),
        "mirror",
    );
    let url = cluster.url("mirror");
    let mirror = tokio::spawn(async move { lily_mirror::run(&url, sub).await });

    // The workload.
    let mut w = Workload::new(seed);
    let mut sql = String::new();
    let (mut committed, mut rolled_back) = (0u64, 0u64);
    let workload_started = Instant::now();
    for i in 0..txns {
        let commits = w.transaction(&mut sql);
        if let Err(e) = src.batch_execute(&sql).await {
            panic!(
                "seed {seed}: transaction {i} failed on the source: {e:?}\n{}",
                sql.chars().take(4000).collect::<String>()
            );
        }
        if commits {
            committed += 1;
        } else {
            rolled_back += 1;
        }
    }
    let workload_time = workload_started.elapsed();
    let lsn = current_lsn(&src).await;
    let mut stats: Vec<_> = w.stats.iter().collect();
    stats.sort();
    println!(
        "workload: {committed} committed, {rolled_back} rolled back in {workload_time:.1?}; WAL at {lsn}; model: {} assets, {} scores, {} blobs",
        w.assets.len(),
        w.scores.len(),
        w.blobs.len()
    );
    for (what, n) in stats {
        println!("  {what}: {n}");
    }

    // Both replicas catch up.
    let timeout = Duration::from_secs(120);
    let native_wait = wait_for_slot(&src, "native_slot", &lsn, timeout, || None).await;
    if let Err(e) = native_wait {
        let subs: Vec<String> = native
            .query("SELECT format('%s pid=%s received=%s', subname, pid, received_lsn) FROM pg_stat_subscription", &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        panic!(
            "seed {seed}: native replication did not catch up: {e}\nsubscription: {subs:?}\nserver log:\n{}",
            cluster.log_tail(30)
        );
    }
    let native_time = started.elapsed();
    let engine_wait = wait_for_slot(&src, "lily_slot", &lsn, timeout, || {
        ended("the mirror", &mirror).or_else(|| ended("capture", &capture.task))
    })
    .await;
    if let Err(e) = engine_wait {
        let detail = if mirror.is_finished() {
            format!("mirror result: {:?}", mirror.await)
        } else {
            String::new()
        };
        panic!(
            "seed {seed}: the engine did not catch up: {e} {detail}\n(native slot is at {:?})",
            slot_confirmed(&src, "native_slot").await
        );
    }
    println!(
        "caught up: native at {native_time:.1?}, engine at {:.1?} since start",
        started.elapsed()
    );

    // Row for row: native = mirror, and both = src.
    let mut failures = Vec::new();
    for t in TABLES {
        let native_vs_mirror = compare_table(t, "native", &native, "mirror", &mirror_db).await;
        let src_vs_native = compare_table(t, "src", &src, "native", &native).await;
        let src_vs_mirror = compare_table(t, "src", &src, "mirror", &mirror_db).await;
        match (&native_vs_mirror, &src_vs_native, &src_vs_mirror) {
            (Ok(n), Ok(_), Ok(_)) => {
                println!("  {t}: {n} rows identical in src, native and mirror")
            }
            _ => {
                if let Err(d) = native_vs_mirror {
                    failures.push(d);
                }
                if let Err(d) = src_vs_mirror {
                    failures.push(d);
                }
                if let Err(d) = src_vs_native {
                    failures.push(format!(
                        "PostgreSQL's own replication differs from the source (the test's setup or workload is wrong):\n{d}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed} (replay with LILY_DIFF_SEED={seed}): tables differ:\n{}",
        failures.join("\n")
    );

    capture.stop().await.expect("capture stops cleanly");
    mirror.await.unwrap().expect("the mirror ends cleanly");
    println!(
        "differential: seed {seed} passed in {:.1?}",
        started.elapsed()
    );
}

//! The metastore schema (`meta`) and the engine's own state (`lily`), as versioned migrations.
//!
//! Migrations are SQL files under `engine/metastore/migrations/NNNN_name.sql`, embedded in the
//! binary. [`migrate`] applies the ones a database lacks, each in its own transaction, and records
//! them in `lily.schema_migrations` with a checksum of the file; an applied migration whose file
//! has since changed is refused. Concurrent runs against one database serialize on a
//! transaction-scoped advisory lock, so N engines starting at once apply each migration once.
//!
//! Rules for new migrations: add a file with the next number and list it in [`MIGRATIONS`]; never
//! edit an applied one; everything in a file must be able to run inside a transaction (no
//! `CREATE INDEX CONCURRENTLY`, no `VACUUM`); qualify every name with its schema.

use sha2::{Digest, Sha256};

/// `pg_advisory_xact_lock` key for migrations: the ASCII bytes of "lilymgrt".
pub const MIGRATION_LOCK_KEY: i64 = 0x6c69_6c79_6d67_7274;

/// The namespace of asset guids: `meta.asset_guid(t, qn)` is UUIDv5(this, `t || ':' || qn`).
pub const ASSET_GUID_NAMESPACE: &str = "52f8f556-8327-42c9-834a-d942b515e43f";

/// Number of hash partitions of `meta.assets` (by `guid`).
pub const ASSET_PARTITIONS: u32 = 32;

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The `NNNN` of the file name.
    pub version: i32,
    /// The `name` of the file name (without `NNNN_` and `.sql`).
    pub name: &'static str,
    /// The file's contents.
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the file with line endings normalised to `\n` (so a checkout that converts
    /// to CRLF does not look like an edit).
    pub fn checksum(&self) -> String {
        let normalised = self.sql.replace("\r\n", "\n");
        let digest = Sha256::digest(normalised.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `NNNN_name`, as the file is called.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

macro_rules! migration {
    ($version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $file, "_", $name, ".sql")),
        }
    };
}

/// All migrations, in order.
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "engine_state"),
    migration!(2, "0002", "metastore_assets"),
    migration!(3, "0003", "metastore_relations"),
    migration!(4, "0004", "delivery"),
    migration!(5, "0005", "ingest"),
    migration!(6, "0006", "load"),
    migration!(7, "0007", "bulk_writes"),
    migration!(8, "0008", "partition_tenant_check"),
    migration!(9, "0009", "type_name_bytes"),
    migration!(10, "0010", "tenant_roles"),
    migration!(11, "0011", "table_name_lookup"),
    migration!(12, "0012", "tenants_private"),
];

/// All migrations, in order (for inspection).
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions this run applied, in order.
    pub applied: Vec<i32>,
    /// Versions that were already applied (checksums verified).
    pub already_present: Vec<i32>,
    /// Versions recorded in the database that this binary does not know (a newer binary ran
    /// against it). Not an error; logged as a warning.
    pub unknown: Vec<i32>,
}

/// Why migrating failed. Nothing half-applied stays behind: each migration runs in one
/// transaction.
#[derive(Debug, thiserror::Error)]
pub enum MetastoreError {
    #[error("migration {label} was applied with checksum {recorded}, but the embedded file now has checksum {embedded}: an applied migration must never be edited. Restore the file and put the change in a new migration (or, for a throwaway database, drop and re-create it)")]
    ChecksumMismatch {
        version: i32,
        label: String,
        recorded: String,
        embedded: String,
    },
    #[error("migration {label} failed and was rolled back: {source}")]
    MigrationFailed {
        version: i32,
        label: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl MetastoreError {
    fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        MetastoreError::Postgres {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE of the underlying server error, if there is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            MetastoreError::MigrationFailed { source, .. }
            | MetastoreError::Postgres { source, .. } => source.code().map(|c| c.code()),
            MetastoreError::ChecksumMismatch { .. } => None,
        }
    }
}

const BOOTSTRAP: &str = "
CREATE SCHEMA IF NOT EXISTS lily;
CREATE TABLE IF NOT EXISTS lily.schema_migrations (
    version    int         PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
";

/// Brings the connected database up to the latest migration. Call it outside a transaction.
///
/// Each step (the bookkeeping bootstrap, then each migration) is one transaction that first takes
/// `pg_advisory_xact_lock(MIGRATION_LOCK_KEY)` and then re-reads `lily.schema_migrations`, so
/// concurrent callers serialize and each migration is applied exactly once. Checksums of every
/// applied migration are verified before anything new is applied.
pub async fn migrate(client: &tokio_postgres::Client) -> Result<MigrationReport, MetastoreError> {
    let mut report = MigrationReport::default();

    // Bootstrap the bookkeeping table and verify what is already recorded.
    let recorded = in_transaction(client, "creating lily.schema_migrations", async {
        lock(client).await?;
        client.batch_execute(BOOTSTRAP).await?;
        client
            .query(
                "SELECT version, checksum FROM lily.schema_migrations ORDER BY version",
                &[],
            )
            .await
    })
    .await
    .map_err(|e| MetastoreError::pg("creating or reading lily.schema_migrations", e))?;
    for row in &recorded {
        let (version, checksum): (i32, String) = (row.get(0), row.get(1));
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) => verify(m, &checksum)?,
            None => report.unknown.push(version),
        }
    }
    if !report.unknown.is_empty() {
        tracing::warn!(versions = ?report.unknown, "the database has migrations this binary does not know; a newer version of lily has migrated it");
    }

    for m in MIGRATIONS {
        let label = m.label();
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| MetastoreError::pg(format!("starting migration {label}"), e))?;
        let outcome = apply_locked(client, m).await;
        match outcome {
            Ok(applied) => {
                client.batch_execute("COMMIT").await.map_err(|source| {
                    MetastoreError::MigrationFailed {
                        version: m.version,
                        label: label.clone(),
                        source,
                    }
                })?;
                if applied {
                    tracing::info!(migration = %label, "applied migration");
                    report.applied.push(m.version);
                } else {
                    report.already_present.push(m.version);
                }
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
    Ok(report)
}

/// Inside an open transaction: take the lock, then apply `m` unless it is recorded. Returns
/// whether it applied.
async fn apply_locked(
    client: &tokio_postgres::Client,
    m: &Migration,
) -> Result<bool, MetastoreError> {
    let failed = |source| MetastoreError::MigrationFailed {
        version: m.version,
        label: m.label(),
        source,
    };
    lock(client).await.map_err(failed)?;
    // Read after the lock: under READ COMMITTED this statement's snapshot sees whatever a runner
    // that held the lock before us committed.
    let existing = client
        .query_opt(
            "SELECT checksum FROM lily.schema_migrations WHERE version = $1",
            &[&m.version],
        )
        .await
        .map_err(failed)?;
    if let Some(row) = existing {
        verify(m, &row.get::<_, String>(0))?;
        return Ok(false);
    }
    client.batch_execute(m.sql).await.map_err(failed)?;
    client
        .execute(
            "INSERT INTO lily.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .map_err(failed)?;
    Ok(true)
}

fn verify(m: &Migration, recorded: &str) -> Result<(), MetastoreError> {
    let embedded = m.checksum();
    if recorded == embedded {
        Ok(())
    } else {
        Err(MetastoreError::ChecksumMismatch {
            version: m.version,
            label: m.label(),
            recorded: recorded.to_string(),
            embedded,
        })
    }
}

async fn lock(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map(|_| ())
}

/// Runs `body` between BEGIN and COMMIT (ROLLBACK on error) on a shared client.
async fn in_transaction<T>(
    client: &tokio_postgres::Client,
    what: &str,
    body: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    match body.await {
        Ok(v) => {
            client.batch_execute("COMMIT").await?;
            Ok(v)
        }
        Err(e) => {
            tracing::debug!(step = what, error = %e, "rolling back");
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_ordered() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.label());
            assert!(!m.sql.trim().is_empty(), "{} is empty", m.label());
        }
    }

    #[test]
    fn every_file_is_listed() {
        let dir = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        )
        .join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{}.sql", m.label()))
            .collect();
        assert_eq!(files, listed);
    }

    #[test]
    fn checksum_ignores_crlf() {
        let lf = Migration {
            version: 1,
            name: "x",
            sql: "SELECT 1;\nSELECT 2;\n",
        };
        let crlf = Migration {
            sql: "SELECT 1;\r\nSELECT 2;\r\n",
            ..lf
        };
        assert_eq!(lf.checksum(), crlf.checksum());
        assert_eq!(lf.checksum().len(), 64);
        let other = Migration {
            sql: "SELECT 3;\n",
            ..lf
        };
        assert_ne!(lf.checksum(), other.checksum());
    }
}

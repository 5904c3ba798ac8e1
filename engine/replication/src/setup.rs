//! Preflight checks and the publication and slot, done over SQL before streaming starts.
//! Every refusal names the setting or table and says what to run to fix it.

use std::time::Duration;

use crate::wire::Connection;
use crate::{Lsn, ReplicationError};

/// What to capture.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub slot: String,
    pub publication: String,
    /// Tables as `schema.table`.
    pub tables: Vec<String>,
    /// Row filters (`schema.table`, SQL boolean expression) to set on the publication, so rows
    /// no reader wants are not decoded or sent. A table without an entry is published whole
    /// (an existing filter on it is removed). The expressions must come from a parser, never
    /// straight from user text: they are written into DDL.
    pub row_filters: Vec<(String, String)>,
}

/// The slot as the server sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotState {
    Missing,
    Ready {
        confirmed_flush: Lsn,
        restart: Option<Lsn>,
        active_pid: Option<i32>,
    },
}

/// Slot names follow PostgreSQL's own rule; publication names we restrict the same way, since
/// they are spliced into `START_REPLICATION` inside a string literal.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ReplicationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ReplicationError::Setup(format!(
            "invalid {kind} name {name:?}: use 1-63 characters from a-z, 0-9 and _"
        )))
    }
}

pub(crate) fn quote_ident_checked(kind: &str, name: &str) -> Result<String, ReplicationError> {
    validate_name(kind, name)?;
    Ok(format!("\"{name}\""))
}

/// Quotes an SQL identifier; any character is allowed except NUL.
pub fn quote_ident(name: &str) -> Result<String, ReplicationError> {
    if name.is_empty() || name.contains('\0') {
        return Err(ReplicationError::Setup(format!(
            "invalid identifier {name:?}"
        )));
    }
    Ok(lily_pg::quote_ident(name))
}

/// Quotes an SQL string literal (the server runs with standard_conforming_strings, checked in
/// [`preflight`]).
pub fn quote_literal(value: &str) -> Result<String, ReplicationError> {
    lily_pg::quote_literal(value).map_err(|e| ReplicationError::Setup(e.to_string()))
}

/// Splits `schema.table` with [`lily_pg::QualifiedName`]'s rule; a bare name is in `public`.
pub fn split_table(name: &str) -> Result<(String, String), ReplicationError> {
    let text = if name.contains(['.', '"']) {
        name.to_string()
    } else {
        format!("public.{name}")
    };
    match lily_pg::QualifiedName::parse(&text) {
        Ok(q) => Ok((q.schema, q.name)),
        // Captured tables have always been accepted as written, `schema.rest` split at the
        // first dot with the rest taken raw (quotes included); keep accepting that form.
        Err(e) => match text.split_once('.') {
            Some((schema, table))
                if !schema.is_empty()
                    && !table.is_empty()
                    && !table.contains('.')
                    && !schema.contains('"') =>
            {
                Ok((schema.to_string(), table.to_string()))
            }
            _ => Err(ReplicationError::Setup(format!("invalid table name: {e}"))),
        },
    }
}

/// Facts about the server gathered by [`preflight`].
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub server_version_num: i32,
    pub wal_sender_timeout: Duration,
}

/// Checks the server and the tables can be captured at all.
pub async fn preflight(
    conn: &mut Connection,
    spec: &SourceSpec,
) -> Result<ServerInfo, ReplicationError> {
    validate_name("slot", &spec.slot)?;
    validate_name("publication", &spec.publication)?;
    let rows = conn
        .simple_query(
            "SELECT current_setting('wal_level'), current_setting('server_version_num'), \
             current_setting('wal_sender_timeout'), current_setting('standard_conforming_strings'), \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), current_user",
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| ReplicationError::Protocol("preflight returned no row".into()))?;
    let wal_level = row.get(0).unwrap_or_default();
    if wal_level != "logical" {
        return Err(ReplicationError::Setup(format!(
            "wal_level is {wal_level:?} but logical replication needs \"logical\": run \
             ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart PostgreSQL"
        )));
    }
    if row.get(3) != Some("on") {
        return Err(ReplicationError::Setup(
            "standard_conforming_strings is off; set it to on (the default since PostgreSQL 9.1)"
                .into(),
        ));
    }
    let user = row.get(5).unwrap_or_default().to_string();
    if row.get(4) != Some("t") {
        return Err(ReplicationError::Setup(format!(
            "role {user:?} lacks the REPLICATION attribute: run ALTER ROLE {} WITH REPLICATION",
            quote_ident(&user)?
        )));
    }
    let server_version_num: i32 = row.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    if server_version_num < 140000 {
        return Err(ReplicationError::Setup(format!(
            "PostgreSQL {server_version_num} is too old: version 14 or later is required"
        )));
    }
    let wal_sender_timeout = parse_pg_duration(row.get(2).unwrap_or("60s"));

    if spec.tables.is_empty() {
        return Err(ReplicationError::Setup(
            "no tables to capture: list at least one table".into(),
        ));
    }
    for table in &spec.tables {
        let (schema, name) = split_table(table)?;
        let rows = conn
            .simple_query(&format!(
                "SELECT c.relkind, c.relreplident, \
                 EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                 c.relpersistence \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = {} AND c.relname = {}",
                quote_literal(&schema)?,
                quote_literal(&name)?
            ))
            .await?;
        let Some(row) = rows.first() else {
            return Err(ReplicationError::Setup(format!(
                "table {table} does not exist (or the role cannot see it); create it or remove it from the source's tables"
            )));
        };
        match row.get(0) {
            Some("r") | Some("p") => {}
            Some(kind) => {
                return Err(ReplicationError::Setup(format!(
                    "{table} is not a table (relkind {kind}); only tables can be captured"
                )))
            }
            None => {}
        }
        if row.get(3) != Some("p") {
            return Err(ReplicationError::Setup(format!(
                "table {table} is unlogged or temporary; its changes are not in the WAL and cannot be captured"
            )));
        }
        let quoted = format!("{}.{}", quote_ident(&schema)?, quote_ident(&name)?);
        match (row.get(1), row.get(2)) {
            (Some("n"), _) => {
                return Err(ReplicationError::Setup(format!(
                    "table {table} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be captured: \
                     run ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT (with a primary key) or FULL"
                )))
            }
            (Some("d"), Some("f")) => {
                return Err(ReplicationError::Setup(format!(
                    "table {table} has no primary key and REPLICA IDENTITY DEFAULT, so its updates and deletes \
                     cannot be captured: add a primary key, or run ALTER TABLE {quoted} REPLICA IDENTITY FULL"
                )))
            }
            _ => {}
        }
    }
    Ok(ServerInfo {
        server_version_num,
        wal_sender_timeout,
    })
}

/// Creates the publication if missing and adds any listed table it lacks. Tables it has beyond
/// the list are left alone (another pipeline may share it) but logged.
pub async fn ensure_publication(
    conn: &mut Connection,
    spec: &SourceSpec,
) -> Result<(), ReplicationError> {
    let pub_lit = quote_literal(&spec.publication)?;
    let exists = !conn
        .simple_query(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {pub_lit}"
        ))
        .await?
        .is_empty();
    let mut quoted = Vec::new();
    for t in &spec.tables {
        let (s, n) = split_table(t)?;
        quoted.push((
            t.clone(),
            format!("{}.{}", quote_ident(&s)?, quote_ident(&n)?),
        ));
    }
    if !exists {
        let list: Vec<_> = quoted.iter().map(|(_, q)| q.as_str()).collect();
        conn.simple_query(&format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)",
            quote_ident(&spec.publication)?,
            list.join(", ")
        ))
        .await
        .map_err(|e| setup_context(e, &format!("creating publication {}", spec.publication)))?;
        tracing::info!(publication = %spec.publication, tables = ?spec.tables, "Created publication.");
        return ensure_row_filters(conn, spec, &quoted).await;
    }
    let rows = conn
        .simple_query(&format!(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = {pub_lit}"
        ))
        .await?;
    let present: Vec<String> = rows
        .iter()
        .filter_map(|r| r.get(0).map(str::to_string))
        .collect();
    for (name, q) in &quoted {
        let (s, n) = split_table(name)?;
        if !present.iter().any(|p| *p == format!("{s}.{n}")) {
            conn.simple_query(&format!(
                "ALTER PUBLICATION {} ADD TABLE {q}",
                quote_ident(&spec.publication)?
            ))
            .await
            .map_err(|e| {
                setup_context(
                    e,
                    &format!("adding {name} to publication {}", spec.publication),
                )
            })?;
            tracing::info!(publication = %spec.publication, table = %name, "Added table to publication.");
        }
    }
    ensure_row_filters(conn, spec, &quoted).await
}

/// Makes each table's row filter in the publication what `spec` asks for. PostgreSQL keeps a
/// table's filter in its publication membership, so changing it is a drop and re-add of the
/// table, done in one transaction.
async fn ensure_row_filters(
    conn: &mut Connection,
    spec: &SourceSpec,
    quoted: &[(String, String)],
) -> Result<(), ReplicationError> {
    let pub_lit = quote_literal(&spec.publication)?;
    let rows = conn
        .simple_query(&format!(
            "SELECT schemaname || '.' || tablename, rowfilter FROM pg_publication_tables WHERE pubname = {pub_lit}"
        ))
        .await?;
    let current: std::collections::HashMap<String, Option<String>> = rows
        .iter()
        .filter_map(|r| {
            r.get(0)
                .map(|t| (t.to_string(), r.get(1).map(str::to_string)))
        })
        .collect();
    let publication = quote_ident(&spec.publication)?;
    for (name, q) in quoted {
        let (s, n) = split_table(name)?;
        let key = format!("{s}.{n}");
        let wanted = spec
            .row_filters
            .iter()
            .find(|(t, _)| *t == *name)
            .map(|(_, f)| f.as_str());
        let have = current.get(&key).cloned().flatten();
        // The server stores the filter re-printed (extra parentheses, casts), so a stored
        // filter cannot be compared with the wanted text reliably: a wanted filter is set
        // again at every start. Drop and re-add run as one query, hence one implicit transaction,
        // so no change falls between them.
        let needs = wanted.is_some() || have.is_some();
        if !needs {
            continue;
        }
        let add = match wanted {
            Some(f) => format!("ALTER PUBLICATION {publication} ADD TABLE {q} WHERE ({f})"),
            None => format!("ALTER PUBLICATION {publication} ADD TABLE {q}"),
        };
        conn.simple_query(&format!(
            "ALTER PUBLICATION {publication} DROP TABLE {q}; {add}"
        ))
        .await
        .map_err(|e| {
            setup_context(
                e,
                &format!(
                    "setting the row filter of {name} in publication {}",
                    spec.publication
                ),
            )
        })?;
        tracing::info!(publication = %spec.publication, table = %name, filter = ?wanted, "Set the publication row filter.");
    }
    Ok(())
}

/// Reads the slot's state. A slot for another plugin or database, or one whose WAL is gone, is
/// an error: streaming from it would silently skip changes.
pub async fn inspect_slot(
    conn: &mut Connection,
    slot: &str,
) -> Result<SlotState, ReplicationError> {
    validate_name("slot", slot)?;
    let rows = conn
        .simple_query(&format!(
            "SELECT s.plugin, s.slot_type, s.database = current_database(), s.wal_status, \
             s.confirmed_flush_lsn, s.restart_lsn, s.active_pid \
             FROM pg_replication_slots s WHERE s.slot_name = {}",
            quote_literal(slot)?
        ))
        .await?;
    let Some(row) = rows.first() else {
        return Ok(SlotState::Missing);
    };
    if row.get(1) != Some("logical") || row.get(0) != Some("pgoutput") {
        return Err(ReplicationError::Setup(format!(
            "replication slot {slot:?} exists but is {} with plugin {}; pick another slot name or drop it",
            row.get(1).unwrap_or("?"),
            row.get(0).unwrap_or("none")
        )));
    }
    if row.get(2) != Some("t") {
        return Err(ReplicationError::Setup(format!(
            "replication slot {slot:?} belongs to another database; pick another slot name"
        )));
    }
    let parse = |v: Option<&str>| v.and_then(|s| s.parse::<Lsn>().ok());
    let confirmed = parse(row.get(4));
    if row.get(3) == Some("lost") || confirmed.is_none() {
        return Err(ReplicationError::SlotLost {
            slot: slot.to_string(),
            confirmed: row.get(4).unwrap_or("unknown").to_string(),
            reason: format!(
                "wal_status is {} (the WAL it needs was removed, e.g. past max_slot_wal_keep_size)",
                row.get(3).unwrap_or("unknown")
            ),
        });
    }
    Ok(SlotState::Ready {
        confirmed_flush: confirmed.unwrap_or_default(),
        restart: parse(row.get(5)),
        active_pid: row.get(6).and_then(|p| p.parse().ok()),
    })
}

/// Creates a pgoutput slot; returns its consistent point.
pub async fn create_slot(conn: &mut Connection, slot: &str) -> Result<Lsn, ReplicationError> {
    validate_name("slot", slot)?;
    let rows = conn
        .simple_query(&format!(
            "SELECT lsn FROM pg_create_logical_replication_slot({}, 'pgoutput')",
            quote_literal(slot)?
        ))
        .await
        .map_err(|e| setup_context(e, &format!("creating replication slot {slot}")))?;
    rows.first()
        .and_then(|r| r.get(0))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ReplicationError::Protocol("slot creation returned no LSN".into()))
}

/// Drops a slot (used by `lily slot drop` and tests).
pub async fn drop_slot(conn: &mut Connection, slot: &str) -> Result<(), ReplicationError> {
    validate_name("slot", slot)?;
    conn.simple_query(&format!(
        "SELECT pg_drop_replication_slot({})",
        quote_literal(slot)?
    ))
    .await?;
    Ok(())
}

fn setup_context(e: ReplicationError, what: &str) -> ReplicationError {
    match e {
        ReplicationError::Server {
            code,
            message,
            hint,
            ..
        } if code == "42501" => ReplicationError::Setup(format!(
            "{what}: permission denied ({message}); the role must own the tables or be superuser{}",
            hint.map(|h| format!(" ({h})")).unwrap_or_default()
        )),
        ReplicationError::Server { code, message, .. } if code == "53400" => {
            ReplicationError::Setup(format!(
                "{what}: {message}; raise max_replication_slots in postgresql.conf and restart"
            ))
        }
        other => other,
    }
}

/// Parses a GUC duration as PostgreSQL prints it (`60s`, `1min`, `500ms`, `0`).
pub fn parse_pg_duration(s: &str) -> Duration {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().unwrap_or(0);
    match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_quoting() {
        assert!(validate_name("slot", "lily_main").is_ok());
        assert!(validate_name("slot", "Lily").is_err());
        assert!(validate_name("slot", "a'; drop table x; --").is_err());
        assert!(validate_name("slot", "").is_err());
        assert_eq!(quote_ident("we\"ird").unwrap(), "\"we\"\"ird\"");
        assert_eq!(quote_literal("o'neil").unwrap(), "'o''neil'");
        assert!(quote_literal("a\0b").is_err());
        assert_eq!(
            split_table("meta.assets").unwrap(),
            ("meta".into(), "assets".into())
        );
        assert_eq!(split_table("t").unwrap(), ("public".into(), "t".into()));
        assert!(split_table("a.b.c").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_pg_duration("60s"), Duration::from_secs(60));
        assert_eq!(parse_pg_duration("1min"), Duration::from_secs(60));
        assert_eq!(parse_pg_duration("500ms"), Duration::from_millis(500));
        assert_eq!(parse_pg_duration("0"), Duration::ZERO);
    }
}

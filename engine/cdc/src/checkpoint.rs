//! The engine's record of its slot, in `lily.checkpoints` (created by `lily migrate`).
//!
//! The slot's `confirmed_flush_lsn` is what resumption uses; this record exists so that a slot
//! that was dropped (by hand, by failover, by an operator) is noticed: a recorded checkpoint
//! with no slot is an error, never a silent new slot starting "now".

use lily_replication::setup::quote_literal;
use lily_replication::{Connection, Lsn, ReplicationError};

fn missing_table(e: ReplicationError) -> ReplicationError {
    match e {
        ReplicationError::Server { ref code, .. } if code == "42P01" || code == "3F000" => ReplicationError::Setup(
            "the engine's state table lily.checkpoints is missing: run `lily migrate` against the source database first"
                .into(),
        ),
        other => other,
    }
}

pub async fn load(conn: &mut Connection, slot: &str) -> Result<Option<Lsn>, ReplicationError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT confirmed_lsn FROM lily.checkpoints WHERE slot_name = {}",
            quote_literal(slot)?
        ))
        .await
        .map_err(missing_table)?;
    Ok(rows
        .first()
        .and_then(|r| r.get(0))
        .and_then(|v| v.parse().ok()))
}

pub async fn save(conn: &mut Connection, slot: &str, lsn: Lsn) -> Result<(), ReplicationError> {
    conn.simple_query(&format!(
        "INSERT INTO lily.checkpoints (slot_name, confirmed_lsn, updated_at) VALUES ({}, '{lsn}', now()) \
         ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = GREATEST(lily.checkpoints.confirmed_lsn, EXCLUDED.confirmed_lsn), \
         updated_at = now()",
        quote_literal(slot)?
    ))
    .await
    .map_err(missing_table)?;
    Ok(())
}

/// Forgets the slot's record (after an operator re-created the slot on purpose).
pub async fn clear(conn: &mut Connection, slot: &str) -> Result<(), ReplicationError> {
    conn.simple_query(&format!(
        "DELETE FROM lily.checkpoints WHERE slot_name = {}",
        quote_literal(slot)?
    ))
    .await
    .map_err(missing_table)?;
    Ok(())
}

//! `lily slot status` and `lily slot reset`.

use lily_replication::{Connection, Mode};

use crate::config::FileConfig;
use crate::SlotAction;

pub(crate) async fn run(cfg: &FileConfig, action: SlotAction) -> anyhow::Result<()> {
    let capture = cfg.capture_config()?;
    let mut conn = Connection::connect(&capture.connection, Mode::Normal).await?;
    let slot = &capture.source.slot;
    match action {
        SlotAction::Status => {
            let state = lily_replication::setup::inspect_slot(&mut conn, slot).await;
            let stored = lily_cdc::checkpoint::load(&mut conn, slot).await?;
            println!("slot {slot}: {state:?}; recorded checkpoint: {stored:?}");
        }
        SlotAction::Reset => {
            if !matches!(
                lily_replication::setup::inspect_slot(&mut conn, slot).await,
                Ok(lily_replication::SlotState::Missing)
            ) {
                lily_replication::setup::drop_slot(&mut conn, slot).await?;
            }
            lily_cdc::checkpoint::clear(&mut conn, slot).await?;
            eprintln!("slot {slot} dropped and checkpoint cleared; the next run starts from the current WAL position");
        }
    }
    Ok(())
}

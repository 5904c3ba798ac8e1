//! `lily`: the atlanlily engine's one binary.

mod commands;
mod config;
mod engine;
mod http;
mod pipelines;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::commands::{apikey, check, connectors, dev, dlq, load, migrate, slot, validate};
use crate::config::FileConfig;

#[derive(Parser)]
#[command(
    name = "lily",
    version,
    about = "Change capture and reverse ETL for a metadata platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the metastore schema migrations (idempotent).
    Migrate {
        /// Environment variable holding the database URL.
        #[arg(long, default_value = "LILY_DATABASE_URL")]
        url_env: String,
    },
    /// Run the engine with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file, the source it names (preflight) and every connector it uses
    /// (reachable, credentials accepted, permissions sufficient), without streaming.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the connectors (sinks, consumers, inbound hooks) with their settings.
    Connectors {
        /// Print the settings reference in Markdown (docs/connectors-reference.md).
        #[arg(long)]
        markdown: bool,
    },
    /// Check a config file, its pipelines and its inbound hooks: every file parses, every SQL
    /// transform plans against the real table schemas, every sink and hook builds (secrets
    /// present), every hook's tenant exists. Each problem is printed with its file and line.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The dead-letter table.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Start a throwaway PostgreSQL, apply the schema, load example assets and run the engine.
    Dev {
        /// HTTP address for /metrics.
        #[arg(long, default_value = "127.0.0.1:9187")]
        listen: String,
    },
    /// API keys of the ingest API (bound to one tenant, with scopes).
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Bulk-load asset files (NDJSON or Parquet) for one tenant: structural assets first, then
    /// columns and BI fields in large batches. Interrupted loads resume when run again.
    Load {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// Forget earlier progress on these files and read them again from the start.
        #[arg(long)]
        restart: bool,
        /// Connections writing bulk chunks at once (1 to 16); about one per core of the
        /// metastore's server.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
        writers: u8,
        /// How far (MiB of WAL) an active logical replication slot may fall behind before bulk
        /// chunks wait for it.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1048576))]
        max_slot_lag_mib: u64,
        /// Never wait for replication slots (their consumers may then lag by the whole load).
        #[arg(long)]
        no_slot_pacing: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Operate on the replication slot of a config file.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum DlqAction {
    /// Print dead letters as JSON lines (pending ones; --all includes replayed ones).
    List {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Send pending dead letters again through their sinks as currently configured.
    Replay {
        #[arg(long)]
        pipeline: Option<String>,
        /// Only this dead letter.
        #[arg(long)]
        id: Option<i64>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ApikeyAction {
    /// Create a key; prints it once on stdout.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// assets:write, lineage:write, classifications:write, incidents:write, load:write,
        /// assets:read, admin (repeat the flag).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List a tenant's keys (never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key.
    Revoke {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum SlotAction {
    /// Show the slot's state and the engine's recorded checkpoint.
    Status,
    /// Drop the slot and forget the checkpoint: after this, capture starts from "now" and the
    /// changes in between are not captured. Use only after a deliberate re-snapshot.
    Reset,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LILY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LILY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { url_env } => migrate::run(&url_env).await,
        Command::Run { config } => engine::run(FileConfig::load(&config)?.engine_spec()?).await,
        Command::Check { config } => check::run(&FileConfig::load(&config)?).await,
        Command::Connectors { markdown } => {
            connectors::run(markdown);
            Ok(())
        }
        Command::Validate { config } => validate::run(&FileConfig::load(&config)?).await,
        Command::Dlq { action, config } => {
            let cfg = FileConfig::load(&config.context("--config is required")?)?;
            dlq::run(&cfg, action).await
        }
        Command::Dev { listen } => dev::run(&listen).await,
        Command::Load {
            config,
            tenant,
            restart,
            writers,
            max_slot_lag_mib,
            no_slot_pacing,
            files,
        } => {
            let cfg = FileConfig::load(&config)?;
            let settings = lily_load::LoadConfig {
                bulk_writers: writers.into(),
                max_replication_lag_bytes: (!no_slot_pacing).then_some(max_slot_lag_mib << 20),
                ..lily_load::LoadConfig::default()
            };
            load::run(
                &cfg.capture_config()?.connection,
                &tenant,
                &files,
                restart,
                settings,
            )
            .await
        }
        Command::Apikey { action, config } => {
            let cfg = FileConfig::load(&config.context("--config is required")?)?;
            apikey::run(&cfg.capture_config()?.connection, action).await
        }
        Command::Slot { action, config } => {
            let cfg = FileConfig::load(&config.context("--config is required")?)?;
            slot::run(&cfg, action).await
        }
    }
}

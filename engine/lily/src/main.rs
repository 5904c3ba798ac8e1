//! `lily`: the atlanlily engine's one binary.

mod apikey;
mod config;
mod dev;
mod dlq;
mod http;
mod load;
mod pipelines;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lily_cdc::Capture;
use lily_replication::{Connection, Mode};
use tokio::sync::watch;

use crate::config::{ConsumerConfig, FileConfig};

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
    /// Check a config file and the source it names (preflight), without streaming.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and its pipelines: every file parses, every SQL transform plans
    /// against the real table schemas, every sink builds (secrets present). Each problem is
    /// printed with its file and line.
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
enum DlqAction {
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
enum ApikeyAction {
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
enum SlotAction {
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
        Command::Migrate { url_env } => {
            let url = std::env::var(&url_env)
                .with_context(|| format!("environment variable {url_env} is not set"))?;
            migrate(&url).await
        }
        Command::Run { config } => {
            let cfg = FileConfig::load(&config)?;
            run(cfg).await
        }
        Command::Check { config } => {
            let cfg = FileConfig::load(&config)?;
            let capture = cfg.capture_config()?;
            let mut conn = Connection::connect(&capture.connection, Mode::Normal).await?;
            let info = lily_replication::setup::preflight(&mut conn, &capture.source).await?;
            let slot =
                lily_replication::setup::inspect_slot(&mut conn, &capture.source.slot).await?;
            println!(
                "ok: server {} wal_sender_timeout {:?}; slot {}: {:?}",
                info.server_version_num, info.wal_sender_timeout, capture.source.slot, slot
            );
            Ok(())
        }
        Command::Validate { config } => {
            let cfg = FileConfig::load(&config)?;
            let capture = cfg.capture_config()?;
            let dir = cfg
                .pipelines_dir()
                .context("the config names no pipelines folder (pipelines = \"...\")")?;
            pipelines::validate(&dir, &pipelines::pg_config(&capture.connection)).await
        }
        Command::Dlq { action, config } => {
            let config = config.context("--config is required")?;
            let cfg = FileConfig::load(&config)?;
            let capture = cfg.capture_config()?;
            let pg = pipelines::pg_config(&capture.connection);
            match action {
                DlqAction::List { pipeline, all } => dlq::list(&pg, pipeline.as_deref(), all).await,
                DlqAction::Replay { pipeline, id } => {
                    let dir = cfg
                        .pipelines_dir()
                        .context("the config names no pipelines folder")?;
                    dlq::replay(&pg, &dir, pipeline.as_deref(), id).await
                }
            }
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
            let pg = pipelines::pg_config(&cfg.capture_config()?.connection);
            let settings = lily_load::LoadConfig {
                bulk_writers: writers.into(),
                max_replication_lag_bytes: (!no_slot_pacing).then_some(max_slot_lag_mib << 20),
                ..lily_load::LoadConfig::default()
            };
            load::run(&pg, &tenant, &files, restart, settings).await
        }
        Command::Apikey { action, config } => {
            let config = config.context("--config is required")?;
            let cfg = FileConfig::load(&config)?;
            let pg = pipelines::pg_config(&cfg.capture_config()?.connection);
            match action {
                ApikeyAction::Create {
                    tenant,
                    name,
                    scopes,
                } => apikey::create(&pg, &tenant, &name, &scopes).await,
                ApikeyAction::List { tenant } => apikey::list(&pg, &tenant).await,
                ApikeyAction::Revoke { tenant, id } => apikey::revoke(&pg, &tenant, &id).await,
            }
        }
        Command::Slot { action, config } => {
            let config = config.context("--config is required")?;
            let cfg = FileConfig::load(&config)?;
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
    }
}

/// The ingest API's routes: a connection pool of its own (so bulk and pipeline work never
/// takes its connections) and the authenticator (API keys, and OIDC tokens when configured).
/// With `load_spool_dir`, also the background bulk loads, resumed from the spool before the
/// routes serve; the caller shuts them down.
async fn ingest_router(
    cfg: &lily_ingest::IngestConfig,
    pg: &tokio_postgres::Config,
) -> anyhow::Result<(axum::Router, Option<lily_ingest::Loads>)> {
    cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
    let pool = lily_ingest::pool(pg.clone(), cfg.pool_size).map_err(|e| anyhow::anyhow!(e))?;
    let jwt = match &cfg.oidc {
        Some(o) => Some(
            lily_auth::JwtVerifier::new(o.clone())
                .map_err(|e| anyhow::anyhow!("ingest.oidc: {e}"))?,
        ),
        None => None,
    };
    let auth = lily_auth::Authenticator::new(lily_auth::ApiKeys::new(), jwt);
    let hooks = lily_ingest::Hooks::build(&cfg.monte_carlo, &cfg.okta)
        .await
        .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
    let loads = match cfg.loads() {
        Some(settings) => {
            let dir = settings.spool_dir.display().to_string();
            let loads = lily_ingest::Loads::new(settings, pg.clone())
                .map_err(|e| anyhow::anyhow!("ingest.load_spool_dir {dir}: {e}"))?;
            let resumed = loads
                .start()
                .await
                .map_err(|e| anyhow::anyhow!("ingest.load_spool_dir {dir}: {e}"))?;
            tracing::info!(spool = %dir, resumed, "Bulk loads over the API enabled.");
            Some(loads)
        }
        None => None,
    };
    let router = lily_ingest::router(
        lily_ingest::Ingest::with_loads(pool, auth, hooks, loads.clone()),
        cfg.max_body_bytes,
    );
    Ok((router, loads))
}

pub(crate) async fn migrate(url: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to the metastore for migration")?;
    let task = tokio::spawn(conn);
    let report = lily_metastore::migrate(&client).await?;
    tracing::info!(?report, "Migrations done.");
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Starts capture and the consumers of `cfg`, and runs until Ctrl-C / SIGTERM.
pub(crate) async fn run(cfg: FileConfig) -> anyhow::Result<()> {
    let capture_cfg = cfg.capture_config()?;
    run_pipeline(
        capture_cfg,
        &cfg.consumers,
        cfg.pipelines_dir().as_deref(),
        &cfg.http.listen,
        cfg.ingest.as_ref(),
    )
    .await
}

pub(crate) async fn run_pipeline(
    mut capture_cfg: lily_cdc::CaptureConfig,
    consumer_cfgs: &[ConsumerConfig],
    pipelines_dir: Option<&std::path::Path>,
    listen: &str,
    ingest: Option<&lily_ingest::IngestConfig>,
) -> anyhow::Result<()> {
    // Pipelines are planned first: their source tables join the captured tables. A pipeline
    // that does not plan is reported and left out; the others run.
    let pg = pipelines::pg_config(&capture_cfg.connection);
    let planned = match pipelines_dir {
        Some(dir) => {
            let (planned, problems) = pipelines::plan_all(dir, &pg).await?;
            for p in &problems {
                tracing::error!(problem = %p, "Pipeline refused.");
            }
            for p in &planned {
                for t in &p.tables {
                    if !capture_cfg.source.tables.contains(t) {
                        capture_cfg.source.tables.push(t.clone());
                    }
                }
            }
            capture_cfg.source.row_filters = pipelines::publication_filters(
                &planned,
                !consumer_cfgs.is_empty(),
                &capture_cfg.source.tables,
            );
            planned
        }
        None => Vec::new(),
    };
    if consumer_cfgs.is_empty() && planned.is_empty() {
        anyhow::bail!("nothing to run: no consumers and no pipeline that plans");
    }
    let slot = capture_cfg.source.slot.clone();
    let metrics = http::install_recorder()?;
    let ready = Arc::new(AtomicBool::new(false));
    let listen = listen.to_string();
    let http_ready = ready.clone();
    let (ingest_routes, loads) = match ingest {
        Some(cfg) => {
            let (routes, loads) = ingest_router(cfg, &pg).await?;
            (Some(routes), loads)
        }
        None => (None, None),
    };
    tokio::spawn(async move {
        if let Err(error) = http::serve(&listen, metrics, http_ready, ingest_routes).await {
            tracing::error!(%error, "HTTP endpoint failed.");
        }
    });

    let mut capture = Capture::new(capture_cfg)?;
    let mut consumers = tokio::task::JoinSet::new();
    for c in consumer_cfgs {
        let sub = capture.subscribe(c.name());
        match c {
            ConsumerConfig::Log { name } => {
                let name = name.clone();
                consumers.spawn(async move {
                    lily_log::run(sub, std::io::stdout())
                        .await
                        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))
                });
            }
            ConsumerConfig::Mirror {
                name,
                target_url_env,
            } => {
                let url = std::env::var(target_url_env).with_context(|| {
                    format!("consumer {name}: environment variable {target_url_env} is not set")
                })?;
                let name = name.clone();
                consumers.spawn(async move {
                    lily_mirror::run(&url, sub)
                        .await
                        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))
                });
            }
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pipeline_tasks = tokio::task::JoinSet::new();
    let started = pipelines::start_all(
        planned,
        &mut capture,
        &pg,
        &slot,
        stop_rx.clone(),
        &mut pipeline_tasks,
    )
    .await?;
    if started > 0 {
        tracing::info!(pipelines = started, "Pipelines running.");
    }
    let signal_loads = loads.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Shutdown requested; draining.");
        let _ = stop_tx.send(true);
        // Running loads are cancelled (the open chunk rolls back) and resume at the next start.
        if let Some(loads) = signal_loads {
            loads.shutdown().await;
        }
    });
    ready.store(true, Ordering::Release);
    let result = capture.run(stop_rx).await;
    ready.store(false, Ordering::Release);
    // Also when capture ended on its own: no load outlives the engine.
    if let Some(loads) = &loads {
        loads.shutdown().await;
    }
    // Capture dropped its senders, so consumers see the end of their queue and return.
    while let Some(joined) = consumers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "Consumer failed."),
            Err(error) => tracing::error!(%error, "Consumer task panicked."),
        }
    }
    while let Some(joined) = pipeline_tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "Pipeline task panicked.");
        }
    }
    result.map_err(Into::into)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! The engine, assembled in one place for `lily run` and `lily dev`: pipelines planned, capture
//! with its consumers and pipelines, the HTTP endpoint (metrics, probes, ingest API), and a
//! graceful shutdown of all of it on Ctrl-C / SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use lily_cdc::Capture;

use crate::{http, pipelines};
use lily_runtime::ShutdownTrigger;

/// One consumer to run: a registered type, its name and its settings.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) settings: toml::Value,
}

/// What the engine runs.
pub(crate) struct Spec<'a> {
    pub(crate) capture: lily_cdc::CaptureConfig,
    pub(crate) consumers: Vec<ConsumerSpec>,
    pub(crate) pipelines_dir: Option<PathBuf>,
    pub(crate) listen: &'a str,
    pub(crate) http_limits: http::ServerLimits,
    pub(crate) ingest: Option<&'a lily_ingest::IngestConfig>,
}

/// Runs capture, consumers, pipelines and the HTTP endpoint until Ctrl-C / SIGTERM (or capture
/// ends). Pipelines are planned first: their source tables join the captured tables; a
/// pipeline that does not plan is reported and left out, the others run.
pub(crate) async fn run(spec: Spec<'_>) -> anyhow::Result<()> {
    let Spec {
        capture: mut capture_cfg,
        consumers: consumer_cfgs,
        pipelines_dir,
        listen,
        http_limits,
        ingest,
    } = spec;
    let registry = lily_registry::registry();
    // Pipelines are planned first: their source tables join the captured tables. A pipeline
    // that does not plan is reported and left out; the others run.
    let pg = capture_cfg.connection.clone();
    let planned = match pipelines_dir.as_deref() {
        Some(dir) => {
            let (planned, problems) = pipelines::plan_all(dir, &pg, &registry).await?;
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
    let http_ready = ready.clone();
    let listener = http::bind(listen).await?;
    let (stop_tx, stop_rx) = ShutdownTrigger::new();
    let (ingest_routes, loads) = match ingest {
        Some(cfg) => {
            let (routes, loads, api) = ingest_router(cfg, &pg).await?;
            (Some((routes, api)), loads)
        }
        None => (None, None),
    };
    let http_stop = stop_rx.clone();
    let http_task = tokio::spawn(async move {
        if let Err(error) = http::serve(
            listener,
            metrics,
            http_ready,
            ingest_routes,
            http_stop,
            http_limits,
        )
        .await
        {
            tracing::error!(%error, "HTTP endpoint failed.");
        }
    });

    let mut capture = Capture::new(capture_cfg)?;
    let mut consumers = tokio::task::JoinSet::new();
    for c in &consumer_cfgs {
        let sub = capture.subscribe(&c.name);
        let entry = registry
            .consumer(&c.kind)
            .with_context(|| format!("consumer {}: unknown type {:?}", c.name, c.kind))?;
        let running = entry
            .start(
                &c.settings,
                lily_connector::ConsumerContext { name: &c.name },
                sub,
            )
            .map_err(|e| anyhow::anyhow!("consumer {}: {e}", c.name))?;
        let name = c.name.clone();
        consumers.spawn(async move {
            running
                .await
                .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))
        });
    }

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
    let stop_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("Shutdown requested; draining.");
        stop_tx.trigger();
        // Running loads are cancelled (the open chunk rolls back) and resume at the next start.
        if let Some(loads) = signal_loads {
            loads.shutdown().await;
        }
    });
    // Ready while capture streams; every pipeline was started above.
    let mut streaming = capture.streaming();
    let readiness = tokio::spawn(async move {
        loop {
            ready.store(*streaming.borrow_and_update(), Ordering::Release);
            if streaming.changed().await.is_err() {
                ready.store(false, Ordering::Release);
                return;
            }
        }
    });
    let result = capture.run(stop_rx).await;
    readiness.abort();
    let _ = readiness.await;
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
    // Also when capture ended on its own: the HTTP server stops with the engine.
    stop_signal.trigger();
    let _ = http_task.await;
    result.map_err(Into::into)
}

/// The ingest API's routes: a connection pool of its own (so bulk and pipeline work never
/// takes its connections) and the authenticator (API keys, and OIDC tokens when configured).
/// With `load_spool_dir`, also the background bulk loads, resumed from the spool before the
/// routes serve; the caller shuts them down.
pub(crate) async fn ingest_router(
    cfg: &lily_ingest::IngestConfig,
    pg: &lily_pg::ConnectionConfig,
) -> anyhow::Result<(
    axum::Router,
    Option<lily_ingest::Loads>,
    Arc<lily_ingest::Ingest>,
)> {
    let registry = lily_registry::registry();
    cfg.validate(&registry.hook_types())
        .map_err(|e| anyhow::anyhow!(e))?;
    let limits = cfg.limits();
    let pool = lily_ingest::pool_with_wait(pg, cfg.pool_size, limits.pool_wait)
        .map_err(|e| anyhow::anyhow!(e))?;
    let jwt = match &cfg.oidc {
        Some(o) => Some(
            lily_auth::JwtVerifier::new(o.clone())
                .map_err(|e| anyhow::anyhow!("ingest.oidc: {e}"))?,
        ),
        None => None,
    };
    let auth = lily_auth::Authenticator::new(lily_auth::ApiKeys::new(), jwt);
    // Every inbound connector of the registry, configured or not: the API's routes do not
    // depend on the configuration.
    let mut hooks = lily_ingest::Hooks::default();
    for entry in &registry.hooks {
        let kind = entry
            .build(cfg.hooks.get(entry.type_name()))
            .map_err(|e| anyhow::anyhow!(e))?;
        hooks
            .register(kind)
            .await
            .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
    }
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
    let api = lily_ingest::Ingest::with_limits(pool, auth, hooks, loads.clone(), limits);
    let router = lily_ingest::router(api.clone(), cfg.max_body_bytes);
    Ok((router, loads, api))
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

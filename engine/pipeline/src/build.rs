//! Loading, checking and starting pipelines.
//!
//! Three steps, each reporting every problem it finds with the file and line:
//! [`load`] reads and checks a pipeline file and its SQL (pure, no network);
//! [`plan`] plans the SQL against the real table schemas and builds the sinks (secrets,
//! connections); [`start`] opens the ledger and starts delivery. `lily validate` runs the first
//! two; `lily run` runs all three for every pipeline, and a pipeline that fails is reported and
//! left out while the others run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lily_connector::{Registry, SinkContext};
use lily_delivery::{DeliverySettings, Ledger, Sink, SinkRunner};
use lily_transform::{ScalarUDF, SourceTable, Transform};
use tokio::task::JoinSet;

use crate::file::{PipelineFile, Problem, Source};
use crate::pipeline::{Pipeline, PipelineSink};
use crate::records::{check_output, Positions};
use lily_runtime::Shutdown;

/// A pipeline file that passed the pure checks, with its SQL.
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub file: PipelineFile,
    pub name: String,
    pub sql_path: PathBuf,
    pub sql: String,
}

impl Loaded {
    /// `schema.table` of every source.
    pub fn tables(&self) -> Vec<String> {
        self.file
            .sources
            .iter()
            .map(|s| s.table.get_ref().clone())
            .collect()
    }

    /// Row filters by table, for pushing into the publication.
    pub fn filters(&self) -> Vec<(String, Option<String>)> {
        self.file
            .sources
            .iter()
            .map(|s| {
                (
                    s.table.get_ref().clone(),
                    s.filter.as_ref().map(|f| f.get_ref().clone()),
                )
            })
            .collect()
    }

    fn src(&self) -> Source<'_> {
        Source {
            path: &self.path,
            text: &self.text,
        }
    }
}

/// Reads and checks `path` and the SQL file it names; sink types and settings against
/// `registry`.
pub fn load(path: &Path, registry: &Registry) -> Result<Loaded, Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Problem {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        }]
    })?;
    let file = PipelineFile::parse(path, &text).map_err(|p| vec![p])?;
    let mut problems = file.validate(path, &text, registry);
    let src = Source { path, text: &text };
    let sql_path = path
        .parent()
        .unwrap_or(Path::new("."))
        .join(file.transform.get_ref());
    let sql = match std::fs::read_to_string(&sql_path) {
        Ok(s) => s,
        Err(e) => {
            problems.push(src.problem(
                &file.transform,
                format!("cannot read transform {}: {e}", sql_path.display()),
            ));
            String::new()
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let name = file.name_for(path);
    Ok(Loaded {
        path: path.to_path_buf(),
        text,
        file,
        name,
        sql_path,
        sql,
    })
}

/// Every `*.toml` in `dir`, sorted, each loaded (or its problems).
pub fn load_dir(
    dir: &Path,
    registry: &Registry,
) -> Result<Vec<Result<Loaded, Vec<Problem>>>, Problem> {
    let entries = std::fs::read_dir(dir).map_err(|e| Problem {
        file: dir.to_path_buf(),
        line: None,
        message: format!("cannot read the pipelines folder: {e}"),
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let loaded: Vec<_> = paths.iter().map(|p| load(p, registry)).collect();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut out = Vec::new();
    for l in loaded {
        match l {
            Ok(l) => match names.get(&l.name) {
                Some(first) => out.push(Err(vec![Problem {
                    file: l.path.clone(),
                    line: None,
                    message: format!(
                        "pipeline name {:?} is already used by {}",
                        l.name,
                        first.display()
                    ),
                }])),
                None => {
                    names.insert(l.name.clone(), l.path.clone());
                    out.push(Ok(l));
                }
            },
            Err(p) => out.push(Err(p)),
        }
    }
    Ok(out)
}

/// What planning needs from the engine.
pub struct PlanContext<'a> {
    /// A normal (not replication) connection to the metastore, for table schemas.
    pub catalog: &'a tokio_postgres::Client,
    /// Connection settings for sinks that write to the metastore.
    pub metastore: lily_pg::ConnectionConfig,
    /// Reference functions (`asset()`, `downstream()`, ...).
    pub functions: Vec<ScalarUDF>,
    /// The connectors sinks are built with.
    pub registry: &'a Registry,
}

struct BuiltSink {
    name: String,
    sink: Arc<dyn Sink>,
    settings: DeliverySettings,
    key: Option<String>,
    columns: Option<Vec<String>>,
}

/// A pipeline whose SQL planned and whose sinks were built.
pub struct Planned {
    pub name: String,
    pub tables: Vec<String>,
    /// Each source's row filter, normalized for a publication (`None`: every row).
    pub filters: Vec<(String, Option<String>)>,
    transform: Transform,
    sources: HashMap<String, String>,
    sinks: Vec<BuiltSink>,
}

impl Planned {
    pub fn output_columns(&self) -> Vec<String> {
        self.transform
            .output_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The output columns sink `name` is sent, in order.
    pub fn sent_columns(&self, name: &str) -> Option<Vec<String>> {
        let sink = self.sinks.iter().find(|s| s.name == name)?;
        Some(match &sink.columns {
            Some(c) => c.clone(),
            None => self
                .output_columns()
                .into_iter()
                .filter(|c| !c.starts_with('_'))
                .collect(),
        })
    }

    /// The built sink named `name` (for replaying dead letters).
    pub fn sink(&self, name: &str) -> Option<&Arc<dyn Sink>> {
        self.sinks.iter().find(|s| s.name == name).map(|s| &s.sink)
    }
}

/// Plans the transform against the tables as they are now and builds the sinks.
pub async fn plan(loaded: &Loaded, ctx: &PlanContext<'_>) -> Result<Planned, Vec<Problem>> {
    let src = loaded.src();
    let mut problems = Vec::new();
    let mut sources = Vec::new();
    let mut names = HashMap::new();
    for s in &loaded.file.sources {
        let qualified = s.table.get_ref();
        match crate::catalog::table_schema(ctx.catalog, qualified).await {
            Ok(Some(schema)) => {
                names.insert(qualified.clone(), schema.name.clone());
                sources.push(SourceTable {
                    name: schema.name.clone(),
                    schema: schema.arrow.clone(),
                    filter: s.filter.as_ref().map(|f| f.get_ref().clone()),
                });
            }
            Ok(None) => problems
                .push(src.problem(&s.table, format!("source table {qualified} does not exist"))),
            Err(e) => problems.push(src.problem(&s.table, e)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let transform = match Transform::plan(&loaded.sql, &sources, &ctx.functions).await {
        Ok(t) => t,
        Err(e) => {
            let (line, message) = match e.location() {
                Some(l) => (Some(l.line), format!("{e} (column {})", l.column)),
                None => (None, e.to_string()),
            };
            return Err(vec![Problem {
                file: loaded.sql_path.clone(),
                line,
                message,
            }]);
        }
    };
    if let Err(e) = check_output(transform.output_schema()) {
        return Err(vec![Problem {
            file: loaded.sql_path.clone(),
            line: None,
            message: e,
        }]);
    }
    let output: Vec<String> = transform
        .output_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut sinks = Vec::new();
    for decl in &loaded.file.sinks {
        let name = decl.name.get_ref().clone();
        if let Some(k) = &decl.key {
            if !output.contains(k.get_ref()) {
                problems.push(src.problem(
                    k,
                    format!(
                        "key column {:?} is not in the transform's output ({})",
                        k.get_ref(),
                        output.join(", ")
                    ),
                ));
            }
        }
        if let Some(cols) = &decl.columns {
            for c in cols.get_ref() {
                if !output.contains(c) {
                    problems.push(src.problem(
                        cols,
                        format!(
                            "column {c:?} is not in the transform's output ({})",
                            output.join(", ")
                        ),
                    ));
                }
            }
        }
        let sent: Vec<String> = match &decl.columns {
            Some(c) => c.get_ref().clone(),
            None => output
                .iter()
                .filter(|c| !c.starts_with('_'))
                .cloned()
                .collect(),
        };
        let Some(entry) = ctx.registry.sink(decl.kind.get_ref()) else {
            // `load` checked the type against the same registry.
            problems.push(src.problem(&decl.kind, "unknown sink type"));
            continue;
        };
        let cx = SinkContext {
            pipeline: &loaded.name,
            name: &name,
            columns: &sent,
            metastore: &ctx.metastore,
        };
        let sink = entry.build(&decl.settings_value(), cx).await;
        match sink {
            Ok(sink) => sinks.push(BuiltSink {
                name,
                sink,
                settings: decl
                    .delivery
                    .as_ref()
                    .map(|d| d.get_ref().clone())
                    .unwrap_or_default(),
                key: decl.key.as_ref().map(|k| k.get_ref().clone()),
                columns: decl.columns.as_ref().map(|c| c.get_ref().clone()),
            }),
            Err(e) => problems.push(decl.settings_problem(&src, &e)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut filters = Vec::new();
    for (s, (table, filter)) in loaded.file.sources.iter().zip(loaded.filters()) {
        let normalized = match filter {
            Some(f) => match lily_transform::publication_filter(&f) {
                Ok(n) => Some(n),
                Err(e) => {
                    problems
                        .push(src.problem(s.filter.as_ref().unwrap_or(&s.table), e.to_string()));
                    None
                }
            },
            None => None,
        };
        filters.push((table, normalized));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Planned {
        name: loaded.name.clone(),
        tables: loaded.tables(),
        filters,
        transform,
        sources: names,
        sinks,
    })
}

/// Opens the pipeline's ledger and starts its sinks' lanes.
pub async fn start(
    planned: Planned,
    pg: lily_pg::ConnectionConfig,
    shutdown: Shutdown,
    tasks: &mut JoinSet<()>,
) -> Result<Pipeline, lily_delivery::LedgerError> {
    let ledger = Ledger::open(pg, &planned.name, shutdown.clone()).await?;
    let sinks = planned
        .sinks
        .into_iter()
        .map(|s| PipelineSink {
            runner: SinkRunner::start(
                &s.name,
                s.sink,
                s.settings,
                ledger.clone(),
                shutdown.clone(),
                tasks,
            ),
            key: s.key,
            columns: s.columns,
        })
        .collect();
    Ok(Pipeline {
        name: planned.name,
        sources: planned.sources,
        transform: planned.transform,
        sinks,
        ledger,
        positions: Positions::default(),
        last_change_lsn: 0,
    })
}

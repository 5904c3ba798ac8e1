//! Reference data from the metastore, as SQL functions a transform can call:
//!
//! - `asset(tenant_id, guid)`: the asset with its nearest table and connection ancestors and its
//!   owners, as a struct (null when there is no such asset in that tenant);
//! - `downstream(tenant_id, guid, max_depth)` / `upstream(...)`: the assets reachable through
//!   lineage, as a list of structs `{guid, depth, qualified_name, type_name}`.
//!
//! They are async functions: DataFusion evaluates each once per batch with all of the batch's
//! arguments, and each evaluation is one query (distinct arguments only). Nothing is cached
//! between batches: assets, owners and lineage change, and a cache would need the change stream
//! of those tables to stay correct; one round trip per batch is cheap by comparison.
//! Every look-up is scoped to the row's tenant, so a row can never pull another tenant's data.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Fields};
use async_trait::async_trait;
use datafusion::arrow::compute::cast;
use datafusion::common::{exec_err, DataFusionError, Result};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use tokio_postgres::Client;

/// Text inside an error message that marks it as "the metastore was unreachable": the batch
/// is retried rather than dead-lettered.
pub(crate) const RETRYABLE_MARK: &str = "[metastore unavailable]";

/// Deepest lineage walk a transform may ask for.
pub const MAX_LINEAGE_DEPTH: i64 = 32;

/// A lazily (re)connected read-only client of the metastore.
pub struct MetastoreReader {
    config: lily_pg::ConnectionConfig,
    client: Mutex<Option<Arc<Client>>>,
    /// Statements prepared on the current connection, by SQL text: planning a query over 32
    /// partitions costs more than running it, so each is planned once per connection.
    statements: Mutex<HashMap<String, tokio_postgres::Statement>>,
    /// Look-up queries run, for tests and the `lily_reference_queries_total` metric.
    queries: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MetastoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetastoreReader").finish_non_exhaustive()
    }
}

impl MetastoreReader {
    pub fn new(config: lily_pg::ConnectionConfig) -> Arc<Self> {
        Arc::new(MetastoreReader {
            config,
            client: Mutex::new(None),
            statements: Mutex::new(HashMap::new()),
            queries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many look-up queries this reader has sent to the metastore.
    pub fn queries_run(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn client(&self) -> Result<Arc<Client>> {
        if let Some(c) = self.client.lock().expect("reader lock").as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        // `lily_pg::connect` turns JIT off: look-ups are primary-key probes whose cost estimate
        // on a large batch passes the JIT threshold, and compiling then costs more than running.
        let client = lily_pg::connect(&self.config, lily_pg::Role::Lookup)
            .await
            .map_err(unavailable)?;
        let client = Arc::new(client);
        *self.client.lock().expect("reader lock") = Some(client.clone());
        self.statements.lock().expect("reader lock").clear();
        Ok(client)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let client = self.client().await?;
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("lily_reference_queries_total").increment(1);
        let cached = self
            .statements
            .lock()
            .expect("reader lock")
            .get(sql)
            .cloned();
        let statement = match cached {
            Some(st) => st,
            None => {
                let st = client.prepare(sql).await.map_err(|e| {
                    if e.is_closed() || e.as_db_error().is_none() {
                        unavailable(e)
                    } else {
                        DataFusionError::Execution(format!(
                            "metastore look-up failed: {}",
                            lily_pg::describe(&e)
                        ))
                    }
                })?;
                self.statements
                    .lock()
                    .expect("reader lock")
                    .insert(sql.to_string(), st.clone());
                st
            }
        };
        client.query(&statement, params).await.map_err(|e| {
            // A prepared statement outlived a schema change ("cached plan must not change
            // result type"): prepare again on the next attempt.
            if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) {
                self.statements.lock().expect("reader lock").clear();
                return unavailable(e);
            }
            if e.is_closed() || e.as_db_error().is_none() {
                unavailable(e)
            } else {
                DataFusionError::Execution(format!(
                    "metastore look-up failed: {}",
                    lily_pg::describe(&e)
                ))
            }
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{RETRYABLE_MARK} {e}"))
}

/// The reference functions, ready to register in a transform.
pub fn functions(reader: &Arc<MetastoreReader>) -> Vec<ScalarUDF> {
    vec![
        AsyncScalarUDF::new(Arc::new(AssetFn::new(reader.clone()))).into_scalar_udf(),
        AsyncScalarUDF::new(Arc::new(LineageFn::new(
            reader.clone(),
            Direction::Downstream,
        )))
        .into_scalar_udf(),
        AsyncScalarUDF::new(Arc::new(LineageFn::new(
            reader.clone(),
            Direction::Upstream,
        )))
        .into_scalar_udf(),
    ]
}

fn asset_fields() -> Fields {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let list = |n: &str| {
        Field::new(
            n,
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            true,
        )
    };
    Fields::from(vec![
        text("guid"),
        text("type_name"),
        text("name"),
        text("qualified_name"),
        text("status"),
        text("parent_guid"),
        text("table_qualified_name"),
        text("table_name"),
        text("connection_qualified_name"),
        text("connection_name"),
        list("owner_users"),
        list("owner_groups"),
        text("attributes"),
    ])
}

fn lineage_fields() -> Fields {
    Fields::from(vec![
        Field::new("guid", DataType::Utf8, true),
        Field::new("depth", DataType::Int32, true),
        Field::new("qualified_name", DataType::Utf8, true),
        Field::new("type_name", DataType::Utf8, true),
    ])
}

/// Argument `i` as a Utf8 array of `rows` values.
fn text_arg(args: &ScalarFunctionArgs, i: usize) -> Result<StringArray> {
    let array = args.args[i].clone().into_array(args.number_rows)?;
    let array = cast(&array, &DataType::Utf8)?;
    Ok(array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray")
        .clone())
}

/// A canonical UUID text, lower-cased; anything else cannot name an asset.
fn uuid_text(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then(|| s.to_ascii_lowercase())
}

/// The last evaluation of a look-up function. DataFusion's planner may place one call several
/// times over the same batch (once per field read from its struct result, e.g. `a['name']`,
/// `a['table_name']`), and each would be a round trip to the metastore. The argument arrays are
/// kept alive with the result, so pointer identity means the very same arrays of the same batch
/// in the same run, never a later batch that reuses freed memory.
#[derive(Debug, Default)]
struct LastCall(Mutex<Option<(Vec<ColumnarValue>, ArrayRef)>>);

impl LastCall {
    fn same(a: &[ColumnarValue], b: &[ColumnarValue]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| match (a, b) {
                (ColumnarValue::Array(a), ColumnarValue::Array(b)) => {
                    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
                }
                (ColumnarValue::Scalar(a), ColumnarValue::Scalar(b)) => a == b,
                _ => false,
            })
    }

    fn get(&self, args: &ScalarFunctionArgs) -> Option<ArrayRef> {
        let last = self.0.lock().expect("last call lock");
        last.as_ref()
            .filter(|(a, r)| r.len() == args.number_rows && Self::same(a, &args.args))
            .map(|(_, r)| r.clone())
    }

    fn put(&self, args: &ScalarFunctionArgs, result: &ArrayRef) {
        *self.0.lock().expect("last call lock") = Some((args.args.clone(), result.clone()));
    }
}

#[derive(Debug)]
struct AssetFn {
    signature: Signature,
    reader: Arc<MetastoreReader>,
    last: LastCall,
}

impl AssetFn {
    fn new(reader: Arc<MetastoreReader>) -> Self {
        AssetFn {
            signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Volatile),
            reader,
            last: LastCall::default(),
        }
    }
}

/// One asset row as the walk reads it.
struct Node {
    tenant: String,
    type_name: String,
    name: String,
    qualified_name: String,
    status: String,
    parent: Option<String>,
    attributes: String,
    owner_users: Vec<String>,
    owner_groups: Vec<String>,
}

impl AssetFn {
    /// Reads the wanted assets and all their ancestors (column → table → schema → database →
    /// connection) in one round trip: a recursive walk up `parent_guid`, each distinct asset
    /// read once per batch however many rows share it. Each step is a primary-key probe in one
    /// partition (a parameterized nested loop with run-time pruning; `LIMIT 1` keeps the
    /// planner from flattening it into a join that scans every partition, which it did for
    /// `guid = ANY(...)`). `UNION` drops rows already seen, so a corrupt parent cycle ends.
    async fn walk(
        &self,
        wanted: &[(String, String)],
    ) -> Result<HashMap<(String, String), AssetRow>> {
        let mut first: Vec<String> = wanted.iter().map(|(_, g)| g.clone()).collect();
        first.sort();
        first.dedup();
        let rows = self
            .reader
            .query(
                "WITH RECURSIVE walk AS ( \
                     SELECT a.* FROM unnest($1::text[]::uuid[]) AS g(id) \
                     CROSS JOIN LATERAL ( \
                         SELECT x.guid, x.tenant_id, x.type_name, x.name, x.qualified_name, \
                                x.status, x.parent_guid, x.attributes::text AS attributes \
                         FROM meta.assets x WHERE x.guid = g.id LIMIT 1 \
                     ) a \
                     UNION \
                     SELECT p.* FROM walk w \
                     CROSS JOIN LATERAL ( \
                         SELECT x.guid, x.tenant_id, x.type_name, x.name, x.qualified_name, \
                                x.status, x.parent_guid, NULL::text AS attributes \
                         FROM meta.assets x WHERE x.guid = w.parent_guid LIMIT 1 \
                     ) p \
                 ) \
                 SELECT guid::text, tenant_id, type_name, name, qualified_name, status, \
                        parent_guid::text, attributes, \
                        CASE WHEN jsonb_typeof(attributes::jsonb -> 'ownerUsers') = 'array' \
                             THEN ARRAY(SELECT jsonb_array_elements_text(attributes::jsonb -> 'ownerUsers')) \
                             ELSE '{}'::text[] END, \
                        CASE WHEN jsonb_typeof(attributes::jsonb -> 'ownerGroups') = 'array' \
                             THEN ARRAY(SELECT jsonb_array_elements_text(attributes::jsonb -> 'ownerGroups')) \
                             ELSE '{}'::text[] END \
                 FROM walk",
                &[&first],
            )
            .await?;
        let mut nodes: HashMap<String, Node> = HashMap::new();
        for r in rows {
            let guid: String = r.get(0);
            let attributes: Option<String> = r.get(7);
            // An asset is both wanted and an ancestor of another wanted one: keep the row that
            // carries its attributes.
            if attributes.is_none() && nodes.contains_key(&guid) {
                continue;
            }
            nodes.insert(
                guid,
                Node {
                    tenant: r.get(1),
                    type_name: r.get(2),
                    name: r.get(3),
                    qualified_name: r.get(4),
                    status: r.get(5),
                    parent: r.get(6),
                    attributes: attributes.unwrap_or_default(),
                    owner_users: r.get(8),
                    owner_groups: r.get(9),
                },
            );
        }
        let mut found = HashMap::new();
        for (tenant, guid) in wanted {
            // Tenant-scoped: an asset (or ancestor) of another tenant is not this row's.
            let Some(a) = nodes.get(guid).filter(|n| n.tenant == *tenant) else {
                continue;
            };
            let (mut table, mut connection) = (None, None);
            let mut at = Some((guid.as_str(), a));
            let mut hops = 0;
            while let Some((_, n)) = at {
                if table.is_none()
                    && matches!(n.type_name.as_str(), "Table" | "View" | "MaterializedView")
                {
                    table = Some((n.qualified_name.clone(), n.name.clone()));
                }
                if connection.is_none() && n.type_name == "Connection" {
                    connection = Some((n.qualified_name.clone(), n.name.clone()));
                }
                hops += 1;
                if hops > 16 || (table.is_some() && connection.is_some()) {
                    break;
                }
                at = n.parent.as_deref().and_then(|p| {
                    nodes
                        .get(p)
                        .filter(|pn| pn.tenant == *tenant)
                        .map(|pn| (p, pn))
                });
            }
            let text = vec![
                Some(guid.clone()),
                Some(a.type_name.clone()),
                Some(a.name.clone()),
                Some(a.qualified_name.clone()),
                Some(a.status.clone()),
                a.parent.clone(),
                table.as_ref().map(|t| t.0.clone()),
                table.as_ref().map(|t| t.1.clone()),
                connection.as_ref().map(|c| c.0.clone()),
                connection.as_ref().map(|c| c.1.clone()),
            ];
            found.insert(
                (tenant.clone(), guid.clone()),
                (
                    text,
                    a.owner_users.clone(),
                    a.owner_groups.clone(),
                    Some(a.attributes.clone()),
                ),
            );
        }
        Ok(found)
    }
}

impl PartialEq for AssetFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.reader, &other.reader)
    }
}
impl Eq for AssetFn {}
impl Hash for AssetFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "asset".hash(state);
    }
}

impl ScalarUDFImpl for AssetFn {
    fn name(&self) -> &str {
        "asset"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(asset_fields()))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("asset() is evaluated asynchronously")
    }
}

/// One asset's struct values, in [`asset_fields`] order: the ten text fields, owner users,
/// owner groups, attributes.
type AssetRow = (
    Vec<Option<String>>,
    Vec<String>,
    Vec<String>,
    Option<String>,
);

#[async_trait]
impl AsyncScalarUDFImpl for AssetFn {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(done) = self.last.get(&args) {
            return Ok(ColumnarValue::Array(done));
        }
        let result = self.evaluate(&args).await?;
        self.last.put(&args, &result);
        Ok(ColumnarValue::Array(result))
    }
}

impl AssetFn {
    async fn evaluate(&self, args: &ScalarFunctionArgs) -> Result<ArrayRef> {
        let tenants = text_arg(args, 0)?;
        let guids = text_arg(args, 1)?;
        let mut seen = std::collections::HashSet::new();
        let mut wanted: Vec<(String, String)> = Vec::new();
        let mut keys: Vec<Option<(String, String)>> = Vec::with_capacity(args.number_rows);
        for i in 0..args.number_rows {
            let key = match (tenants.is_valid(i), guids.is_valid(i)) {
                (true, true) => {
                    uuid_text(guids.value(i)).map(|g| (tenants.value(i).to_string(), g))
                }
                _ => None,
            };
            if let Some(k) = &key {
                if seen.insert(k.clone()) {
                    wanted.push(k.clone());
                }
            }
            keys.push(key);
        }
        let found = self.walk(&wanted).await?;
        let fields = asset_fields();
        let mut builder = StructBuilder::from_fields(fields.clone(), args.number_rows);
        for key in &keys {
            let row = key.as_ref().and_then(|k| found.get(k));
            for c in 0..10 {
                let b = builder
                    .field_builder::<StringBuilder>(c)
                    .expect("text field");
                b.append_option(row.and_then(|r| r.0[c].as_deref()));
            }
            for (c, pick) in [(10usize, 1usize), (11, 2)] {
                let b = builder
                    .field_builder::<ListBuilder<Box<dyn arrow_array::builder::ArrayBuilder>>>(c)
                    .expect("list field");
                match row {
                    Some(r) => {
                        let values = if pick == 1 { &r.1 } else { &r.2 };
                        let inner = b
                            .values()
                            .as_any_mut()
                            .downcast_mut::<StringBuilder>()
                            .expect("list of text");
                        for v in values {
                            inner.append_value(v);
                        }
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            builder
                .field_builder::<StringBuilder>(12)
                .expect("text field")
                .append_option(row.and_then(|r| r.3.as_deref()));
            builder.append(row.is_some());
        }
        Ok(Arc::new(builder.finish()) as ArrayRef)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Direction {
    Downstream,
    Upstream,
}

#[derive(Debug)]
struct LineageFn {
    signature: Signature,
    reader: Arc<MetastoreReader>,
    direction: Direction,
    last: LastCall,
}

impl LineageFn {
    fn new(reader: Arc<MetastoreReader>, direction: Direction) -> Self {
        LineageFn {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, DataType::Int64],
                Volatility::Volatile,
            ),
            reader,
            direction,
            last: LastCall::default(),
        }
    }
}

impl PartialEq for LineageFn {
    fn eq(&self, other: &Self) -> bool {
        self.direction == other.direction && Arc::ptr_eq(&self.reader, &other.reader)
    }
}
impl Eq for LineageFn {}
impl Hash for LineageFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.direction.hash(state);
    }
}

impl ScalarUDFImpl for LineageFn {
    fn name(&self) -> &str {
        match self.direction {
            Direction::Downstream => "downstream",
            Direction::Upstream => "upstream",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(lineage_fields()),
            true,
        ))))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{}() is evaluated asynchronously", self.name())
    }
}

type LineageKey = (String, String, i32);
type LineageRow = (String, i32, String, String);

#[async_trait]
impl AsyncScalarUDFImpl for LineageFn {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let Some(done) = self.last.get(&args) {
            return Ok(ColumnarValue::Array(done));
        }
        let result = self.evaluate(&args).await?;
        self.last.put(&args, &result);
        Ok(ColumnarValue::Array(result))
    }
}

impl LineageFn {
    async fn evaluate(&self, args: &ScalarFunctionArgs) -> Result<ArrayRef> {
        let tenants = text_arg(args, 0)?;
        let guids = text_arg(args, 1)?;
        let depths = args.args[2].clone().into_array(args.number_rows)?;
        let depths = cast(&depths, &DataType::Int64)?;
        let depths = depths
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64")
            .clone();
        let mut seen = std::collections::HashSet::new();
        let mut wanted: Vec<LineageKey> = Vec::new();
        let mut keys: Vec<Option<LineageKey>> = Vec::with_capacity(args.number_rows);
        for i in 0..args.number_rows {
            let key = if tenants.is_valid(i) && guids.is_valid(i) && depths.is_valid(i) {
                let depth = depths.value(i);
                if !(0..=MAX_LINEAGE_DEPTH).contains(&depth) {
                    return exec_err!(
                        "{}(): max_depth {depth} is outside 0..={MAX_LINEAGE_DEPTH}",
                        self.name()
                    );
                }
                uuid_text(guids.value(i)).map(|g| (tenants.value(i).to_string(), g, depth as i32))
            } else {
                None
            };
            if let Some(k) = &key {
                if seen.insert(k.clone()) {
                    wanted.push(k.clone());
                }
            }
            keys.push(key);
        }
        let mut found: HashMap<usize, Vec<LineageRow>> = HashMap::new();
        if !wanted.is_empty() {
            let t: Vec<&str> = wanted.iter().map(|k| k.0.as_str()).collect();
            let g: Vec<&str> = wanted.iter().map(|k| k.1.as_str()).collect();
            let d: Vec<i32> = wanted.iter().map(|k| k.2).collect();
            let walk = match self.direction {
                Direction::Downstream => "meta.lineage_downstream",
                Direction::Upstream => "meta.lineage_upstream",
            };
            let sql = format!(
                "SELECT q.i, w.asset_guid::text, w.depth, a.qualified_name, a.type_name \
                 FROM unnest($1::text[], $2::text[]::uuid[], $3::int4[]) WITH ORDINALITY \
                      AS q(tenant, start, max_depth, i) \
                 CROSS JOIN LATERAL {walk}(q.start, q.max_depth) w \
                 JOIN meta.assets a ON a.guid = w.asset_guid AND a.tenant_id = q.tenant \
                 ORDER BY q.i, w.depth, a.qualified_name"
            );
            for r in self.reader.query(&sql, &[&t, &g, &d]).await? {
                let i: i64 = r.get(0);
                found.entry(i as usize - 1).or_default().push((
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                ));
            }
        }
        let index: HashMap<&LineageKey, usize> =
            wanted.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let mut builder =
            ListBuilder::new(StructBuilder::from_fields(lineage_fields(), 0)).with_field(Arc::new(
                Field::new_list_field(DataType::Struct(lineage_fields()), true),
            ));
        let empty = Vec::new();
        for key in &keys {
            let Some(k) = key else {
                builder.append(false);
                continue;
            };
            let rows = found.get(&index[k]).unwrap_or(&empty);
            let s = builder.values();
            for (guid, depth, qn, type_name) in rows {
                s.field_builder::<StringBuilder>(0)
                    .expect("guid")
                    .append_value(guid);
                s.field_builder::<Int32Builder>(1)
                    .expect("depth")
                    .append_value(*depth);
                s.field_builder::<StringBuilder>(2)
                    .expect("qn")
                    .append_value(qn);
                s.field_builder::<StringBuilder>(3)
                    .expect("type")
                    .append_value(type_name);
                s.append(true);
            }
            builder.append(true);
        }
        Ok(Arc::new(builder.finish()))
    }
}

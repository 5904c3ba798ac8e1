//! The cross-tenant matrix: every tenant-scoped route and verb of `openapi.json` with another
//! tenant's credential, and every direct-SQL tenant role against every other tenant's rows.
//! Everything is refused, and a refusal never tells an existing object from a missing one.

mod common;

use std::time::Duration;

use lily_auth::{ApiKeys, Authenticator};
use lily_pgharness::PgCluster;
use serde_json::{json, Value};

const SCOPES: [&str; 6] = [
    "assets:write",
    "lineage:write",
    "classifications:write",
    "incidents:write",
    "load:write",
    "assets:read",
];

/// Every table tenants' rows live in, with what the tenant roles may do there.
const TENANT_TABLES: [&str; 8] = [
    "meta.assets",
    "meta.lineage_edges",
    "meta.classifications",
    "meta.incidents",
    "meta.principals",
    "meta.group_members",
    "lily.inbound_events",
    "lily.audit_log",
];

struct Api {
    base: String,
    http: reqwest::Client,
    admin: tokio_postgres::Client,
    acme: String,
    globex: String,
    _cluster: PgCluster,
    _spool: tempfile::TempDir,
}

async fn start() -> Api {
    let (cluster, admin) = common::metastore().await;
    let keys = ApiKeys::uncached();
    let (acme, _) = keys
        .create(&admin, "acme", "all", SCOPES.iter())
        .await
        .unwrap();
    let (globex, _) = keys
        .create(&admin, "globex", "all", SCOPES.iter())
        .await
        .unwrap();
    let spool = tempfile::tempdir().unwrap();
    let loads = lily_ingest::Loads::new(
        lily_ingest::LoadsSettings::new(spool.path().join("spool")),
        cluster.connection("ingest"),
    )
    .unwrap();
    loads.start().await.unwrap();
    let mut hooks = lily_ingest::Hooks::default();
    for entry in &lily_registry::registry().hooks {
        hooks.register(entry.build(None).unwrap()).await.unwrap();
    }
    let ingest = lily_ingest::Ingest::with_loads(
        lily_ingest::pool(&cluster.connection("ingest"), 4).unwrap(),
        Authenticator::new(ApiKeys::new(), None),
        hooks,
        Some(loads),
    );
    let app = lily_ingest::router(ingest, 1 << 20);
    let base = common::serve(app).await;
    Api {
        base,
        http: reqwest::Client::new(),
        admin,
        acme: acme.expose_secret().to_string(),
        globex: globex.expose_secret().to_string(),
        _cluster: cluster,
        _spool: spool,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Writes the same small catalog for `tenant` with its own key: assets, an edge, a tag.
    async fn seed(&self, tenant: &str, key: &str) {
        let p = tenant;
        for (path, body) in [
            (
                "assets",
                json!({"upsert": [
                    {"type_name": "Connection", "qualified_name": p, "name": p},
                    {"type_name": "Table", "qualified_name": format!("{p}/t1"), "name": "t1", "parent_qualified_name": p},
                    {"type_name": "Table", "qualified_name": format!("{p}/t2"), "name": "t2", "parent_qualified_name": p},
                    {"type_name": "Process", "qualified_name": format!("{p}/etl"), "name": "etl"}
                ]}),
            ),
            (
                "lineage",
                json!({"upsert": [{"upstream": format!("{p}/t1"), "downstream": format!("{p}/t2"), "process": format!("{p}/etl")}]}),
            ),
            (
                "classifications",
                json!({"upsert": [{"qualified_name": format!("{p}/t1"), "tag": "PII"}]}),
            ),
        ] {
            let (st, text) = self
                .call(
                    "post",
                    &format!("/v1/tenants/{tenant}/{path}"),
                    key,
                    Some(&body),
                )
                .await;
            assert_eq!(st, 200, "seeding {tenant} {path}: {text}");
        }
        // Rows the API has no route for, written as the owner: an incident, a principal and a
        // membership.
        self.admin
            .execute(
                "INSERT INTO meta.incidents (tenant_id, source, external_id, incident_type, severity, status)
                 VALUES ($1, 'manual', 'inc-1', 'freshness', 'SEV-2', 'open')",
                &[&tenant],
            )
            .await
            .unwrap();
        self.admin
            .execute(
                "INSERT INTO meta.principals (tenant_id, kind, external_id, login, status, last_event_at)
                 VALUES ($1, 'user', 'u1', 'ana', 'ACTIVE', now());
                 ",
                &[&tenant],
            )
            .await
            .unwrap();
        self.admin
            .execute(
                "INSERT INTO meta.group_members (tenant_id, group_id, user_id, member, last_event_at)
                 VALUES ($1, 'g1', 'u1', true, now())",
                &[&tenant],
            )
            .await
            .unwrap();
        self.admin
            .execute(
                "INSERT INTO lily.inbound_events (tenant_id, source, event_id) VALUES ($1, 'manual', 'e1')",
                &[&tenant],
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_reaches_another_by_any_route_or_role() {
    let api = start().await;
    api.seed("acme", &api.acme).await;
    api.seed("globex", &api.globex).await;
    // An acme load job, so its status route has an object to (not) disclose.
    let resp = api
        .http
        .post(format!("{}/v1/tenants/acme/loads", api.base))
        .bearer_auth(&api.acme)
        .header("content-type", "application/x-ndjson")
        .body("{\"type_name\":\"Connection\",\"qualified_name\":\"acme-load\",\"name\":\"l\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job: Value = resp.json().await.unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();
    let missing_job = "0123456789abcdef0123456789abcdef";
    // The load must have ended before the counts below are taken.
    let mut done = false;
    for _ in 0..1200 {
        let (_, text) = api
            .call(
                "get",
                &format!("/v1/tenants/acme/loads/{job_id}"),
                &api.acme,
                None,
            )
            .await;
        // The status, not the lanes' "done" flags.
        let status: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the acme load did not finish");
    let rows_before = api
        .admin
        .query_one(
            "SELECT (SELECT count(*) FROM meta.assets) + (SELECT count(*) FROM meta.lineage_edges)
                  + (SELECT count(*) FROM meta.classifications) + (SELECT count(*) FROM lily.load_jobs)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);

    // Every tenant-scoped route and documented verb of the API, with globex's key on acme's
    // path, and on a tenant that does not exist: refused alike.
    let doc: Value = serde_json::from_str(lily_ingest::OPENAPI).unwrap();
    let mut checked = 0;
    for (template, ops) in doc["paths"].as_object().unwrap() {
        if !template.starts_with("/v1/tenants/{tenant}/") || template.contains("/webhooks/") {
            continue;
        }
        for method in ops.as_object().unwrap().keys() {
            let body = json!({"upsert": [{"type_name": "Connection", "qualified_name": "x", "name": "x", "upstream": "a", "downstream": "b", "process": "p", "tag": "PII"}]});
            let body = (method == "post").then_some(&body);
            let at = |tenant: &str, job: &str| {
                template
                    .replace("{tenant}", tenant)
                    .replace("{job_id}", job)
            };
            let on_acme = api
                .call(method, &at("acme", &job_id), &api.globex, body)
                .await;
            let on_nobody = api
                .call(method, &at("nobody", &job_id), &api.globex, body)
                .await;
            assert!(
                (400..500).contains(&on_acme.0),
                "{method} {template} with globex's key on acme: {on_acme:?}"
            );
            assert_eq!(
                on_acme, on_nobody,
                "{method} {template}: acme's answer differs from a missing tenant's"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} routes");
    // globex asking for acme's job under its own tenant: the same as a job that does not exist.
    let theirs = api
        .call(
            "get",
            &format!("/v1/tenants/globex/loads/{job_id}"),
            &api.globex,
            None,
        )
        .await;
    let missing = api
        .call(
            "get",
            &format!("/v1/tenants/globex/loads/{missing_job}"),
            &api.globex,
            None,
        )
        .await;
    assert_eq!(theirs.0, 404, "{theirs:?}");
    assert_eq!(theirs, missing);
    let rows_after = api
        .admin
        .query_one(
            "SELECT (SELECT count(*) FROM meta.assets) + (SELECT count(*) FROM meta.lineage_edges)
                  + (SELECT count(*) FROM meta.classifications) + (SELECT count(*) FROM lily.load_jobs)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows_before, rows_after, "a refused request wrote");

    // Direct SQL: each tenant role reads its own rows of every tenant table and nothing of the
    // other's, cannot write, and cannot widen itself with `lily.tenant`.
    for (me, other) in [("acme", "globex"), ("globex", "acme")] {
        let role: String = api
            .admin
            .query_one("SELECT meta.create_tenant_role($1)", &[&me])
            .await
            .unwrap()
            .get(0);
        for table in TENANT_TABLES
            .iter()
            .chain(["meta.tenants", "meta.tenant_roles", "lily.load_jobs"].iter())
        {
            api.admin.batch_execute("BEGIN").await.unwrap();
            api.admin
                .batch_execute(&format!(
                    "SET LOCAL ROLE \"{role}\"; SELECT set_config('lily.tenant', '{other}', true)"
                ))
                .await
                .unwrap();
            let seen = api
                .admin
                .query(&format!("SELECT tenant_id::text FROM {table}"), &[])
                .await;
            api.admin.batch_execute("ROLLBACK").await.unwrap();
            match seen {
                Ok(rows) => {
                    let tenants: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                    assert!(
                        tenants.iter().all(|t| t == me),
                        "{role} reads {other}'s rows of {table}: {tenants:?}"
                    );
                }
                // No grant at all (lily.load_jobs is the API's): refused outright.
                Err(e) => assert_eq!(
                    e.code().map(|c| c.code()),
                    Some("42501"),
                    "{role} on {table}: {e}"
                ),
            }
            for dml in [
                format!("DELETE FROM {table}"),
                format!("UPDATE {table} SET tenant_id = tenant_id"),
            ] {
                api.admin.batch_execute("BEGIN").await.unwrap();
                api.admin
                    .batch_execute(&format!("SET LOCAL ROLE \"{role}\""))
                    .await
                    .unwrap();
                let e = api.admin.batch_execute(&dml).await.unwrap_err();
                api.admin.batch_execute("ROLLBACK").await.unwrap();
                assert_eq!(
                    e.code().map(|c| c.code()),
                    Some("42501"),
                    "{role}: {dml}: {e}"
                );
            }
        }
        // And it does see its own catalog.
        api.admin.batch_execute("BEGIN").await.unwrap();
        api.admin
            .batch_execute(&format!("SET LOCAL ROLE \"{role}\""))
            .await
            .unwrap();
        let own: i64 = api
            .admin
            .query_one("SELECT count(*) FROM meta.assets", &[])
            .await
            .unwrap()
            .get(0);
        api.admin.batch_execute("ROLLBACK").await.unwrap();
        assert!(own >= 4, "{role} sees {own} of its own assets");
    }
}

//! The ingest API against a real PostgreSQL: writes, idempotency, bad input, authentication,
//! the cross-tenant matrix and row-level security.

use std::collections::BTreeSet;

use lily_auth::{ApiKeys, Authenticator};
use lily_pgharness::PgCluster;
use serde_json::{json, Value};

struct Server {
    base: String,
    _cluster: PgCluster,
    client: tokio_postgres::Client,
    /// Keys by name: acme_all, acme_assets (assets:write only), globex_all.
    keys: std::collections::HashMap<&'static str, String>,
    http: reqwest::Client,
    /// What the router serves, as (method, path).
    routes: Vec<(&'static str, String)>,
}

const MAX_BODY: usize = 64 * 1024;

/// Every inbound hook of the engine's registry, with these tenants' Monte Carlo and Okta hooks.
async fn hooks(
    monte_carlo: &[lily_montecarlo::MonteCarloHookConfig],
    okta: &[lily_okta::OktaHookConfig],
) -> lily_ingest::Hooks {
    let mut hooks = lily_ingest::Hooks::default();
    for entry in &lily_registry::registry().hooks {
        let kind = match entry.type_name() {
            "monte_carlo" => {
                lily_ingest::HookKind::of(monte_carlo.iter().map(|c| c.build().unwrap()).collect())
            }
            "okta" => lily_ingest::HookKind::of(okta.iter().map(|c| c.build().unwrap()).collect()),
            _ => entry.build(None).unwrap(),
        };
        hooks.register(kind).await.unwrap();
    }
    hooks
}

async fn start() -> Server {
    start_with(Vec::new(), Vec::new(), None).await
}

async fn start_with(
    monte_carlo: Vec<lily_montecarlo::MonteCarloHookConfig>,
    okta: Vec<lily_okta::OktaHookConfig>,
    oidc: Option<lily_auth::OidcConfig>,
) -> Server {
    let cluster = PgCluster::start().await.unwrap();
    cluster.create_database("ingest").await.unwrap();
    let client = cluster.connect("ingest").await.unwrap();
    lily_metastore::migrate(&client).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')",
        )
        .await
        .unwrap();
    let keys_admin = ApiKeys::uncached();
    let mut keys = std::collections::HashMap::new();
    let all = [
        "assets:write",
        "lineage:write",
        "classifications:write",
        "incidents:write",
    ];
    for (name, tenant, scopes) in [
        ("acme_all", "acme", &all[..]),
        ("acme_assets", "acme", &all[..1]),
        ("globex_all", "globex", &all[..]),
    ] {
        let (presented, _) = keys_admin
            .create(&client, tenant, name, scopes.iter())
            .await
            .unwrap();
        keys.insert(name, presented.expose_secret().to_string());
    }
    let pg: tokio_postgres::Config = cluster.url("ingest").parse().unwrap();
    let mgr = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(4)
        .build()
        .unwrap();
    let jwt = oidc.map(|c| lily_auth::JwtVerifier::new(c).unwrap());
    let hooks = hooks(&monte_carlo, &okta).await;
    let routes = lily_ingest::served_routes(&hooks);
    let ingest =
        lily_ingest::Ingest::new(pool, Authenticator::new(ApiKeys::uncached(), jwt), hooks);
    let app = lily_ingest::router(ingest, MAX_BODY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base,
        _cluster: cluster,
        client,
        keys,
        http: reqwest::Client::new(),
        routes,
    }
}

impl Server {
    async fn post(&self, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            req = req.bearer_auth(&self.keys[k]);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn raw(&self, key: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.keys[key])
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

fn hierarchy(prefix: &str) -> Value {
    json!({"upsert": [
        {"type_name": "Connection", "qualified_name": prefix, "name": prefix},
        {"type_name": "Database", "qualified_name": format!("{prefix}/db"), "name": "db", "parent_qualified_name": prefix},
        {"type_name": "Schema", "qualified_name": format!("{prefix}/db/sch"), "name": "sch", "parent_qualified_name": format!("{prefix}/db")},
        {"type_name": "Table", "qualified_name": format!("{prefix}/db/sch/orders"), "name": "orders", "parent_qualified_name": format!("{prefix}/db/sch"),
         "attributes": {"ownerUsers": ["ana@example.com"]}},
        {"type_name": "Column", "qualified_name": format!("{prefix}/db/sch/orders/email"), "name": "email", "parent_qualified_name": format!("{prefix}/db/sch/orders")}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_transactional_idempotent_and_audited() {
    let s = start().await;
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &hierarchy("snow"),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body, json!({"written": 5, "deleted": 0}));
    // The guid the API derives is the metastore's own.
    let same: bool = s
        .client
        .query_one(
            "SELECT guid = meta.asset_guid('acme', 'snow/db/sch/orders') FROM meta.assets WHERE qualified_name = 'snow/db/sch/orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same);
    // A repeated delivery changes nothing: no row written, no version bumped.
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &hierarchy("snow"),
        )
        .await;
    assert_eq!((st, body), (200, json!({"written": 0, "deleted": 0})));
    assert_eq!(
        s.count("SELECT max(version) FROM meta.assets WHERE tenant_id = 'acme'")
            .await,
        1
    );
    // Every accepted write is audited with who, tenant and what.
    let audit = s
        .client
        .query(
            "SELECT tenant_id, principal, action FROM lily.audit_log ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 2);
    for r in &audit {
        assert_eq!(r.get::<_, String>(0), "acme");
        assert!(r.get::<_, String>(1).starts_with("key:"));
        assert_eq!(r.get::<_, String>(2), "assets.write");
    }

    // A child whose parent does not exist: refused, and nothing of the request is written.
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &json!({"upsert": [
                {"type_name": "Table", "qualified_name": "snow/db/sch/ok", "name": "ok", "parent_qualified_name": "snow/db/sch"},
                {"type_name": "Column", "qualified_name": "nowhere/c", "name": "c", "parent_qualified_name": "nowhere"}
            ]}),
        )
        .await;
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("\\\"nowhere\\\""), "{body}");
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE qualified_name = 'snow/db/sch/ok'")
            .await,
        0
    );

    // Quotes and semicolons in names are data.
    let hostile = "snow/db/sch/x'); DROP TABLE meta.assets; --\"";
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &json!({"upsert": [{"type_name": "Table", "qualified_name": hostile, "name": "x';--", "parent_qualified_name": "snow/db/sch"}]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let stored: String = s
        .client
        .query_one(
            "SELECT name FROM meta.assets WHERE qualified_name = $1",
            &[&hostile],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "x';--");

    // Lineage and tags need existing assets.
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/lineage",
            &json!({"upsert": [{"upstream": "snow/db/sch/orders", "downstream": "snow/db/sch/ghost", "process": "snow/etl"}]}),
        )
        .await;
    assert_eq!(st, 422, "{body}");
    assert!(body.to_string().contains("ghost"));
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/classifications",
            &json!({"upsert": [{"qualified_name": "snow/db/sch/orders/email", "tag": "PII", "propagate": true}]}),
        )
        .await;
    assert_eq!((st, body), (200, json!({"written": 1, "deleted": 0})));

    // Deleting a parent without its children is refused; with them it works.
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &json!({"delete": ["snow/db/sch/orders"]}),
        )
        .await;
    assert_eq!(st, 409, "{body}");
    let (st, body) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &json!({"delete": ["snow/db/sch/orders", "snow/db/sch/orders/email"]}),
        )
        .await;
    assert_eq!((st, body), (200, json!({"written": 0, "deleted": 2})));
    assert_eq!(
        s.count("SELECT count(*) FROM meta.classifications").await,
        0,
        "the deleted column's tag went with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    let s = start().await;
    let path = "/v1/tenants/acme/assets";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", "application/json", b"{\"upsert\": [".to_vec(), 400, ""),
        (
            "unknown field",
            "application/json",
            br#"{"upsert": [{"type_name": "Table", "qualified_name": "a", "name": "a", "colour": 1}]}"#.to_vec(),
            422,
            "unknown field `colour`",
        ),
        ("wrong content type", "text/plain", b"{}".to_vec(), 415, ""),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"delete\": [\"\xff\xfe\"]}".to_vec(),
            400,
            "",
        ),
        (
            "bad type name",
            "application/json",
            br#"{"upsert": [{"type_name": "table; drop", "qualified_name": "a", "name": "a"}]}"#.to_vec(),
            422,
            "type_name",
        ),
        ("empty request", "application/json", b"{}".to_vec(), 422, "nothing to write"),
        (
            "duplicate name",
            "application/json",
            br#"{"upsert": [{"type_name": "Connection", "qualified_name": "a", "name": "a"}, {"type_name": "Connection", "qualified_name": "a", "name": "b"}]}"#.to_vec(),
            422,
            "appears twice",
        ),
        (
            "control character",
            "application/json",
            br#"{"upsert": [{"type_name": "Connection", "qualified_name": "a\u0000b", "name": "a"}]}"#.to_vec(),
            422,
            "control character",
        ),
    ];
    for (what, ctype, body, want, text) in cases {
        let (st, resp) = s.raw("acme_all", path, ctype, body).await;
        assert_eq!(st, want, "{what}: {resp}");
        assert!(resp.to_string().contains(text), "{what}: {resp}");
        assert!(resp["error"]["code"].is_string(), "{what}: {resp}");
    }
    let big = vec![b' '; MAX_BODY + 1];
    let (st, _) = s.raw("acme_all", path, "application/json", big).await;
    assert_eq!(st, 413);
    // An unknown route (e.g. no tenant in the path) is a 404, not a crash.
    let (st, _) = s
        .raw(
            "acme_all",
            "/v1/tenants//assets",
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert!((400..500).contains(&st), "{st}");
    assert_eq!(s.count("SELECT count(*) FROM meta.assets").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_and_never_cross_tenants() {
    let s = start().await;
    let (st, _) = s
        .post(
            Some("globex_all"),
            "/v1/tenants/globex/assets",
            &hierarchy("gx"),
        )
        .await;
    assert_eq!(st, 200);
    let bodies = [
        ("/assets", hierarchy("evil")),
        (
            "/lineage",
            json!({"upsert": [{"upstream": "gx/db", "downstream": "gx/db/sch", "process": "gx"}]}),
        ),
        (
            "/classifications",
            json!({"upsert": [{"qualified_name": "gx/db/sch/orders", "tag": "PII"}]}),
        ),
    ];
    // Every API-key route is in the matrix; the webhooks authenticate by their own secrets
    // (tested in monte_carlo_* and okta_*), the bulk-load routes have their own matrix in
    // tests/loads.rs.
    let routes: BTreeSet<&str> = s
        .routes
        .iter()
        .map(|r| r.1.as_str())
        .filter(|p| p.starts_with("/v1/") && !p.contains("/webhooks/") && !p.contains("/loads"))
        .collect();
    assert_eq!(routes.len(), bodies.len(), "every route is in the matrix");
    for (suffix, body) in &bodies {
        let globex = format!("/v1/tenants/globex{suffix}");
        // No credential, a forged key, a malformed header: 401 with no detail.
        let (st, resp) = s.post(None, &globex, body).await;
        assert_eq!(st, 401, "{suffix}: {resp}");
        assert_eq!(resp["error"]["message"], "invalid credentials");
        let forged = s
            .http
            .post(format!("{}{globex}", s.base))
            .bearer_auth("lily_aaaaaaaaaaaa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status().as_u16(), 401);
        // acme's credential on globex's path: 403, and globex's data untouched.
        let (st, resp) = s.post(Some("acme_all"), &globex, body).await;
        assert_eq!(st, 403, "{suffix}: {resp}");
        assert_eq!(resp["error"]["message"], "forbidden");
    }
    // A key without the scope: 403.
    let (st, _) = s
        .post(
            Some("acme_assets"),
            "/v1/tenants/acme/classifications",
            &json!({"upsert": [{"qualified_name": "x", "tag": "PII"}]}),
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        s.count("SELECT count(*) FROM meta.assets WHERE tenant_id = 'acme'")
            .await,
        0
    );
    assert_eq!(
        s.count("SELECT count(*) FROM meta.classifications").await,
        0
    );
    assert_eq!(
        s.count("SELECT count(*) FROM lily.audit_log WHERE tenant_id = 'acme'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_confines_tenant_roles() {
    let s = start().await;
    for (key, t, p) in [("acme_all", "acme", "ac"), ("globex_all", "globex", "gx")] {
        let (st, _) = s
            .post(Some(key), &format!("/v1/tenants/{t}/assets"), &hierarchy(p))
            .await;
        assert_eq!(st, 200);
    }
    // The ingest role sees and writes only the tenant its transaction names.
    s.client
        .batch_execute(
            "BEGIN; SET LOCAL ROLE lily_ingest; SELECT set_config('lily.tenant', 'acme', true);",
        )
        .await
        .unwrap();
    let seen: Vec<String> = s
        .client
        .query("SELECT DISTINCT tenant_id FROM meta.assets", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec!["acme".to_string()]);
    let e = s
        .client
        .batch_execute(
            "INSERT INTO meta.assets (guid, tenant_id, type_name, name, qualified_name)
             VALUES (meta.asset_guid('globex', 'sneaky'), 'globex', 'Table', 'sneaky', 'sneaky')",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    s.client.batch_execute("ROLLBACK").await.unwrap();
    // A tenant's own database role reads only its rows, whatever it asks for.
    s.client
        .batch_execute("SELECT meta.create_tenant_role('globex')")
        .await
        .unwrap();
    s.client
        .batch_execute("BEGIN; SET LOCAL ROLE lily_tenant_globex; SELECT set_config('lily.tenant', 'acme', true);")
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = s
        .client
        .query(
            "SELECT tenant_id, count(*) FROM meta.assets GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![("globex".to_string(), 5)]);
    let e = s
        .client
        .batch_execute("UPDATE meta.assets SET name = 'x'")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    s.client.batch_execute("ROLLBACK").await.unwrap();
}

/// Every (method, path) `openapi.json` documents.
fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(lily_ingest::OPENAPI).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    documented
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(lily_ingest::OPENAPI).unwrap();
    let documented = documented();
    let hooks = hooks(&[], &[]).await;
    let mut served: BTreeSet<(String, String)> = lily_ingest::served_routes(&hooks)
        .into_iter()
        .map(|(m, p)| (m.to_string(), p))
        .collect();
    // Served by the binary next to the ingest routes.
    for p in ["/healthz", "/readyz", "/metrics"] {
        served.insert(("get".into(), p.into()));
    }
    assert_eq!(documented, served);
    // Every $ref resolves.
    let text = lily_ingest::OPENAPI;
    for r in text.split("\"$ref\": \"#/").skip(1) {
        let target = &r[..r.find('"').unwrap()];
        let mut node = &doc;
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "unresolved $ref #/{target}");
    }
}

/// The router itself, asked over HTTP, against the document in both directions: every
/// documented operation reaches a route of the API (a JSON answer, not the router's empty 404
/// or its 405), and on every documented path each undocumented method is 405. Paths the
/// document does not name cannot be enumerated; what the router has beyond the document is
/// checked on its own record of what it registered (`served_routes`, the same calls that add
/// the routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_what_openapi_documents() {
    let s = start().await;
    // Served by the binary next to the ingest routes.
    let binary = ["/healthz", "/readyz", "/metrics"];
    let documented: BTreeSet<(String, String)> = documented()
        .into_iter()
        .filter(|(_, p)| !binary.contains(&p.as_str()))
        .collect();
    let served: BTreeSet<(String, String)> = s
        .routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.clone()))
        .collect();
    assert_eq!(served, documented);
    let call = |method: &str, path: &str| {
        let req = s.http.request(
            reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap(),
            format!(
                "{}{}",
                s.base,
                path.replace("{tenant}", "acme").replace("{job_id}", "j1")
            ),
        );
        async move {
            let resp = req.send().await.unwrap();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (resp.status().as_u16(), ctype, resp.text().await.unwrap())
        }
    };
    // The probe tells a route from none: the router's fallback says "no such route".
    let (st, _, body) = call("post", "/v1/tenants/{tenant}/webhooks/nobody").await;
    assert_eq!(st, 404);
    assert!(body.contains("no such route"), "{body}");
    for (method, path) in &documented {
        let (st, _, body) = call(method, path).await;
        assert_ne!(st, 405, "{method} {path}");
        assert!(
            !body.contains("no such route"),
            "{method} {path} is not served"
        );
        assert!(
            serde_json::from_str::<Value>(&body).is_ok(),
            "{method} {path}: {st} {body:?}"
        );
    }
    let paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if !documented.contains(&(method.to_string(), path.to_string())) {
                let (st, _, body) = call(method, path).await;
                assert_eq!(st, 405, "{method} {path}: {body:?}");
            }
        }
    }
    // The document itself, without credentials.
    let (st, ctype, body) = call("get", "/openapi.json").await;
    assert_eq!(
        (st, ctype.as_deref(), body.as_str()),
        (200, Some("application/json"), lily_ingest::OPENAPI)
    );
}

const MC_SECRET: &str = "mc-signing-secret";

fn mc_hooks() -> Vec<lily_montecarlo::MonteCarloHookConfig> {
    std::env::set_var("LILY_TEST_MC_SECRET", MC_SECRET);
    vec![toml::from_str(
        r#"
tenant_id = "acme"
secret_env = "LILY_TEST_MC_SECRET"
connection_qualified_name = "snow"
account_id = "acct-1"
"#,
    )
    .unwrap()]
}

async fn post_mc(s: &Server, tenant: &str, d: &lily_montecarlo::fake::Delivery) -> (u16, Value) {
    let mut req = s
        .http
        .post(format!(
            "{}/v1/tenants/{tenant}/webhooks/monte-carlo",
            s.base
        ))
        .header("content-type", "application/json")
        .body(d.body.clone());
    if let Some((name, value)) = d.header() {
        req = req.header(name, value);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monte_carlo_incidents_land_on_their_table_once() {
    use lily_montecarlo::fake::{FakeMonteCarlo, Incident, IncidentEvent, Notification, Signing};
    let s = start_with(mc_hooks(), Vec::new(), None).await;
    let (st, _) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &hierarchy("snow"),
        )
        .await;
    assert_eq!(st, 200);
    let mc = FakeMonteCarlo::new(MC_SECRET);
    let incident = Notification::Incident(Incident::new(
        "acct-1",
        "inc-42",
        vec![IncidentEvent::custom_sql("rule-1", "db:sch.orders")],
    ));

    // Wrong signature, missing signature, a MAC over the raw body: 403, nothing written.
    for signing in [
        Signing::BadSignature,
        Signing::Unsigned,
        Signing::RawBodyMac,
    ] {
        let (st, body) = post_mc(&s, "acme", &mc.deliver(&incident, signing)).await;
        assert_eq!(st, 403, "{signing:?}: {body}");
    }
    assert_eq!(s.count("SELECT count(*) FROM meta.incidents").await, 0);

    // Signed: the incident lands on the table asset.
    let d = mc.deliver(&incident, Signing::Signed);
    let (st, body) = post_mc(&s, "acme", &d).await;
    assert_eq!(st, 200, "{body}");
    let row = s
        .client
        .query_one(
            "SELECT external_id, incident_type, status, asset_guid = meta.asset_guid('acme', 'snow/db/sch/orders')
             FROM meta.incidents WHERE tenant_id = 'acme' AND source = 'monte_carlo'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "inc-42");
    assert_eq!(row.get::<_, String>(1), "custom_sql");
    assert_eq!(row.get::<_, String>(2), "open");
    assert!(row.get::<_, bool>(3), "attached to snow/db/sch/orders");

    // The same delivery again changes nothing.
    let before: String = s
        .client
        .query_one("SELECT updated_at::text FROM meta.incidents", &[])
        .await
        .unwrap()
        .get(0);
    let (st, body) = post_mc(&s, "acme", &d).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["new"], 0, "{body}");
    let after: String = s
        .client
        .query_one("SELECT updated_at::text FROM meta.incidents", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (s.count("SELECT count(*) FROM meta.incidents").await, before),
        (1, after)
    );

    // Another tenant has no Monte Carlo hook (answered as an unsigned delivery is, so tenants
    // cannot be enumerated); another account is refused; a body that is not a Monte Carlo
    // payload is a clear 4xx.
    let (st, _) = post_mc(&s, "globex", &d).await;
    assert_eq!(st, 403);
    let other = Notification::Incident(Incident::new(
        "acct-2",
        "inc-43",
        vec![IncidentEvent::custom_sql("rule-1", "db:sch.orders")],
    ));
    let (st, _) = post_mc(&s, "acme", &mc.deliver(&other, Signing::Signed)).await;
    assert_eq!(st, 403);
    let junk = lily_montecarlo::fake::Delivery {
        body: br#"{"hello": "world"}"#.to_vec(),
        signature: Some(
            lily_montecarlo::signature::sign(MC_SECRET.as_bytes(), br#"{"hello": "world"}"#)
                .unwrap(),
        ),
    };
    let (st, body) = post_mc(&s, "acme", &junk).await;
    assert!((400..500).contains(&st), "{st} {body}");
    assert_eq!(s.count("SELECT count(*) FROM meta.incidents").await, 1);
    assert_eq!(
        s.count("SELECT count(*) FROM lily.audit_log WHERE principal = 'webhook:monte_carlo'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_hook_verifies_dedupes_and_orders() {
    use lily_okta::fake::{FakeOkta, Group, LogEvent, User};
    std::env::set_var("LILY_TEST_OKTA_SECRET", "okta-shared-secret");
    let okta_cfg: lily_okta::OktaHookConfig = toml::from_str(
        r#"
tenant_id = "acme"
secret_env = "LILY_TEST_OKTA_SECRET"
"#,
    )
    .unwrap();
    let s = start_with(Vec::new(), vec![okta_cfg], None).await;
    let okta = FakeOkta::new("authorization", "okta-shared-secret");
    let url = format!("{}/v1/tenants/acme/webhooks/okta", s.base);
    let send = |req: lily_okta::fake::HookRequest| {
        let http = s.http.clone();
        let url = url.clone();
        async move {
            let mut b = match req.method {
                lily_okta::fake::Method::Get => http.get(&url),
                lily_okta::fake::Method::Post => http.post(&url).body(req.body.clone()),
            };
            for (n, v) in &req.headers {
                b = b.header(n, v);
            }
            let resp = b.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // The one-time verification.
    let (st, body) = send(okta.verification_request("challenge-123")).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"verification": "challenge-123"})
    );
    // Wrong or missing secret: 401.
    let ana = User::new("00u1", "ana@example.com", "Ana");
    let eng = Group::new("00g1", "engineering");
    let create = LogEvent::user("user.lifecycle.create", &ana, 1_000);
    let (st, _) = send(
        okta.delivery(std::slice::from_ref(&create))
            .with_secret("authorization", Some("nope")),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = send(
        okta.delivery(std::slice::from_ref(&create))
            .with_secret("authorization", None),
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(s.count("SELECT count(*) FROM meta.principals").await, 0);
    // Events late, twice and out of order: the final state is the newest one.
    let events = vec![
        create,
        LogEvent::group("group.lifecycle.create", &eng, 1_500),
        LogEvent::membership(true, &ana, &eng, 2_000),
        LogEvent::user("user.lifecycle.deactivate", &ana, 3_000),
        LogEvent::membership(false, &ana, &eng, 4_000),
    ];
    for req in okta.deliveries(&events, 2, 7) {
        let (st, body) = send(req).await;
        assert_eq!(st, 204, "{body}");
    }
    let status: String = s
        .client
        .query_one(
            "SELECT status FROM meta.principals WHERE tenant_id = 'acme' AND kind = 'user' AND external_id = '00u1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "DEACTIVATED");
    let member: bool = s
        .client
        .query_one(
            "SELECT member FROM meta.group_members WHERE group_id = '00g1' AND user_id = '00u1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!member, "the removal is newer than the addition");
    assert_eq!(
        s.count("SELECT count(*) FROM lily.inbound_events WHERE source = 'okta'")
            .await,
        5
    );
    // An older event arriving after everything changes nothing.
    let late = LogEvent::user("user.lifecycle.activate", &ana, 2_500);
    let (st, _) = send(okta.delivery(&[late])).await;
    assert_eq!(st, 204);
    let status: String = s
        .client
        .query_one(
            "SELECT status FROM meta.principals WHERE external_id = '00u1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "DEACTIVATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_act_for_their_tenant_only() {
    use lily_auth::fake::FakeIdp;
    let idp = FakeIdp::start().await;
    let s = start_with(Vec::new(), Vec::new(), Some(idp.config())).await;
    let call = |token: String, tenant: &'static str| {
        let http = s.http.clone();
        let url = format!("{}/v1/tenants/{tenant}/assets", s.base);
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&hierarchy(tenant))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let good = idp.token(&idp.claims("ana", "acme", &["assets:write"]));
    assert_eq!(call(good.clone(), "acme").await, 200);
    // The same token on another tenant's path.
    assert_eq!(call(good, "globex").await, 403);
    // Missing scope, expired, wrong audience.
    assert_eq!(
        call(
            idp.token(&idp.claims("ana", "acme", &["lineage:write"])),
            "acme"
        )
        .await,
        403
    );
    let mut expired = idp.claims("ana", "acme", &["assets:write"]);
    expired["exp"] = json!(1_000_000);
    expired["iat"] = json!(999_000);
    assert_eq!(call(idp.token(&expired), "acme").await, 401);
    let mut wrong_aud = idp.claims("ana", "acme", &["assets:write"]);
    wrong_aud["aud"] = json!("api://other");
    assert_eq!(call(idp.token(&wrong_aud), "acme").await, 401);
    // After a key rotation, new tokens verify and the old key's do not.
    let old = idp.key();
    idp.rotate().await;
    assert_eq!(
        call(
            idp.token(&idp.claims("ana", "acme", &["assets:write"])),
            "acme"
        )
        .await,
        200
    );
    assert_eq!(
        call(
            old.sign(&idp.claims("ana", "acme", &["assets:write"])),
            "acme"
        )
        .await,
        401
    );
    let principals: Vec<String> = s
        .client
        .query("SELECT DISTINCT principal FROM lily.audit_log", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(principals, vec!["jwt:ana".to_string()]);
}

/// A request that can never succeed is a 4xx naming the problem, never 503 + `Retry-After`
/// (which tells a client, and Monte Carlo or Okta, to send it again forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_succeed_are_not_told_to_retry() {
    use lily_montecarlo::fake::{FakeMonteCarlo, Incident, IncidentEvent, Notification, Signing};
    let s = start_with(mc_hooks(), Vec::new(), None).await;
    let (st, _) = s
        .post(
            Some("acme_all"),
            "/v1/tenants/acme/assets",
            &hierarchy("snow"),
        )
        .await;
    assert_eq!(st, 200);
    let pair = json!({"qualified_name": "snow/db/sch/orders", "tag": "PII"});
    let edge = json!({"upstream": "snow/db", "downstream": "snow/db/sch/orders", "process": "p"});
    for (what, path, body) in [
        (
            "a classification twice",
            "/v1/tenants/acme/classifications",
            json!({"upsert": [pair, pair]}),
        ),
        (
            "a classification upserted and deleted",
            "/v1/tenants/acme/classifications",
            json!({"upsert": [pair], "delete": [pair]}),
        ),
        (
            "an edge twice",
            "/v1/tenants/acme/lineage",
            json!({"upsert": [edge, edge]}),
        ),
        (
            "an asset upserted and deleted",
            "/v1/tenants/acme/assets",
            json!({"upsert": [{"type_name": "Connection", "qualified_name": "x", "name": "x"}], "delete": ["x"]}),
        ),
    ] {
        let resp = s
            .http
            .post(format!("{}{path}", s.base))
            .bearer_auth(&s.keys["acme_all"])
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 422, "{what}");
        assert!(resp.headers().get("retry-after").is_none(), "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unprocessable", "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("appears twice"),
            "{what}: {body}"
        );
    }
    assert_eq!(
        s.count("SELECT count(*) FROM meta.classifications").await,
        0
    );
    assert_eq!(s.count("SELECT count(*) FROM meta.lineage_edges").await, 0);

    // An incident id longer than any index entry: 400 naming the field, nothing written, and
    // the hook still works.
    let mc = FakeMonteCarlo::new(MC_SECRET);
    let long_id = "i".repeat(4000);
    let poison = Notification::Incident(Incident::new(
        "acct-1",
        &long_id,
        vec![IncidentEvent::custom_sql("rule-1", "db:sch.orders")],
    ));
    let (st, body) = post_mc(&s, "acme", &mc.deliver(&poison, Signing::Signed)).await;
    assert_eq!(st, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_payload", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 512"),
        "{body}"
    );
    assert_eq!(s.count("SELECT count(*) FROM meta.incidents").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM lily.inbound_events").await, 0);
    let fine = Notification::Incident(Incident::new(
        "acct-1",
        "inc-1",
        vec![IncidentEvent::custom_sql("rule-1", "db:sch.orders")],
    ));
    let (st, body) = post_mc(&s, "acme", &mc.deliver(&fine, Signing::Signed)).await;
    assert_eq!(st, 200, "{body}");
}

/// Without a configured connection, the tables a Monte Carlo delivery names are found through
/// an index, never by wildcard; and a late, older delivery does not reopen a resolved alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monte_carlo_tables_resolve_exactly_and_status_never_goes_back() {
    use lily_montecarlo::fake::{
        Alert, AlertEvent, FakeMonteCarlo, Incident, IncidentEvent, Notification, Signing,
    };
    std::env::set_var("LILY_TEST_MC_SECRET", MC_SECRET);
    let globex: lily_montecarlo::MonteCarloHookConfig = toml::from_str(
        "tenant_id = \"globex\"\nsecret_env = \"LILY_TEST_MC_SECRET\"\naccount_id = \"acct-2\"",
    )
    .unwrap();
    let s = start_with(vec![globex], Vec::new(), None).await;
    let (st, _) = s
        .post(
            Some("globex_all"),
            "/v1/tenants/globex/assets",
            &hierarchy("snow-globex"),
        )
        .await;
    assert_eq!(st, 200);
    let orders = "snow-globex/db/sch/orders";
    let mc = FakeMonteCarlo::new(MC_SECRET);
    let post = |n: &Notification| {
        let d = mc.deliver(n, Signing::Signed);
        let s = &s;
        async move { post_mc(s, "globex", &d).await }
    };

    // `_` and `%` in a reported name are characters, not wildcards.
    for (id, table) in [("inc-us", "db:sch.order_"), ("inc-pct", "db:sch.%")] {
        let n = Notification::Incident(Incident::new(
            "acct-2",
            id,
            vec![IncidentEvent::custom_sql("r", table)],
        ));
        let (st, body) = post(&n).await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["unattached"], 1, "{table} matched a table: {body}");
    }
    // The exact name, in another case, finds the table.
    let n = Notification::Incident(Incident::new(
        "acct-2",
        "inc-exact",
        vec![IncidentEvent::custom_sql("r", "DB:SCH.ORDERS")],
    ));
    let (st, body) = post(&n).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["unattached"], 0, "{body}");
    let attached: bool = s
        .client
        .query_one(
            "SELECT asset_guid = meta.asset_guid('globex', $1) FROM meta.incidents WHERE external_id = 'inc-exact'",
            &[&orders],
        )
        .await
        .unwrap()
        .get(0);
    assert!(attached);

    // The look-up can use the index on the tables' last segment (no scan of the tenant's assets).
    s.client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = s
        .client
        .query(
            "EXPLAIN SELECT p.path, min(a.guid::text)
             FROM unnest(ARRAY['db/sch/orders']) AS p(path)
             JOIN meta.assets a
               ON a.tenant_id = 'globex'
              AND a.type_name IN ('Table', 'View', 'MaterializedView')
              AND meta.last_segment(a.qualified_name) = split_part(p.path, '/', -1)
              AND right(lower(a.qualified_name), length(p.path) + 1) = '/' || p.path
             GROUP BY p.path HAVING count(*) = 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    s.client
        .batch_execute("RESET enable_seqscan")
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("Index"), "{plan}");
    assert!(!plan.contains("Seq Scan on assets"), "{plan}");

    // Resolved, then a late "created" for the same alert: it stays resolved.
    let mut resolved = Alert::new("acct-2", "al-1", AlertEvent::Resolved, &["db:sch.orders"]);
    resolved.feedback = Some("fixed".into());
    let (st, body) = post(&Notification::Alert(resolved)).await;
    assert_eq!(st, 200, "{body}");
    let created = Alert::new("acct-2", "al-1", AlertEvent::Created, &["db:sch.orders"]);
    let (st, body) = post(&Notification::Alert(created)).await;
    assert_eq!(st, 200, "{body}");
    let status: String = s
        .client
        .query_one(
            "SELECT status FROM meta.incidents WHERE external_id = 'al-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "resolved", "a late delivery reopened the alert");
}

/// Unknown routes, wrong methods and oversized webhook bodies answer in the documented error
/// shape, like every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_json_shape() {
    let s = start_with(mc_hooks(), Vec::new(), None).await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "get",
            "/v1/tenants/acme/assets",
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "post",
            "/v1/tenants/acme/nothing",
            b"{}".to_vec(),
            404,
            "not_found",
        ),
        (
            "post",
            "/v1/tenants/acme/assets/",
            b"{}".to_vec(),
            404,
            "not_found",
        ),
        ("get", "/nothing", Vec::new(), 404, "not_found"),
        (
            "post",
            "/v1/tenants/acme/webhooks/monte-carlo",
            vec![b' '; MAX_BODY + 1],
            413,
            "too_large",
        ),
    ];
    for (method, path, body, want, code) in cases {
        let req = match method {
            "get" => s.http.get(format!("{}{path}", s.base)),
            _ => s
                .http
                .post(format!("{}{path}", s.base))
                .header("content-type", "application/json")
                .body(body),
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{method} {path}");
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            ctype.as_deref(),
            Some("application/json"),
            "{method} {path}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
}

/// An anonymous caller cannot tell which tenants configured a hook: a tenant without one is
/// answered exactly as a tenant with one answers a caller without the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_do_not_reveal_which_tenants_exist() {
    std::env::set_var("LILY_TEST_OKTA_SECRET", "okta-shared-secret");
    let okta_cfg: lily_okta::OktaHookConfig =
        toml::from_str("tenant_id = \"acme\"\nsecret_env = \"LILY_TEST_OKTA_SECRET\"").unwrap();
    let s = start_with(mc_hooks(), vec![okta_cfg], None).await;
    let answer = |method: &'static str, tenant: &'static str, route: &'static str| {
        let s = &s;
        async move {
            let url = format!("{}/v1/tenants/{tenant}/webhooks/{route}", s.base);
            let req = match method {
                "get" => s
                    .http
                    .get(&url)
                    .header("x-okta-verification-challenge", "probe"),
                _ => s
                    .http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"type":"incident","payload":{}}"#),
            };
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    // acme has both hooks; globex exists and has none; "nobody" is no tenant at all.
    for (method, route) in [("post", "monte-carlo"), ("post", "okta"), ("get", "okta")] {
        let configured = answer(method, "acme", route).await;
        assert!(configured.0 != 404, "{method} {route}: {configured:?}");
        for other in ["globex", "nobody"] {
            assert_eq!(
                answer(method, other, route).await,
                configured,
                "{method} {route} for {other}"
            );
        }
    }
}

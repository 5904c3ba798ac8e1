//! Bad input over every route of `openapi.json`, generated from the document itself: for each
//! route and each field its schema declares, wrong types, unknown fields, oversized arrays,
//! control characters, NUL, bidirectional overrides, hostile identifiers and very long
//! strings; for every route, malformed and invalid-UTF-8 bodies, deep nesting, methods it does
//! not take, and missing, garbled, revoked and other tenants' credentials.
//!
//! Every answer must be below 500; every 4xx must be the documented JSON error; a request
//! answered 4xx must change no row; and the server must still serve a valid write at the end.

mod common;

use std::collections::BTreeMap;

use lily_auth::{ApiKeys, Authenticator};
use lily_pgharness::PgCluster;
use serde_json::{json, Map, Value};

const MAX_BODY: usize = 256 * 1024;

struct Api {
    base: String,
    http: reqwest::Client,
    client: tokio_postgres::Client,
    /// Keys by name: good (acme, every scope), other (globex), revoked (acme).
    keys: BTreeMap<&'static str, String>,
    _cluster: PgCluster,
    _spool: tempfile::TempDir,
}

async fn start() -> Api {
    let (cluster, client) = common::metastore().await;
    let admin = ApiKeys::uncached();
    let scopes = [
        "assets:write",
        "lineage:write",
        "classifications:write",
        "incidents:write",
        "load:write",
        "assets:read",
    ];
    let mut keys = BTreeMap::new();
    for (name, tenant) in [("good", "acme"), ("other", "globex"), ("revoked", "acme")] {
        let (presented, _) = admin
            .create(&client, tenant, name, scopes.iter())
            .await
            .unwrap();
        if name == "revoked" {
            assert!(admin
                .revoke(&client, tenant, presented.key_id())
                .await
                .unwrap());
        }
        keys.insert(name, presented.expose_secret().to_string());
    }
    std::env::set_var("LILY_BAD_INPUT_MC_SECRET", "mc-secret");
    std::env::set_var("LILY_BAD_INPUT_OKTA_SECRET", "okta-secret");
    let mc: lily_montecarlo::MonteCarloHookConfig = toml::from_str(
        "tenant_id = \"acme\"\nsecret_env = \"LILY_BAD_INPUT_MC_SECRET\"\nconnection_qualified_name = \"snow\"",
    )
    .unwrap();
    let okta: lily_okta::OktaHookConfig =
        toml::from_str("tenant_id = \"acme\"\nsecret_env = \"LILY_BAD_INPUT_OKTA_SECRET\"")
            .unwrap();
    let mut hooks = lily_ingest::Hooks::default();
    for entry in &lily_registry::registry().hooks {
        let kind = match entry.type_name() {
            "monte_carlo" => lily_ingest::HookKind::of(vec![mc.build().unwrap()]),
            "okta" => lily_ingest::HookKind::of(vec![okta.build().unwrap()]),
            _ => entry.build(None).unwrap(),
        };
        hooks.register(kind).await.unwrap();
    }
    let spool = tempfile::tempdir().unwrap();
    let loads = lily_ingest::Loads::new(
        lily_ingest::LoadsSettings::new(spool.path().join("spool")),
        cluster.connection("ingest"),
    )
    .unwrap();
    loads.start().await.unwrap();
    let pool = lily_ingest::pool(&cluster.connection("ingest"), 4).unwrap();
    let ingest = lily_ingest::Ingest::with_loads(
        pool,
        Authenticator::new(ApiKeys::new(), None),
        hooks,
        Some(loads),
    );
    let app = lily_ingest::router(ingest, MAX_BODY);
    let base = common::serve(app).await;
    Api {
        base,
        http: reqwest::Client::new(),
        client,
        keys,
        _cluster: cluster,
        _spool: spool,
    }
}

/// What a request changed, as row counts of every table the API writes.
async fn counts(client: &tokio_postgres::Client) -> Vec<i64> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM meta.assets), (SELECT count(*) FROM meta.lineage_edges),
                    (SELECT count(*) FROM meta.classifications), (SELECT count(*) FROM meta.incidents),
                    (SELECT count(*) FROM meta.principals), (SELECT count(*) FROM meta.group_members),
                    (SELECT count(*) FROM lily.audit_log), (SELECT count(*) FROM lily.inbound_events),
                    (SELECT count(*) FROM lily.load_jobs)",
            &[],
        )
        .await
        .unwrap();
    (0..9).map(|i| row.get(i)).collect()
}

/// One request to send.
struct Case {
    what: String,
    method: reqwest::Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Api {
    /// Sends `case`, checks the answer's shape and that a 4xx changed nothing; returns the
    /// status.
    async fn check(&self, case: &Case) -> u16 {
        let before = counts(&self.client).await;
        let mut req = self
            .http
            .request(case.method.clone(), format!("{}{}", self.base, case.path));
        for (k, v) in &case.headers {
            req = req.header(k, v);
        }
        if let Some(b) = &case.body {
            req = req.body(b.clone());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap();
        assert!(status < 500, "{}: {status} {text}", case.what);
        if status >= 400 {
            assert_eq!(ctype, "application/json", "{}: {status} {text}", case.what);
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {status} not JSON ({e}): {text}", case.what));
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{}: {status} {text}",
                case.what
            );
            assert_eq!(
                counts(&self.client).await,
                before,
                "{}: answered {status} but changed rows",
                case.what
            );
        }
        status
    }
}

/// `$ref`s resolved against the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved {r}")),
        None => schema,
    }
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A plausible instance of `schema`: every property present, one item per array.
fn sample(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.iter().find(|v| !v.is_null()))
    {
        return e.clone();
    }
    match types(schema).first().copied() {
        Some("object") => {
            let mut m = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    m.insert(k.clone(), sample(doc, v));
                }
            }
            Value::Object(m)
        }
        Some("array") => json!([sample(doc, &schema["items"])]),
        Some("integer") => json!(1),
        Some("boolean") => json!(false),
        Some("string") => {
            let pattern = schema.get("pattern").and_then(Value::as_str).unwrap_or("");
            json!(if pattern.starts_with("^[A-Z]") {
                "Table"
            } else {
                "bad-input/x"
            })
        }
        _ => json!({}),
    }
}

/// Every place in `value` (JSON pointers) with its kind.
fn places(value: &Value, at: String, out: &mut Vec<(String, &'static str)>) {
    let kind = match value {
        Value::Object(m) => {
            for (k, v) in m {
                places(v, format!("{at}/{k}"), out);
            }
            "object"
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                places(v, format!("{at}/{i}"), out);
            }
            "array"
        }
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    };
    out.push((at, kind));
}

fn with(base: &Value, at: &str, v: Value) -> Value {
    let mut out = base.clone();
    if at.is_empty() {
        return v;
    }
    *out.pointer_mut(at).unwrap() = v;
    out
}

const HOSTILE: &[&str] = &[
    "a\u{0}b",
    "bell\u{7}",
    "esc\u{1b}[31mred",
    "tab\there",
    "line\nbreak",
    "bidi\u{202e}exe.txt",
    "zero\u{200b}width",
    "'; DROP TABLE meta.assets; --",
    "\" OR 1=1 --",
    "../../etc/passwd",
    "%s%n%x",
    "${jndi:ldap://x}",
    "",
    " ",
];

/// The JSON routes' mutations of one valid-looking body.
fn mutations(base: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut all = Vec::new();
    places(base, String::new(), &mut all);
    for (at, kind) in &all {
        for (name, wrong) in [
            ("a number", json!(12345)),
            ("a boolean", json!(true)),
            ("an array", json!(["x"])),
            ("an object", json!({"x": 1})),
            ("null", Value::Null),
            ("a float", json!(1.5e300)),
        ] {
            let same = matches!(
                (*kind, &wrong),
                ("number", Value::Number(_))
                    | ("boolean", Value::Bool(_))
                    | ("array", Value::Array(_))
                    | ("object", Value::Object(_))
                    | ("null", Value::Null)
            );
            if !same {
                out.push((format!("{at} as {name}"), with(base, at, wrong)));
            }
        }
        match *kind {
            "object" => {
                let mut v = base.pointer(at).unwrap().clone();
                v.as_object_mut()
                    .unwrap()
                    .insert("zz_unknown".into(), json!(1));
                out.push((format!("{at} with an unknown field"), with(base, at, v)));
            }
            "array" => {
                let items = base.pointer(at).unwrap().as_array().unwrap();
                if let Some(first) = items.first() {
                    let huge = vec![first.clone(); lily_ingest::MAX_ITEMS + 1];
                    out.push((
                        format!("{at} with too many items"),
                        with(base, at, json!(huge)),
                    ));
                }
            }
            "string" => {
                for h in HOSTILE {
                    out.push((format!("{at} = {h:?}"), with(base, at, json!(h))));
                }
                out.push((
                    format!("{at} very long"),
                    with(base, at, json!("x".repeat(5000))),
                ));
            }
            _ => {}
        }
    }
    // Attributes nested far deeper than any catalog needs.
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!({ "a": deep });
    }
    for (at, _) in all.iter().filter(|(at, _)| at.ends_with("/attributes")) {
        out.push((
            format!("{at} nested 200 deep"),
            with(base, at, deep.clone()),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_documented_route_gets_a_clean_4xx() {
    let api = start().await;
    let doc: Value = serde_json::from_str(lily_ingest::OPENAPI).unwrap();
    let good = format!("Bearer {}", api.keys["good"]);
    let mut cases: Vec<Case> = Vec::new();
    let methods = ["get", "post", "put", "patch", "delete"];
    for (template, ops) in doc["paths"].as_object().unwrap() {
        let path = template
            .replace("{tenant}", "acme")
            .replace("{job_id}", "0123456789abcdef0123456789abcdef");
        let documented: Vec<&str> = ops
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // Methods the route does not take.
        for m in methods.iter().filter(|m| !documented.contains(m)) {
            cases.push(Case {
                what: format!("{m} {template}"),
                method: m.to_uppercase().parse().unwrap(),
                path: path.clone(),
                headers: vec![("authorization".into(), good.clone())],
                body: Some(b"{}".to_vec()),
            });
        }
        for (method, op) in ops.as_object().unwrap() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let tenant_scoped = template.starts_with("/v1/tenants/");
            let json_schema = op.pointer("/requestBody/content/application~1json/schema");
            // Credentials: none, garbled, malformed, revoked, another tenant's, both headers.
            if tenant_scoped && !template.contains("/webhooks/") {
                for (name, headers) in [
                    ("no credential", vec![]),
                    ("garbled", vec![("authorization", "Bearer ???".to_string())]),
                    (
                        "another scheme",
                        vec![("authorization", "Basic YTpi".to_string())],
                    ),
                    (
                        "malformed key",
                        vec![("authorization", "Bearer lily_x_y".to_string())],
                    ),
                    (
                        "revoked key",
                        vec![("authorization", format!("Bearer {}", api.keys["revoked"]))],
                    ),
                    (
                        "another tenant's key",
                        vec![("authorization", format!("Bearer {}", api.keys["other"]))],
                    ),
                    (
                        "both headers",
                        vec![
                            ("authorization", good.clone()),
                            ("x-api-key", api.keys["good"].clone()),
                        ],
                    ),
                ] {
                    let mut headers: Vec<(String, String)> = headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    headers.push(("content-type".into(), "application/json".into()));
                    let body = json_schema.map(|s| serde_json::to_vec(&sample(&doc, s)).unwrap());
                    cases.push(Case {
                        what: format!("{method} {template}: {name}"),
                        method: m.clone(),
                        path: path.clone(),
                        headers,
                        body,
                    });
                }
            }
            if m != reqwest::Method::POST {
                continue;
            }
            let auth = vec![
                ("authorization".to_string(), good.clone()),
                ("content-type".to_string(), "application/json".to_string()),
            ];
            // Bodies no route can take.
            for (name, raw) in [
                ("an empty body", b"".to_vec()),
                ("truncated JSON", b"{\"upsert\": [".to_vec()),
                (
                    "invalid UTF-8",
                    b"{\"upsert\": [{\"name\": \"\xff\xfe\"}]}".to_vec(),
                ),
                ("a NUL byte", b"{\"upsert\": \0}".to_vec()),
                ("a bare string", b"\"x\"".to_vec()),
                ("null", b"null".to_vec()),
                ("nested arrays", "[".repeat(10_000).into_bytes()),
                ("larger than the limit", vec![b' '; MAX_BODY + 1]),
            ] {
                if template.ends_with("/loads") && name != "larger than the limit" {
                    // An upload's content is checked by the load, after the 202.
                    continue;
                }
                cases.push(Case {
                    what: format!("{method} {template}: {name}"),
                    method: m.clone(),
                    path: path.clone(),
                    headers: auth.clone(),
                    body: Some(raw),
                });
            }
            if template.ends_with("/loads") {
                for ctype in ["text/plain", "application/json", "image/png"] {
                    cases.push(Case {
                        what: format!("{method} {template}: content type {ctype}"),
                        method: m.clone(),
                        path: path.clone(),
                        headers: vec![
                            ("authorization".into(), good.clone()),
                            ("content-type".into(), ctype.into()),
                        ],
                        body: Some(b"{}\n".to_vec()),
                    });
                }
            }
            // Field by field, from the route's schema.
            if let Some(schema) = json_schema {
                let base = sample(&doc, schema);
                for (name, body) in mutations(&base) {
                    cases.push(Case {
                        what: format!("{method} {template}: {name}"),
                        method: m.clone(),
                        path: path.clone(),
                        headers: auth.clone(),
                        body: Some(serde_json::to_vec(&body).unwrap()),
                    });
                }
            }
        }
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for case in &cases {
        *by_status.entry(api.check(case).await).or_default() += 1;
    }
    eprintln!("{} requests, by status: {by_status:?}", cases.len());
    assert!(cases.len() > 300, "only {} cases", cases.len());
    // The server is healthy: a valid write succeeds.
    let resp = api
        .http
        .post(format!("{}/v1/tenants/acme/assets", api.base))
        .header("authorization", &good)
        .json(&json!({"upsert": [{"type_name": "Connection", "qualified_name": "after", "name": "after"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
}

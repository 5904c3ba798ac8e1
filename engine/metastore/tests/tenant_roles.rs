//! Direct-SQL tenant roles: each stands for exactly one tenant and reads only that tenant's
//! rows, whatever the length of the tenant id.

use lily_metastore::migrate;
use lily_pgharness::PgCluster;
use tokio_postgres::Client;

async fn migrated() -> (PgCluster, Client) {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("meta").await.unwrap();
    let client = pg.connect("meta").await.unwrap();
    migrate(&client).await.unwrap();
    (pg, client)
}

async fn add_tenant_with_asset(client: &Client, tenant: &str) {
    client
        .execute(
            "INSERT INTO meta.tenants (tenant_id, name) VALUES ($1, $1)",
            &[&tenant],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO meta.assets (guid, tenant_id, type_name, qualified_name, name)
             VALUES (meta.asset_guid($1, 'secret-of-' || $1), $1, 'Table', 'secret-of-' || $1, 't')",
            &[&tenant],
        )
        .await
        .unwrap();
}

async fn create_role(client: &Client, tenant: &str) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT meta.create_tenant_role($1)", &[&tenant])
        .await
        .map(|r| r.get(0))
}

/// What `role` sees: (the tenant it stands for, the tenants of the assets it reads, the
/// tenant rows of `meta.tenant_roles` it reads).
async fn seen_as(client: &Client, role: &str) -> (Option<String>, Vec<String>, Vec<String>) {
    client.batch_execute("BEGIN").await.unwrap();
    client
        // Role names here are lower-case letters, digits and `_`.
        .batch_execute(&format!("SET LOCAL ROLE \"{role}\""))
        .await
        .unwrap();
    let me: Option<String> = client
        .query_one("SELECT meta.role_tenant()", &[])
        .await
        .unwrap()
        .get(0);
    let assets = client
        .query("SELECT tenant_id FROM meta.assets ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut mapped: Vec<String> = client
        .query("SELECT tenant_id FROM meta.tenant_roles ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // meta.tenants says no more: each role sees the same single tenant there.
    let tenants: Vec<String> = client
        .query("SELECT tenant_id FROM meta.tenants ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tenants != mapped {
        mapped.push(format!("meta.tenants shows {tenants:?}"));
    }
    client.batch_execute("ROLLBACK").await.unwrap();
    (me, assets, mapped)
}

#[tokio::test]
async fn tenant_roles_never_collide_whatever_the_id_length() {
    let (_pg, client) = migrated().await;
    // 51 characters: the longest id whose plain role name fits in 63 bytes. The second id
    // extends it: under truncation both got the first one's role.
    let t1 = "x".repeat(51);
    let t2 = format!("{t1}evil");
    let t3 = "y".repeat(63);
    let ids = ["acme".to_string(), t1.clone(), t2.clone(), t3.clone()];
    for t in &ids {
        add_tenant_with_asset(&client, t).await;
    }
    // The long id first, as in the attack: its role must not be the short id's.
    let r2 = create_role(&client, &t2).await.unwrap();
    let r1 = create_role(&client, &t1).await.unwrap();
    let r3 = create_role(&client, &t3).await.unwrap();
    let acme = create_role(&client, "acme").await.unwrap();
    assert_eq!(
        acme, "lily_tenant_acme",
        "short ids keep their plain role name"
    );
    assert_eq!(r1, format!("lily_tenant_{t1}"));
    let names = [&acme, &r1, &r2, &r3];
    for (i, a) in names.iter().enumerate() {
        assert!(a.len() <= 63, "{a} would be truncated");
        for b in &names[i + 1..] {
            assert_ne!(a, b, "two tenants share a role");
        }
    }
    // The names are the roles' real names, not truncated ones.
    for name in names {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)",
                &[&name.as_str()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{name}");
    }
    // Creating again returns the same role.
    assert_eq!(create_role(&client, &t2).await.unwrap(), r2);
    // Each role reads its own tenant's rows only, and cannot list the other tenants.
    for (role, tenant) in [(&acme, "acme"), (&r1, &t1), (&r2, &t2), (&r3, &t3)] {
        let (me, assets, mapped) = seen_as(&client, role).await;
        assert_eq!(me.as_deref(), Some(tenant), "{role}");
        assert_eq!(assets, [tenant.to_string()], "{role} reads another tenant");
        assert_eq!(mapped, [tenant.to_string()], "{role} lists other tenants");
    }
}

#[tokio::test]
async fn a_role_that_stands_for_no_tenant_reads_nothing_and_is_not_taken_over() {
    let (_pg, client) = migrated().await;
    add_tenant_with_asset(&client, "acme").await;
    // A role of the right name made by hand (or by an older version for a longer id), in the
    // tenants' group, but mapped to no tenant.
    client
        .batch_execute("CREATE ROLE lily_tenant_acme NOLOGIN IN ROLE lily_tenants")
        .await
        .unwrap();
    let (me, assets, _) = seen_as(&client, "lily_tenant_acme").await;
    assert_eq!(me, None);
    assert!(assets.is_empty(), "an unmapped role read {assets:?}");
    let err = create_role(&client, "acme").await.unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42710", "{db:?}");
    assert!(db.message().contains("stands for no tenant"), "{db:?}");
    // No tenant: a clear refusal, no role.
    let err = create_role(&client, "nobody").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23503");
}

#[tokio::test]
async fn a_short_id_cannot_take_a_shortened_ids_role() {
    let (_pg, client) = migrated().await;
    let long = "z".repeat(60);
    add_tenant_with_asset(&client, &long).await;
    let role = create_role(&client, &long).await.unwrap();
    // A (valid) short id spelling the same role name.
    let lookalike = role.trim_start_matches("lily_tenant_").to_string();
    assert!(lookalike.len() <= 51);
    add_tenant_with_asset(&client, &lookalike).await;
    let err = create_role(&client, &lookalike).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505", "{err:?}");
    let (me, assets, _) = seen_as(&client, &role).await;
    assert_eq!(me.as_deref(), Some(long.as_str()));
    assert_eq!(assets, [long]);
}

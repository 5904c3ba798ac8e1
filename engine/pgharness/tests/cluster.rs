//! Starts real throwaway clusters from the installed PostgreSQL binaries.

use std::sync::Arc;

use lily_pgharness::{ClusterOptions, HarnessError, PgCluster};
use tokio_postgres::config::SslMode;

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn starts_and_accepts_scram_over_tcp() {
    let pg = PgCluster::start().await.unwrap();
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.superuser(), "lily");
    assert!(pg.port() > 0);
    assert!(pg.password().len() >= 32);
    assert_eq!(
        pg.url("postgres"),
        format!(
            "postgres://lily:{}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.password(),
            pg.port()
        )
    );
    assert!(pg.bin_dir().join("pg_recvlogical").is_file());

    let client = pg.connect("postgres").await.unwrap();
    assert_eq!(show(&client, "wal_level").await, "logical");
    assert_eq!(show(&client, "max_replication_slots").await, "20");
    assert_eq!(show(&client, "max_wal_senders").await, "20");
    assert_eq!(show(&client, "password_encryption").await, "scram-sha-256");
    assert_eq!(show(&client, "fsync").await, "off");
    assert_eq!(show(&client, "max_connections").await, "200");
    assert_eq!(show(&client, "server_encoding").await, "UTF8");
    assert_eq!(show(&client, "ssl").await, "off");
    // The superuser's stored verifier is SCRAM, so the TCP login above went through SCRAM.
    let verifier: String = client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'lily'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let via_tcp: bool = client
        .query_one("SELECT inet_server_addr() = '127.0.0.1'::inet", &[])
        .await
        .unwrap()
        .get(0);
    assert!(via_tcp);

    // A replication connection is allowed too (pg_hba `host replication`).
    let out = pg
        .run_as_owner("pg_receivewal")
        .args(["--version"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = pg
        .run_as_owner("psql")
        .args([
            "-XAtc",
            "IDENTIFY_SYSTEM",
            "replication=database dbname=postgres",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn settings_override_defaults() {
    let opts = ClusterOptions::default()
        .setting("shared_buffers", "32MB")
        .setting("wal_sender_timeout", "5s")
        .setting("application_name", "it's quoted");
    let pg = PgCluster::start_with(opts).await.unwrap();
    let client = pg.connect("postgres").await.unwrap();
    assert_eq!(show(&client, "shared_buffers").await, "32MB");
    assert_eq!(show(&client, "wal_sender_timeout").await, "5s");
    // The untouched defaults stay.
    assert_eq!(show(&client, "wal_level").await, "logical");
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let pg = PgCluster::start().await.unwrap();
    let mut cfg = pg.config("postgres");
    cfg.password("not-the-password");
    let err = cfg.connect(tokio_postgres::NoTls).await.err().unwrap();
    let code = err.code().map(|c| c.code().to_string());
    assert_eq!(code.as_deref(), Some("28P01"), "{err}");
}

#[tokio::test]
async fn create_database_and_role() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_database("app db").await.unwrap();
    pg.create_role("repl", "s3cr'et", "LOGIN REPLICATION")
        .await
        .unwrap();
    let mut cfg = pg.config("app db");
    cfg.user("repl").password("s3cr'et");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "repl");
    assert_eq!(row.get::<_, String>(1), "app db");
    assert!(row.get::<_, bool>(2));
    assert!(matches!(
        pg.create_role("x", "y", "LOGIN; DROP TABLE t").await,
        Err(HarnessError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn restart_keeps_data_and_port() {
    let pg = PgCluster::start().await.unwrap();
    let port = pg.port();
    {
        let client = pg.connect("postgres").await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (1), (2);",
            )
            .await
            .unwrap();
    }
    pg.restart().await.unwrap();
    assert_eq!(pg.port(), port);
    assert!(pg.is_running());
    let client = pg.connect("postgres").await.unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}

#[tokio::test]
async fn stop_and_start_again() {
    let pg = PgCluster::start().await.unwrap();
    pg.connect("postgres")
        .await
        .unwrap()
        .batch_execute("CREATE TABLE survived (x int PRIMARY KEY); INSERT INTO survived VALUES (7)")
        .await
        .unwrap();
    pg.stop().await.unwrap();
    assert!(!pg.is_running());
    assert!(!pg.data_dir().join("postmaster.pid").exists());
    assert!(pg.connect("postgres").await.is_err());
    pg.start_again().await.unwrap();
    let client = pg.connect("postgres").await.unwrap();
    let x: i32 = client
        .query_one("SELECT x FROM survived", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 7);
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_directory() {
    let pg = PgCluster::start().await.unwrap();
    let data_dir = pg.data_dir().to_path_buf();
    let root = data_dir.parent().unwrap().to_path_buf();
    let config = pg.config("postgres");
    assert!(data_dir.join("PG_VERSION").is_file());
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(config.connect(tokio_postgres::NoTls).await.is_err());
}

#[tokio::test]
async fn two_clusters_at_once() {
    let (a, b) = tokio::join!(PgCluster::start(), PgCluster::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert_ne!(a.password(), b.password());
    let ca = a.connect("postgres").await.unwrap();
    let cb = b.connect("postgres").await.unwrap();
    ca.batch_execute("CREATE TABLE only_in_a (x int PRIMARY KEY)")
        .await
        .unwrap();
    let in_b: bool = cb
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_b);
}

#[tokio::test]
async fn tls_connection_verifies_against_the_generated_ca() {
    let pg = PgCluster::start_with(ClusterOptions::default().with_tls())
        .await
        .unwrap();
    let ca_path = pg.tls_ca_cert().expect("a CA with tls").to_path_buf();
    assert!(ca_path.is_file());
    let key = pg.data_dir().join("server.key");
    assert!(pg.data_dir().join("server.crt").is_file());
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    // Plain connections still work and report ssl = on.
    let plain = pg.connect("postgres").await.unwrap();
    assert_eq!(show(&plain, "ssl").await, "on");

    // A rustls (ring) connection that trusts only the generated CA and checks the IP SAN.
    let pem = std::fs::read(&ca_path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let mut cfg = pg.config("postgres");
    cfg.ssl_mode(SslMode::Require);
    let (client, conn) = cfg.connect(connector).await.unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    let version: String = row.get(1);
    assert!(version.starts_with("TLSv1."), "{version}");

    // A client trusting some other CA is refused.
    let other = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut cfg = pg.config("postgres");
    cfg.ssl_mode(SslMode::Require);
    assert!(cfg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(other))
        .await
        .is_err());
}

#[tokio::test]
async fn bad_setting_fails_with_the_server_log() {
    let err = PgCluster::start_with(ClusterOptions::default().setting("wal_level", "bogus"))
        .await
        .expect_err("an invalid wal_level must not start");
    let msg = err.to_string();
    assert!(matches!(err, HarnessError::StartFailed { .. }), "{msg}");
    assert!(msg.contains("wal_level"), "{msg}");
}

#[tokio::test]
async fn pinned_port_that_is_taken_fails_clearly() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = PgCluster::start_with(ClusterOptions::default().setting("port", port.to_string()))
        .await
        .expect_err("the port is held by this test");
    let msg = err.to_string();
    assert!(matches!(err, HarnessError::StartFailed { .. }), "{msg}");
    assert!(msg.contains("could not"), "{msg}");
    drop(holder);
}

#[tokio::test]
async fn invalid_setting_is_refused_before_initdb() {
    let err = PgCluster::start_with(ClusterOptions::default().setting("a\nb", "1"))
        .await
        .expect_err("a newline in a setting name");
    assert!(matches!(err, HarnessError::InvalidArgument(_)), "{err}");
}

#[tokio::test]
async fn a_cluster_left_by_a_dead_process_is_reaped_by_the_next_start() {
    let orphan = PgCluster::start().await.unwrap();
    let root = orphan.data_dir().parent().unwrap().to_path_buf();
    let port = orphan.port();
    assert!(orphan.data_dir().join("postmaster.pid").exists());
    // Pretend the creator died without dropping it: record a pid that has exited, and leak it.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(root.join("owner.pid"), dead_pid.to_string()).unwrap();
    std::mem::forget(orphan);

    let next = PgCluster::start().await.unwrap();
    assert!(!root.exists(), "the orphan's directory is removed");
    if next.port() != port {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "the orphan's server is stopped"
        );
    }
}

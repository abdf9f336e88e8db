//! TLS to PostgreSQL as the store URL's `sslmode` asks: a cluster of the test's own with
//! `ssl = on` and a certificate of a private CA (made with `openssl`), reached by the store's
//! connections and by a whole daemon, and one that authenticates clients by certificate
//! (`sslcert`, `sslkey`).

use std::path::{Path, PathBuf};

use berth_daemon::db::{Db, StoreAt};
use berth_testkit::postgres::{Cluster, ClusterSetup, psql};

/// Whether the connection `db` holds is encrypted, as the server sees it.
fn over_tls(db: &mut Db) -> bool {
    db.row(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
        |r| r.i64(0),
    )
    .unwrap()
        == Some(1)
}

/// A cluster with TLS on, its certificate signed by a private CA for 127.0.0.1 and
/// `localhost`; `hba` replaces its `pg_hba.conf` when given. Returns the cluster, the CA's
/// certificate and the directory holding it; `None` after the skip rule when `openssl` or
/// PostgreSQL is missing.
fn tls_cluster(hba: Option<&[&str]>) -> Option<(Cluster, PathBuf, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let Some([ca, cert, key]) = berth_testkit::tls::private_ca(dir.path()) else {
        berth_testkit::skip_or_fail("openssl is not installed: no certificate for the server");
        return None;
    };
    let cluster = Cluster::start_with(ClusterSetup {
        settings: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        hba: hba.map(|lines| lines.iter().map(|l| l.to_string()).collect()),
        files: vec![("server.crt".into(), cert), ("server.key".into(), key)],
    })?;
    Some((cluster, ca, dir))
}

/// Another CA, which signed nothing the server shows.
fn stranger_ca(dir: &Path) -> PathBuf {
    let [ca, _, _] = berth_testkit::tls::private_ca(dir).unwrap();
    ca
}

fn connect(url: &str) -> Result<Db, String> {
    Db::connect(&StoreAt::Postgres(url.to_owned())).map_err(|e| e.to_string())
}

/// The error of a connection that must fail.
fn refused(url: &str) -> String {
    match connect(url) {
        Ok(_) => panic!("{url} connected"),
        Err(e) => e,
    }
}

#[test]
fn require_and_prefer_encrypt_and_disable_does_not() {
    let Some((cluster, _ca, _dir)) = tls_cluster(None) else {
        return;
    };
    let url = cluster.url("postgres");
    let mut db = connect(&format!("{url}?sslmode=require")).unwrap();
    assert!(over_tls(&mut db), "sslmode=require connected in the clear");
    // No sslmode is prefer: TLS, since the server offers it.
    assert!(over_tls(&mut connect(&url).unwrap()));
    assert!(!over_tls(
        &mut connect(&format!("{url}?sslmode=disable")).unwrap()
    ));
    // A connection opened again keeps its TLS.
    drop(db);
    let mut db = connect(&format!("{url}?connect_timeout=10&sslmode=require")).unwrap();
    db.reconnect().unwrap();
    assert!(over_tls(&mut db));
}

#[test]
fn verify_full_trusts_the_ca_named_and_checks_the_host() {
    let Some((cluster, ca, dir)) = tls_cluster(None) else {
        return;
    };
    let ca = ca.display();
    let url = cluster.url("postgres");
    let mut db = connect(&format!("{url}?sslmode=verify-full&sslrootcert={ca}")).unwrap();
    assert!(over_tls(&mut db));
    // The whole store runs over it: the schema's migrations, a write, a read.
    let at = StoreAt::Postgres(format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        cluster.create_database("berth")
    ));
    let mut store = berth_daemon::store::Store::open(&at).unwrap();
    store.set_meta("tls", "yes").unwrap();
    assert_eq!(store.meta("tls").unwrap().as_deref(), Some("yes"));
    assert!(over_tls(store.db()));

    // A name the certificate does not hold, at the same address: verify-ca does not look at
    // names, verify-full refuses.
    let renamed = format!(
        "postgres://postgres@berth-db.invalid:{}/postgres?hostaddr=127.0.0.1",
        cluster.port()
    );
    assert!(over_tls(
        &mut connect(&format!("{renamed}&sslmode=verify-ca&sslrootcert={ca}")).unwrap()
    ));
    let e = refused(&format!("{renamed}&sslmode=verify-full&sslrootcert={ca}"));
    assert!(
        e.contains("berth-db.invalid") && e.contains("certificate not valid for name"),
        "{e}"
    );
    assert!(e.contains("names the host connected to"), "{e}");

    // A CA that signed something else is refused, and the error says what was checked.
    let other = tempfile::tempdir().unwrap();
    let stranger = stranger_ca(other.path());
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = format!(
            "postgres://postgres:s3cret@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            cluster.port(),
            stranger.display()
        );
        let e = refused(&url);
        assert!(
            e.contains("connecting to PostgreSQL")
                && e.contains(&format!(
                    "postgres://postgres:***@127.0.0.1:{}/postgres",
                    cluster.port()
                ))
                && e.contains("invalid peer certificate")
                && e.contains(&format!("sslrootcert={}", stranger.display())),
            "sslmode={mode}: {e}"
        );
        assert!(!e.contains("s3cret"), "a password leaked: {e}");
    }
    drop(dir);
}

#[test]
fn a_server_that_wants_tls_refuses_sslmode_disable() {
    let hostssl_only = ["local all all trust", "hostssl all all 127.0.0.1/32 trust"];
    let Some((cluster, ca, _dir)) = tls_cluster(Some(&hostssl_only)) else {
        return;
    };
    let url = cluster.url("postgres");
    let e = refused(&format!("{url}?sslmode=disable"));
    assert!(
        e.contains(&url) && e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
        "{e}"
    );
    let mut db = connect(&format!(
        "{url}?sslmode=verify-full&sslrootcert={}",
        ca.display()
    ))
    .unwrap();
    assert!(over_tls(&mut db));
}

/// A whole daemon on a TLS-only server: every connection it holds (the control loop's, the
/// readers', the hooks') is encrypted.
#[test]
fn a_daemon_keeps_its_store_over_verified_tls() {
    let hostssl_only = ["local all all trust", "hostssl all all 127.0.0.1/32 trust"];
    let Some((cluster, ca, _dir)) = tls_cluster(Some(&hostssl_only)) else {
        return;
    };
    let url = cluster.create_database("fleet");
    let data = tempfile::tempdir().unwrap();
    // The test daemon's store is chosen per data directory (see `stores`), not by the config.
    crate::stores::pin_to_url(
        data.path(),
        &format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let d = crate::TestDaemon::start(data.path(), crate::CONFIG);
    let r = d.ok(
        "POST",
        "/v1/requests",
        Some(serde_json::json!({"template": "linux", "count": 2})),
    );
    assert_eq!(r["count"], 2, "{r}");
    assert_eq!(d.ok("GET", "/v1/vms", None)["count"], 2);
    let plain = psql(
        &format!("{}?sslmode=require", cluster.url("postgres")),
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'fleet' AND NOT s.ssl",
    );
    let all = psql(
        &format!("{}?sslmode=require", cluster.url("postgres")),
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'fleet'",
    );
    assert_eq!(plain, "0", "connections in the clear");
    assert_ne!(all, "0", "the daemon holds no connection");
    d.stop();
}

/// A server that authenticates clients by certificate (`cert` in `pg_hba.conf`): the URL's
/// `sslcert` and `sslkey` log in as the certificate's name; without them the server's refusal
/// is the error; a certificate without its key, or a key that cannot be read, is refused
/// before connecting, naming the parameter.
#[test]
fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let Some([ca, cert, key]) = berth_testkit::tls::private_ca(dir.path()) else {
        berth_testkit::skip_or_fail("openssl is not installed: no certificates");
        return;
    };
    let [client, client_key] = berth_testkit::tls::client_cert(dir.path(), "berth").unwrap();
    let Some(cluster) = Cluster::start_with(ClusterSetup {
        settings: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'root.crt'".into(),
        ],
        hba: Some(vec![
            "local all all trust".into(),
            "hostssl all postgres 127.0.0.1/32 trust".into(),
            "hostssl all berth 127.0.0.1/32 cert".into(),
        ]),
        files: vec![
            ("server.crt".into(), cert),
            ("server.key".into(), key),
            ("root.crt".into(), ca.clone()),
        ],
    }) else {
        return;
    };
    psql(
        &format!("{}?sslmode=require", cluster.url("postgres")),
        "CREATE ROLE berth LOGIN",
    );
    let base = cluster.url("postgres").replacen("postgres@", "berth@", 1);
    let verified = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let mut db = connect(&format!(
        "{verified}&sslcert={}&sslkey={}",
        client.display(),
        client_key.display()
    ))
    .unwrap();
    assert!(over_tls(&mut db));
    let me = db
        .row("SELECT current_user", &[], |r| r.text(0))
        .unwrap()
        .unwrap();
    assert_eq!(me, "berth");
    let e = refused(&verified);
    assert!(e.contains("certificate"), "{e}");
    let e = refused(&format!("{verified}&sslcert={}", client.display()));
    assert!(e.contains("sslcert needs sslkey"), "{e}");
    let e = refused(&format!(
        "{verified}&sslcert={}&sslkey=/nonexistent/client.key",
        client.display()
    ));
    assert!(e.contains("sslkey=/nonexistent/client.key"), "{e}");
}

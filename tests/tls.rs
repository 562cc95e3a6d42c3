//! TLS end to end, with certificates `openssl` makes for each test: the host serving HTTPS
//! (`--tls-cert`/`--tls-key`), the command line reaching it (`--ca-cert`), bad TLS files
//! stopping the start with the file and the cause, and a cluster host reaching its own
//! `nats-server` over `tls://` with an NKey.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::servers::NatsServer;
use common::{Host, PgDatabase, TempDir, component, components_dir};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

const TOKEN: &str = "tls-test-token";

/// Runs `openssl ARGS` in `dir`; panics with its words when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian: apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate for 127.0.0.1 and localhost it signed, valid for a day: `ca.pem`,
/// `host.pem`, `host.key` in `dir`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=saga-host test CA", "-days", "1"])
        .collect::<Vec<_>>(),
    );
    openssl(
        dir,
        &[
            &["req", "-new"],
            &ec[..],
            &["-keyout", "host.key", "-out", "host.csr"],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=localhost"])
        .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "host.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "host.pem",
        ],
    );
}

/// An https client that trusts the test CA only.
fn https_client(
    ca: &Path,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// `saga-host ARGS` with the environment given.
fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_saga-host"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SAGA_HOST_CA_CERT")
        .output()
        .expect("run saga-host")
}

fn said(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_serves_https_and_the_command_line_reaches_it_with_the_ca() {
    let dir = TempDir::new("tls-serve");
    certificates(dir.path());
    let (cert, key, ca) = (
        dir.path().join("host.pem"),
        dir.path().join("host.key"),
        dir.path().join("ca.pem"),
    );
    let host = Host::start_with(
        &dir,
        &["guest_exam", "guest_attempt"],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--admin-token",
            TOKEN,
        ],
    );
    let base = format!("https://{}", host.addr);

    // A POST /exams over HTTPS runs the saga like over HTTP.
    let client = https_client(&ca);
    let body = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()}).to_string();
    let request = hyper::Request::post(format!("{base}/exams"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.expect("an https answer");
    let status = response.status();
    let created: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["attempt"], 1, "{created}");

    // Plain HTTP on the TLS port gets no answer.
    let plain = host
        .http()
        .try_send_with("GET", "/health", &[], Vec::new(), Duration::from_secs(10))
        .await;
    assert!(plain.is_err(), "plain http was answered: {plain:?}");

    // The command line: with the CA it lists and deploys; without it the certificate is
    // refused, saying why and what to do.
    let env = [("SAGA_HOST_ADMIN_TOKEN", TOKEN)];
    let listed = cli(
        &[
            "components",
            "list",
            "--host",
            &base,
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &env,
    );
    assert!(listed.status.success(), "{}", said(&listed));
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("exam"),
        "{}",
        said(&listed)
    );
    let deployed = cli(
        &[
            "deploy",
            component("guest_attempt").to_str().unwrap(),
            "--to",
            &base,
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
        &env,
    );
    assert!(deployed.status.success(), "{}", said(&deployed));
    assert!(
        String::from_utf8_lossy(&deployed.stdout).contains("attempt"),
        "{}",
        said(&deployed)
    );
    let untrusted = cli(&["components", "list", "--host", &base], &env);
    assert_eq!(untrusted.status.code(), Some(3), "{}", said(&untrusted));
    let words = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        words.contains("certificate") && words.contains("--ca-cert"),
        "{}",
        said(&untrusted)
    );
    let no_ca = cli(
        &[
            "components",
            "list",
            "--host",
            &base,
            "--ca-cert",
            "/nonexistent/ca.pem",
        ],
        &env,
    );
    assert_eq!(no_ca.status.code(), Some(2), "{}", said(&no_ca));
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("/nonexistent/ca.pem"),
        "{}",
        said(&no_ca)
    );
    host.stop();
}

/// Starts a host with these TLS files; it must refuse, naming `names` and saying `cause`, and
/// leave no database behind.
fn refused_start(dir: &TempDir, cert: &Path, key: &Path, names: &Path, cause: &str) {
    let components = components_dir(dir, &["guest_attempt"]);
    let failure = Host::launch(
        dir,
        &components,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .err()
    .unwrap_or_else(|| panic!("the host started with {cert:?} and {key:?}"));
    assert_eq!(
        failure.status.and_then(|s| s.code()),
        Some(1),
        "{failure:?}"
    );
    assert!(
        failure.stderr.contains(&names.display().to_string()) && failure.stderr.contains(cause),
        "the refusal should name {names:?} and say {cause:?}:\n{}",
        failure.stderr
    );
    assert!(
        !dir.path().join("data/saga-host.db").exists(),
        "a refused start created the database"
    );
}

#[test]
fn bad_tls_files_stop_the_start_with_the_file_and_the_cause() {
    let dir = TempDir::new("tls-bad");
    let files = dir.path();
    certificates(files);
    let (cert, key) = (files.join("host.pem"), files.join("host.key"));

    let missing = files.join("missing.key");
    refused_start(&dir, &cert, &missing, &missing, "cannot read the TLS key");

    openssl(
        files,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "host.key",
            "-out",
            "encrypted.key",
            "-v2",
            "aes256",
            "-passout",
            "pass:secret",
        ],
    );
    let encrypted = files.join("encrypted.key");
    refused_start(
        &dir,
        &cert,
        &encrypted,
        &encrypted,
        "encrypted with a password",
    );

    let ca_key = files.join("ca.key");
    refused_start(
        &dir,
        &cert,
        &ca_key,
        &ca_key,
        "does not fit the certificate",
    );

    refused_start(&dir, &key, &key, &key, "holds no certificate");

    // A certificate whose validity ended in 2020 (`openssl ca` takes explicit dates).
    std::fs::write(files.join("index.txt"), "").unwrap();
    std::fs::write(files.join("serial"), "01\n").unwrap();
    std::fs::write(
        files.join("ca.cnf"),
        "[ca]\ndefault_ca = old\n[old]\ndatabase = index.txt\nnew_certs_dir = .\n\
         serial = serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
    )
    .unwrap();
    openssl(
        files,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-selfsign",
            "-keyfile",
            "host.key",
            "-in",
            "host.csr",
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-batch",
            "-out",
            "expired.pem",
        ],
    );
    let expired = files.join("expired.pem");
    refused_start(
        &dir,
        &expired,
        &key,
        &expired,
        "expired on 2020-01-02 00:00:00",
    );

    // The same check, read through the library with a clock moved past the good one's end.
    let good = saga_host::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
    };
    assert!(good.server_config(SystemTime::now()).is_ok());
    let later = SystemTime::now() + Duration::from_secs(3 * 86_400);
    let error = good.server_config(later).expect_err("expired by then");
    assert!(
        error.contains("expired on") && error.contains("renew it"),
        "{error}"
    );
}

/// A `nats-server -js` of this test's own that wants TLS (the test CA's host certificate) and
/// knows one NKey user.
fn tls_nats(dir: &Path, user_public_key: &str) -> NatsServer {
    let config = format!(
        "tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n\
         authorization {{ users = [ {{ nkey: {user_public_key} }} ] }}\n",
        cert = dir.join("host.pem"),
        key = dir.join("host.key"),
    );
    let config_file = dir.join("nats.conf");
    std::fs::write(&config_file, config).expect("write the NATS configuration");
    NatsServer::start(&["-c", config_file.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_host_reaches_nats_over_tls_with_an_nkey() {
    let dir = TempDir::new("tls-nats");
    certificates(dir.path());
    let user = nkeys::KeyPair::new_user();
    let seed_file: PathBuf = dir.path().join("host.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let nats = tls_nats(dir.path(), &user.public_key());
    let database = PgDatabase::create("tls_nats").await;
    let ca = dir.path().join("ca.pem");
    let url = format!(
        "tls://127.0.0.1:{}/tls?nkey={}&ca={}",
        nats.port,
        seed_file.display(),
        ca.display()
    );
    let components = components_dir(&dir, &["guest_exam", "guest_attempt"]);
    let host = Host::launch(
        &dir,
        &components,
        &["--database", &database.url, "--broker", &url],
    )
    .unwrap_or_else(|failure| panic!("the host did not start over tls://: {failure:?}"));
    let submission = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()});
    for attempt in 1..=2 {
        let answer = host.http().post_json("/exams", &submission).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["attempt"], attempt, "{}", answer.body);
    }
    host.stop();

    // Another key than the server knows, and a server certificate nobody told the host to
    // trust: each refused at start, in words that say which.
    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let not_a_seed = dir.path().join("not-a-seed.nk");
    std::fs::write(&not_a_seed, "SUNOTASEED\n").unwrap();
    for (query, says) in [
        (
            format!("nkey={}&ca={}", stranger.display(), ca.display()),
            "cannot connect to NATS",
        ),
        (
            format!("nkey={}", seed_file.display()),
            "cannot connect to NATS",
        ),
        (
            format!("nkey={}&ca={}", not_a_seed.display(), ca.display()),
            "does not hold an NKey seed",
        ),
    ] {
        let refused_dir = TempDir::new("tls-nats-refused");
        let url = format!("tls://127.0.0.1:{}/tls?{query}", nats.port);
        let components = components_dir(&refused_dir, &["guest_attempt"]);
        let failure = Host::launch(
            &refused_dir,
            &components,
            &["--database", &database.url, "--broker", &url],
        )
        .err()
        .unwrap_or_else(|| panic!("the host started with {query}"));
        assert!(failure.stderr.contains(says), "{query}: {}", failure.stderr);
        assert!(
            !failure.stderr.contains(&user.seed().unwrap()),
            "the seed was printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_checks_the_server_certificate() {
    use sqlx::Connection;
    let dir = TempDir::new("tls-pg");
    certificates(dir.path());
    let postgres = common::servers::Postgres::start();

    // The server's copies of the certificate and key: the key readable by its owner only, as
    // PostgreSQL insists.
    let server_files = dir.path().join("pg-tls");
    std::fs::create_dir_all(&server_files).unwrap();
    for file in ["host.pem", "host.key"] {
        std::fs::copy(dir.path().join(file), server_files.join(file)).unwrap();
    }
    let chmod = Command::new("chmod")
        .arg("600")
        .arg(server_files.join("host.key"))
        .status()
        .unwrap();
    assert!(chmod.success());
    if common::servers::as_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&server_files)
            .status()
            .unwrap();
        assert!(chown.success());
    }
    let mut admin = sqlx::PgConnection::connect(&postgres.url())
        .await
        .expect("connect to the test's own PostgreSQL");
    for setting in [
        format!(
            "ssl_cert_file = '{}'",
            server_files.join("host.pem").display()
        ),
        format!(
            "ssl_key_file = '{}'",
            server_files.join("host.key").display()
        ),
        "ssl = on".to_string(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET {setting}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut admin)
        .await
        .unwrap();
    let ca = dir.path().join("ca.pem");
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        postgres.url(),
        ca.display()
    );
    // The reload is asynchronous: wait until the server speaks TLS.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sqlx::PgConnection::connect(&verified).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL did not turn TLS on:\n{}",
            postgres.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let components = components_dir(&dir, &["guest_exam", "guest_attempt"]);
    let host = Host::launch(&dir, &components, &["--database", &verified])
        .unwrap_or_else(|failure| panic!("the host did not start on TLS PostgreSQL: {failure:?}"));
    let submission = json!({"user_uuid": Uuid::new_v4(), "exam_uuid": Uuid::new_v4()});
    let answer = host.http().post_json("/exams", &submission).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND pid <> pg_backend_pid() AND datname = 'postgres'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(
        encrypted >= 2,
        "the host's connections (its pool and its writer) use TLS: {encrypted}"
    );
    host.stop();

    // verify-full without the CA that signed the server's certificate: refused at start.
    let refused_dir = TempDir::new("tls-pg-refused");
    let components = components_dir(&refused_dir, &["guest_attempt"]);
    let unverified = format!("{}?sslmode=verify-full", postgres.url());
    let failure = Host::launch(&refused_dir, &components, &["--database", &unverified])
        .err()
        .expect("the host started though it cannot verify PostgreSQL's certificate");
    assert!(
        failure.stderr.contains("cannot open the database")
            && failure.stderr.contains("certificate"),
        "{}",
        failure.stderr
    );
}

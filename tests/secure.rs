//! Tenants on the bus and secured connections, against a real nats-server:
//! - deploy/nats-tenants.conf: each desk's user may subscribe to its own prediction subjects
//!   only (the server refuses another's with a permissions violation), while the service,
//!   logged in as its own user, reads features and publishes predictions;
//! - the service over TLS (certificates made by this test with openssl) with a user and
//!   password: it connects and predicts; with a CA that did not sign the server's
//!   certificate, or a wrong password, it never connects and readiness says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use augur_service::pb;
use futures::StreamExt;
use prost::Message;

const PASSWORDS: [(&str, &str); 4] = [
    ("$AUGUR_NATS_PASSWORD", "augur-pw"),
    ("$FEED_NATS_PASSWORD", "feed-pw"),
    ("$DESK_A_NATS_PASSWORD", "desk-a-pw"),
    ("$DESK_B_NATS_PASSWORD", "desk-b-pw"),
];

/// deploy/nats-tenants.conf with its passwords filled in, plus `extra` (a tls block).
fn tenants_conf(dir: &Path, extra: &str) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(common::root().join("deploy/nats-tenants.conf")).unwrap();
    for (var, pw) in PASSWORDS {
        assert!(text.contains(var), "{var}");
        text = text.replace(var, &format!("\"{pw}\""));
    }
    let p = dir.join("nats.conf");
    std::fs::write(&p, format!("{text}\n{extra}\n")).unwrap();
    p
}

/// A connection as `user`, recording the server's errors (permission violations).
async fn login(
    url: &str,
    user: &str,
    pw: &str,
    ca: Option<&Path>,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = errors.clone();
    let mut o = async_nats::ConnectOptions::new()
        .user_and_password(user.into(), pw.into())
        .event_callback(move |ev| {
            let e = e.clone();
            async move {
                if let async_nats::Event::ServerError(err) = ev {
                    e.lock().unwrap().push(err.to_string());
                }
            }
        });
    if let Some(ca) = ca {
        o = o.add_root_certificates(ca.to_path_buf()).require_tls(true);
    }
    (o.connect(url).await.unwrap(), errors)
}

/// 40 real vectors of `symbol`, stamped now, published as the feed.
async fn publish(feed: &async_nats::Client, symbol: &str) {
    let vs: Vec<pb::FeatureVector> = common::real_vectors()
        .into_iter()
        .filter(|v| v.symbol == symbol)
        .take(40)
        .collect();
    assert_eq!(vs.len(), 40, "{symbol}");
    for v in vs {
        let now = augur_actors::clock::unix_ns();
        let v = pb::FeatureVector {
            event_time_ms: now / 1_000_000,
            published_at_ns: now,
            ..v
        };
        let subject = format!("features.{}.{}", v.timeframe, v.symbol);
        let body = pb::FeatureVectorBatch { vectors: vec![v] }.encode_to_vec();
        feed.publish(subject, body.into()).await.unwrap();
    }
    feed.flush().await.unwrap();
}

fn service(url: &str, user: &str, pw: &str, ca: Option<&Path>) -> common::Service {
    let mut cfg = common::config(url);
    cfg.nats.user = user.into();
    cfg.nats.password = pw.into();
    if let Some(ca) = ca {
        cfg.nats.tls_ca_file = ca.display().to_string();
        cfg.nats.tls_required = true;
    }
    common::Service::start(cfg)
}

#[test]
fn test_a_desk_reads_its_own_prediction_subjects_and_is_refused_another_desks() {
    let dir = tempfile::tempdir().unwrap();
    let nats = common::NatsServer::start_with_config(tenants_conf(dir.path(), ""));
    let url = nats.url();
    let svc = service(&url, "augur", "augur-pw", None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (desk_a, a_errors) = login(&url, "desk_a", "desk-a-pw", None).await;
        let (desk_b, _) = login(&url, "desk_b", "desk-b-pw", None).await;
        let mut mine = desk_a.subscribe("predictions.*.AAPL").await.unwrap();
        let mut not_mine = desk_a.subscribe("predictions.*.EURUSD").await.unwrap();
        let mut b_mine = desk_b.subscribe("predictions.*.EURUSD").await.unwrap();
        desk_a.flush().await.unwrap();
        desk_b.flush().await.unwrap();
        let (feed, _) = login(&url, "feed", "feed-pw", None).await;
        publish(&feed, "AAPL").await;
        publish(&feed, "EURUSD").await;
        let within = Duration::from_secs(30);
        let a = tokio::time::timeout(within, mine.next())
            .await
            .expect("desk A's prediction")
            .unwrap();
        assert!(a.subject.as_str().ends_with(".AAPL"));
        let b = tokio::time::timeout(within, b_mine.next())
            .await
            .expect("desk B's prediction")
            .unwrap();
        assert!(b.subject.as_str().ends_with(".EURUSD"));
        // Desk A's subscription to desk B's subject got nothing: the server refused it.
        let leaked = tokio::time::timeout(Duration::from_millis(500), not_mine.next()).await;
        assert!(!matches!(leaked, Ok(Some(_))), "desk A read desk B's prediction");
        let errors = a_errors.lock().unwrap().clone();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("Permissions Violation") && e.contains("EURUSD")),
            "{errors:?}"
        );
        // A desk may not publish predictions of its own.
        let (desk_a2, errs2) = login(&url, "desk_a", "desk-a-pw", None).await;
        desk_a2
            .publish("predictions.1d.AAPL", "forged".into())
            .await
            .unwrap();
        desk_a2.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            errs2
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Permissions Violation"))
        );
    });
    svc.stop();
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and a second CA that signed nothing.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=augur-test-ca",
    ]);
    openssl(dir, &ca);
    let mut other = vec!["req", "-x509"];
    other.extend(ec);
    other.extend([
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-days",
        "2",
        "-subj",
        "/CN=other-ca",
    ]);
    openssl(dir, &other);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

fn ready(addr: &str) -> (u16, serde_json::Value) {
    common::get_json(addr, "/health/ready")
}

#[test]
fn test_the_service_connects_over_tls_with_a_password_and_not_with_a_wrong_ca_or_password() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let d = dir.path().display();
    let tls =
        format!("tls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server.key\"\n  timeout: 2\n}}");
    let nats = common::NatsServer::start_with_config(tenants_conf(dir.path(), &tls));
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let ca = dir.path().join("ca.pem");

    let svc = service(&url, "augur", "augur-pw", Some(&ca));
    let http = svc.http();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(&http).0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ready(&http).0, 200, "{}", ready(&http).1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (desk_a, _) = login(&url, "desk_a", "desk-a-pw", Some(&ca)).await;
        let mut sub = desk_a.subscribe("predictions.*.AAPL").await.unwrap();
        desk_a.flush().await.unwrap();
        let (feed, _) = login(&url, "feed", "feed-pw", Some(&ca)).await;
        publish(&feed, "AAPL").await;
        let p = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a prediction over TLS");
        assert!(p.is_some());
    });
    svc.stop();

    // A CA that did not sign the server's certificate, and a wrong password: never connected.
    for (ca, pw) in [(dir.path().join("other.pem"), "augur-pw"), (ca.clone(), "wrong")] {
        let svc = service(&url, "augur", pw, Some(&ca));
        std::thread::sleep(Duration::from_secs(2));
        let (status, body) = ready(&svc.http());
        assert_eq!(status, 503, "{pw}: {body}");
        assert!(body.to_string().contains("nats is not connected"), "{body}");
        svc.stop();
    }
}

/// curl's status for `url` trusting `ca` ("000" when the TLS handshake fails).
fn curl(url: &str, ca: &Path) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// tritonclient's gRPC client over TLS trusting `ca`: whether the server is live.
fn triton_grpc_live(addr: &str, ca: &Path) -> String {
    let script = format!(
        "import tritonclient.grpc as g\ntry:\n    c = g.InferenceServerClient('{addr}', ssl=True, root_certificates='{}')\n    print(c.is_server_live(client_timeout=5))\nexcept Exception as e:\n    print('error', e)\n",
        ca.display()
    );
    let out = Command::new(common::root().join(".venv/bin/python"))
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// HTTPS and gRPC over TLS with the certificate from the config, checked by curl and by
/// tritonclient; a renewed certificate (another CA's) is served without a restart.
#[test]
fn test_https_and_grpc_tls_serve_the_configured_certificate_and_reload_a_renewed_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certificates(d);
    // The renewal: a certificate for the same names, signed by the other CA.
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server2.key",
            "-out",
            "server2.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server2.csr",
            "-CA",
            "other.pem",
            "-CAkey",
            "other.key",
            "-CAcreateserial",
            "-out",
            "server2.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let (cert, key) = (d.join("live.pem"), d.join("live.key"));
    std::fs::copy(d.join("server.pem"), &cert).unwrap();
    std::fs::copy(d.join("server.key"), &key).unwrap();
    let nats = common::NatsServer::start();
    let mut cfg = common::config(&nats.url());
    for (c, k) in [
        (&mut cfg.http.tls_cert_file, &mut cfg.http.tls_key_file),
        (&mut cfg.grpc.tls_cert_file, &mut cfg.grpc.tls_key_file),
    ] {
        *c = cert.display().to_string();
        *k = key.display().to_string();
    }
    let svc = common::Service::start(cfg);
    let https = format!(
        "https://127.0.0.1:{}/v2/health/live",
        svc.ready.http.unwrap().port()
    );
    let grpc = format!("127.0.0.1:{}", svc.ready.grpc.unwrap().port());
    let (ca, other) = (d.join("ca.pem"), d.join("other.pem"));
    assert_eq!(curl(&https, &ca), "200");
    assert_eq!(
        curl(&https, &other),
        "000",
        "a CA that signed nothing here is not trusted"
    );
    assert_eq!(triton_grpc_live(&grpc, &ca), "True");
    assert!(triton_grpc_live(&grpc, &other).starts_with("error"));
    // Plain HTTP on the TLS port gets no answer.
    let plain = format!(
        "http://127.0.0.1:{}/v2/health/live",
        svc.ready.http.unwrap().port()
    );
    assert_ne!(curl(&plain, &ca), "200");

    // Renewed in place (each file replaced whole): the next handshakes get the new one.
    for (from, to) in [("server2.key", &key), ("server2.pem", &cert)] {
        let tmp = d.join("tmp");
        std::fs::copy(d.join(from), &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(&https, &other) != "200" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(curl(&https, &other), "200");
    assert_eq!(curl(&https, &ca), "000");
    let deadline = Instant::now() + Duration::from_secs(10);
    while triton_grpc_live(&grpc, &other) != "True" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(triton_grpc_live(&grpc, &other), "True");
    svc.stop();
}

#[test]
fn test_a_missing_or_mismatched_certificate_fails_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let mut cfg = common::config("nats://127.0.0.1:4222");
    cfg.http.tls_cert_file = dir.path().join("server.pem").display().to_string();
    cfg.http.tls_key_file = dir.path().join("other.key").display().to_string();
    cfg.grpc.tls_cert_file = dir.path().join("nope.pem").display().to_string();
    let errs = cfg.problems();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("http TLS") && e.contains("KeyMismatch")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("grpc.tls_cert_file and grpc.tls_key_file go together")),
        "{errs:?}"
    );
}

//! Helpers for tests against real servers: each test starts its own nats-server (the Debian
//! package, installed by scripts/bootstrap.sh) on a free loopback port and stops it on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use augur_service::config::Config;

pub mod cluster;
pub mod kafka;
pub mod proxy;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(bin: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
    {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("{bin} not found: run scripts/bootstrap.sh");
}

pub fn wait_port(port: u16, up: bool, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "port {port} did not become {}",
        if up { "reachable" } else { "free" }
    );
}

/// A real nats-server on loopback, killed when dropped.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    /// JetStream's store, when started with JetStream.
    js: Option<tempfile::TempDir>,
    /// A configuration file (`-c`), when started with one.
    conf: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = free_port();
        let mut s = NatsServer {
            port,
            child: None,
            js: None,
            conf: None,
        };
        s.restart();
        s
    }

    /// With a configuration file (its port overridden), e.g. deploy/nats.conf's mapping.
    pub fn start_with_config(conf: PathBuf) -> NatsServer {
        let port = free_port();
        let mut s = NatsServer {
            port,
            child: None,
            js: Some(tempfile::tempdir().unwrap()),
            conf: Some(conf),
        };
        s.restart();
        s
    }

    /// With JetStream enabled (`-js`), its store in a temporary folder.
    pub fn start_jetstream() -> NatsServer {
        let port = free_port();
        let mut s = NatsServer {
            port,
            child: None,
            js: Some(tempfile::tempdir().unwrap()),
            conf: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new(find("nats-server"));
        if let Some(conf) = &self.conf {
            cmd.arg("-c").arg(conf);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(dir) = &self.js {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped config with absolute model paths and the given NATS URL.
pub fn config(nats_url: &str) -> Config {
    let mut cfg = Config::default();
    cfg.http.bind = "127.0.0.1:0".into();
    cfg.grpc.bind = "127.0.0.1:0".into();
    cfg.service.models_dir = root().join("models");
    cfg.service.feature_sets_dir = root().join("models/feature_sets");
    cfg.nats.url = nats_url.to_string();
    cfg
}

/// A minimal HTTP/1.1 client for tests (Connection: close; handles chunked bodies).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    (status, body)
}

pub fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (s, b) = http(addr, "GET", path, &[], b"");
    (s, serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null))
}

/// `augur serve` in its own thread and actix system; stopped by `stop()`.
pub struct Service {
    pub ready: augur_service::service::Ready,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<augur_service::service::ServeReport>>>,
}

impl Service {
    pub fn start(cfg: Config) -> Service {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(augur_service::service::serve(
                cfg,
                async {
                    let _ = stop_rx.await;
                },
                None,
                Some(ready_tx),
            ))
        });
        let ready = ready_rx.blocking_recv().expect("service became ready");
        Service {
            ready,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn http(&self) -> String {
        self.ready.http.expect("http enabled").to_string()
    }

    pub fn stop(mut self) -> augur_service::service::ServeReport {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap().unwrap()
    }
}

/// Publishes the given vectors in order on features.<tf>.<symbol>, re-stamped, at `rate` per
/// second: the tools' [`Feed`](augur_tools::feed::Feed) with the vectors as one stream.
pub fn publish(url: &str, vectors: &[augur_service::pb::FeatureVector], rate: f64) {
    use augur_tools::feed::{Feed, FeedOptions, Pace};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let o = FeedOptions {
            nats_url: Some(url.to_string()),
            nats_prefix: "features".into(),
            kafka_brokers: None,
            kafka_topic: String::new(),
            symbols: 0,
            timeframes: Vec::new(),
            rate,
            count: 0,
            duration: None,
        };
        let mut feed = Feed::connect(vec![vectors.to_vec()], &o).await.unwrap();
        let pace = Pace {
            rate,
            count: vectors.len() as u64,
            ..Default::default()
        };
        let (_keep, mut stop) = tokio::sync::watch::channel(false);
        let sent = feed.send(&pace, &mut stop).await.unwrap();
        assert_eq!(sent, vectors.len() as u64);
    });
}

/// The committed real series, interleaved across streams.
pub fn real_vectors() -> Vec<augur_service::pb::FeatureVector> {
    let file = std::fs::read(root().join("models/data/replay/ta-v1.pb")).unwrap();
    augur_tools::publish::interleave(&file).unwrap()
}

/// A real Kafka-compatible broker (tansu, built by scripts/bootstrap.sh) on a free loopback
/// port; memory storage, or sqlite to survive a restart. Killed on drop.
pub struct Tansu {
    pub port: u16,
    /// The port clients are told to connect to (a proxy's), when not `port`.
    pub advertised: Option<u16>,
    storage: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start(persistent: bool) -> Tansu {
        Self::start_on(free_port(), persistent)
    }

    /// Not started: a port where a broker will be later.
    pub fn reserve(persistent: bool) -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let storage = if persistent {
            // tansu resolves the sqlite path against its working directory (the temp dir)
            "sqlite://kafka.db".to_string()
        } else {
            "memory://tansu/".to_string()
        };
        Tansu {
            port: free_port(),
            advertised: None,
            storage,
            child: None,
            _dir: dir,
        }
    }

    pub fn start_on(port: u16, persistent: bool) -> Tansu {
        let mut t = Self::reserve(persistent);
        t.port = port;
        t.restart();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let bin = [root().join(".tools/bin/tansu")]
            .into_iter()
            .chain(
                std::env::var("HOME")
                    .ok()
                    .map(|h| PathBuf::from(h).join(".cache/augur/tansu-0.6.0/bin/tansu")),
            )
            .find(|p| p.exists())
            .expect("tansu: run scripts/bootstrap.sh");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                &self.storage,
            ])
            .current_dir(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(20));
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the `augur` binary (`serve` with the shipped config, HTTP on a free port, `env` on
/// top) and waits for "augur ready"; its stderr lines come through the receiver.
pub fn spawn_ready(env: &[(&str, &str)]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_augur"));
    cmd.args(["serve", "--config", "config.toml"])
        .current_dir(root())
        .env("AUGUR_HTTP__BIND", "127.0.0.1:0")
        .env("AUGUR_GRPC__BIND", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("augur starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let start = std::time::Instant::now();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("service output");
        if line.contains("augur ready") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "not ready in 60 s");
    }
    (child, rx)
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Serves the model folder `dir` from its TorchScript file (the shipped torch members run on
/// ONNX Runtime, their TorchScript file named for CUDA): for tests that build a TorchScript
/// model of their own in its place.
pub fn serve_torchscript(dir: &std::path::Path) {
    let m = dir.join("manifest.toml");
    let text: String = std::fs::read_to_string(&m)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("torchscript_file"))
        .map(|l| match l {
            "kind = \"onnx\"" => "kind = \"torchscript\"\n".to_string(),
            "file = \"model.onnx\"" => "file = \"model.pt\"\n".to_string(),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&m, text).unwrap();
}

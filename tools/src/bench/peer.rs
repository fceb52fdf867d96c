//! The services under test, each run as its own process on the bench's nats-server: Augur
//! (`augur serve`) and the Python asyncio baseline (`bench/peers/python_asyncio`). The bench
//! times a start to its ready line, samples its CPU and memory, and stops it with SIGTERM.
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::procfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerKind {
    Augur,
    PythonAsyncio,
    /// Ray Serve over HTTP (bench/peers/ray_serve), for the HTTP scenario only: started by
    /// [`Peer::start_ray_serve`].
    RayServe,
}

impl PeerKind {
    pub fn parse(s: &str) -> Option<PeerKind> {
        match s {
            "augur" => Some(PeerKind::Augur),
            "python" | "python_asyncio" => Some(PeerKind::PythonAsyncio),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Augur => "augur",
            PeerKind::PythonAsyncio => "python_asyncio",
            PeerKind::RayServe => "ray_serve",
        }
    }
}

/// Where the peers' programs are.
#[derive(Debug, Clone)]
pub struct PeerPaths {
    pub augur_bin: PathBuf,
    pub config: PathBuf,
    pub python: PathBuf,
    pub python_peer: PathBuf,
    pub models: PathBuf,
    /// The wire contract as a FileDescriptorSet, for the Python peer's protobuf classes.
    pub descriptor_set: PathBuf,
    pub device: String,
    /// More environment for Augur (a scenario's own models folder, a token).
    pub env: Vec<(String, String)>,
}

/// A running peer.
pub struct Peer {
    pub kind: PeerKind,
    child: Child,
    pub start_to_ready: Duration,
    /// Augur's HTTP address (for /metrics).
    pub http: Option<String>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Peer {
    /// Starts the peer and waits (up to `timeout`) for its ready line; its output goes to `log`.
    pub fn start(
        kind: PeerKind,
        p: &PeerPaths,
        nats_url: &str,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Peer> {
        let mut cmd;
        let mut http = None;
        let marker;
        match kind {
            PeerKind::Augur => {
                let port = free_port()?;
                http = Some(format!("127.0.0.1:{port}"));
                cmd = Command::new(&p.augur_bin);
                cmd.arg("serve")
                    .arg("--config")
                    .arg(&p.config)
                    .env("AUGUR_NATS__URL", nats_url)
                    .env("AUGUR_HTTP__BIND", format!("127.0.0.1:{port}"))
                    .env("AUGUR_GRPC__BIND", "127.0.0.1:0")
                    .env("AUGUR_SERVICE__DEVICE", &p.device)
                    .env("AUGUR_KAFKA__ENABLED", "false")
                    .env("RUST_LOG", "info")
                    .envs(p.env.iter().map(|(k, v)| (k, v)));
                marker = "augur ready";
            }
            PeerKind::PythonAsyncio => {
                cmd = Command::new(&p.python);
                cmd.arg(&p.python_peer)
                    .arg("--nats")
                    .arg(nats_url)
                    .arg("--models")
                    .arg(&p.models)
                    .arg("--descriptor-set")
                    .arg(&p.descriptor_set)
                    .arg("--device")
                    .arg(&p.device)
                    .env("PYTHONUNBUFFERED", "1");
                marker = "ready";
            }
            PeerKind::RayServe => anyhow::bail!("Ray Serve is started by Peer::start_ray_serve"),
        }
        Self::spawn(kind, cmd, marker, http, log, timeout)
    }

    /// Starts the Ray Serve peer serving `model_dir` as `model` over HTTP on a free loopback
    /// port, and waits for its ready line (it starts a local Ray: allow half a minute).
    /// `ingress`: "proxy" (Ray Serve's HTTP proxy actor, its default) or "haproxy" (its
    /// high-throughput mode). Its own process group, so that a kill reaches every Ray process.
    pub fn start_ray_serve(
        p: &PeerPaths,
        script: &Path,
        model_dir: &Path,
        model: &str,
        ingress: &str,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Peer> {
        use std::os::unix::process::CommandExt as _;
        let port = free_port()?;
        let mut cmd = Command::new(&p.python);
        cmd.arg(script)
            .arg("--model-dir")
            .arg(model_dir)
            .args([
                "--model-name",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(["--ingress", ingress])
            .env("PYTHONUNBUFFERED", "1")
            .process_group(0);
        Self::spawn(
            PeerKind::RayServe,
            cmd,
            "ray_serve ready",
            Some(format!("127.0.0.1:{port}")),
            log,
            timeout,
        )
    }

    fn spawn(
        kind: PeerKind,
        mut cmd: Command,
        marker: &str,
        http: Option<String>,
        log: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Peer> {
        let mut logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", kind.name()))?;
        let (tx, rx) = mpsc::channel::<String>();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let ready = loop {
            let left = timeout.saturating_sub(started.elapsed());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let _ = writeln!(logf, "{line}");
                    if line.contains(marker) {
                        break started.elapsed();
                    }
                }
                Err(e) => {
                    terminate(&mut child, kind);
                    anyhow::bail!(
                        "{} did not get ready within {timeout:?} ({e}); see {}",
                        kind.name(),
                        log.display()
                    );
                }
            }
        };
        // Keep copying its output to the log for the rest of its life.
        std::thread::spawn(move || {
            for line in rx {
                let _ = writeln!(logf, "{line}");
            }
        });
        Ok(Peer {
            kind,
            child,
            start_to_ready: ready,
            http,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        procfs::cpu_seconds(self.pid())
    }

    pub fn rss(&self) -> Option<(u64, u64)> {
        procfs::rss_bytes(self.pid())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to `grace` for it to exit, then SIGKILL.
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                if self.kind == PeerKind::RayServe {
                    kill_group(self.pid());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.kind == PeerKind::RayServe {
            kill_group(self.pid());
        }
        self.child.kill().context("killing the peer")?;
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child, self.kind);
        }
    }
}

/// Ends a peer that is not stopped in order: SIGKILL, except Ray Serve, whose driver takes
/// its Ray processes down only on SIGTERM (up to 30 s, then SIGKILL to its process group).
fn terminate(child: &mut Child, kind: PeerKind) {
    if kind == PeerKind::RayServe {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                kill_group(child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(child.id());
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to what is left of a process group (Ray's processes, once its driver is gone).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// A metric's value summed over its label sets, from a Prometheus text page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// POSTs a JSON body with a bearer token; answers the status line's code and the body.
pub fn http_post(addr: &str, path: &str, token: &str, body: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "POST", path, Some(token), body)
}

/// One request with a bare HTTP/1.1 client (plain TCP, `Connection: close`): a JSON body and
/// an optional bearer token; answers the status line's code and the body (chunked or not).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(180)))?;
    let auth = token
        .filter(|t| !t.is_empty())
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The body of a chunked response.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (after.get(..n), after.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    out
}

/// GET http://addr/path with a bare HTTP/1.1 client; the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets_and_ignores_prefixes() {
        let page = "# TYPE x counter\nx{a=\"1\"} 2\nx{a=\"2\"} 3.5\nx_total 9\nx 1\n";
        assert_eq!(metric_sum(page, "x"), 6.5);
        assert_eq!(metric_sum(page, "x_total"), 9.0);
        assert_eq!(metric_sum(page, "y"), 0.0);
    }
}

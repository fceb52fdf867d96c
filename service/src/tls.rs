//! TLS for the HTTP and gRPC listeners (rustls with ring): a certificate chain and key from PEM
//! files, read at start-up (a bad pair stops the start with the reason) and read again when
//! either file changes (checked every [`RELOAD_EVERY`]), so a renewed certificate is served
//! without a restart. A bad pair on reload is logged and counted, and the one before it stays.
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often the certificate files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
pub use augur_actors::telemetry::TLS_RELOADS;

type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

/// The certificate a listener serves, replaced when its files change.
#[derive(Debug)]
pub struct Reloading {
    listener: &'static str,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: Mutex<Stamp>,
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let c = std::fs::metadata(cert).ok()?;
    let k = std::fs::metadata(key).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let ck = CertifiedKey::from_der(chain, key_der, &provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    Ok(ck)
}

impl Reloading {
    /// Reads the pair, or says why it cannot.
    pub fn load(listener: &'static str, cert: &str, key: &str) -> Result<Arc<Reloading>, String> {
        let (cert, key) = (PathBuf::from(cert), PathBuf::from(key));
        let s = stamp(&cert, &key);
        let ck = read_pair(&cert, &key).map_err(|e| format!("{listener} TLS: {e}"))?;
        Ok(Arc::new(Reloading {
            listener,
            cert,
            key,
            current: RwLock::new(Arc::new(ck)),
            stamp: Mutex::new(s),
        }))
    }

    /// Reads the pair again if a file changed; answers whether a new one is served.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.cert, &self.key);
        let Ok(mut last) = self.stamp.lock() else {
            return false;
        };
        if now == *last || now.is_none() {
            return false;
        }
        *last = now;
        match read_pair(&self.cert, &self.key) {
            Ok(ck) => {
                if let Ok(mut g) = self.current.write() {
                    *g = Arc::new(ck);
                }
                metrics::counter!(TLS_RELOADS, "listener" => self.listener, "result" => "ok").increment(1);
                tracing::info!(listener = self.listener, cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::counter!(TLS_RELOADS, "listener" => self.listener, "result" => "error").increment(1);
                tracing::error!(listener = self.listener, error = %e, "TLS certificate refused: the one before it stays");
                false
            }
        }
    }

    /// A server config that serves the current certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, String> {
        let mut c =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(c)
    }

    /// Checks the files every [`RELOAD_EVERY`] on the calling runtime, forever.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|g| g.clone())
    }
}

/// A TLS connection as the gRPC server takes it.
pub struct TlsConn(pub tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Handshakes in progress at most; a connection beyond it is closed at once.
pub const MAX_HANDSHAKES: usize = 256;

/// TLS connections accepted on `listener`: each handshake in a task of its own (a slow or
/// silent client holds up no other), at most 3 s and [`MAX_HANDSHAKES`] at once; failed
/// handshakes are logged at debug. The listener closes when the server stops taking them.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
) -> impl futures::Stream<Item = Result<TlsConn, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, most likely: wait instead of spinning (and logging).
                    tracing::warn!(error = %e, "gRPC accept");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "gRPC TLS: too many handshakes in progress, connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(Duration::from_secs(3), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = conn_tx.send(Ok(TlsConn(s))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

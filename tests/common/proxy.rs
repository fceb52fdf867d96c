//! A small TCP proxy for network faults between the service and a broker (no fault-proxy
//! package exists here): pass traffic, add latency, cut every connection (and refuse new
//! ones), or hold connections open while forwarding nothing (a half-open peer).
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` ("127.0.0.1:port").
    pub fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let p = Proxy {
            port,
            mode: Arc::new(AtomicU8::new(PASS)),
            latency_ms: Arc::default(),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (mode, latency, conns, stop) = (
            p.mode.clone(),
            p.latency_ms.clone(),
            p.conns.clone(),
            p.stop.clone(),
        );
        listener.set_nonblocking(true).expect("nonblocking listener");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if mode.load(Ordering::Relaxed) == CUT {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                for s in [&client, &upstream] {
                    if let (Ok(c), Ok(mut g)) = (s.try_clone(), conns.lock()) {
                        g.push(c);
                    }
                }
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let (mode, latency) = (mode.clone(), latency.clone());
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            match mode.load(Ordering::Relaxed) {
                                BLACKHOLE => continue,
                                CUT => break,
                                _ => {}
                            }
                            let ms = latency.load(Ordering::Relaxed);
                            if ms > 0 {
                                std::thread::sleep(Duration::from_millis(ms));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        p
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Forwards everything again (new connections too).
    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::Relaxed);
    }

    /// Ends a fault: connections that lost bytes are closed (the client reconnects), and new
    /// ones pass.
    pub fn heal(&self) {
        self.cut();
        self.pass();
    }

    /// Adds `ms` before every forwarded chunk.
    pub fn latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Closes every connection and refuses new ones until `pass`.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::Relaxed);
        if let Ok(mut g) = self.conns.lock() {
            for s in g.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Keeps connections open but forwards nothing (a peer that stopped answering).
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

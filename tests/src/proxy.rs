//! A TCP proxy that can cut one client off from a server while the server stays up for others.
//!
//! It runs on its own thread and runtime so it works from sync and async tests alike. `cut()`
//! closes every open connection and refuses new ones until `restore()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy from a free loopback port to `target`.
pub struct TcpProxy {
    listen: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Starts a proxy to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy listener");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listen = std_listener.local_addr().expect("local addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, gen_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let cut2 = cut.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                let accept = async {
                    loop {
                        let Ok((inbound, _)) = listener.accept().await else {
                            continue;
                        };
                        if cut2.load(Ordering::SeqCst) {
                            drop(inbound);
                            continue;
                        }
                        let mut gen_rx = gen_rx.clone();
                        gen_rx.mark_unchanged();
                        tokio::spawn(async move {
                            let Ok(outbound) = TcpStream::connect(target).await else {
                                return;
                            };
                            let (mut a, mut b) = (inbound, outbound);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                                _ = gen_rx.changed() => {}
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
        });
        Self {
            listen,
            cut,
            generation,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The address clients should dial.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// `http://<addr>` for use as an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Closes all open connections and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

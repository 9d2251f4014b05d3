//! A TCP proxy in front of the hub that fails the way networks do: it cuts every open
//! connection at once, refuses new ones for a while, or keeps connections open while
//! forwarding nothing more (half-open). Its upstream address stays fixed, so a hub restarted
//! on the same port is reached again without the clients knowing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Debug)]
struct Link {
    /// Set: bytes from the hub are read and thrown away instead of forwarded.
    stalled: Arc<AtomicBool>,
    /// Both pumps; aborting them drops both sockets.
    pumps: [JoinHandle<()>; 2],
}

#[derive(Debug, Default)]
struct Shared {
    links: Mutex<Vec<Link>>,
    /// Set: new connections are accepted and dropped at once.
    down: AtomicBool,
    cuts: AtomicU64,
}

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(hub) = TcpStream::connect(upstream).await else { continue };
                let _ = (client.set_nodelay(true), hub.set_nodelay(true));
                let (client_r, client_w) = client.into_split();
                let (hub_r, hub_w) = hub.into_split();
                let stalled = Arc::new(AtomicBool::new(false));
                let up = tokio::spawn(pump(client_r, hub_w, Arc::new(AtomicBool::new(false))));
                let down = tokio::spawn(pump(hub_r, client_w, stalled.clone()));
                let mut links = s.links.lock().unwrap();
                links.retain(|l| !l.pumps.iter().all(JoinHandle::is_finished));
                links.push(Link { stalled, pumps: [up, down] });
            }
        });
        Self { addr, shared, accept }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Open connections stay open but nothing more reaches the client.
    pub fn stall_all(&self) {
        for link in self.shared.links.lock().unwrap().iter() {
            link.stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Drops every open connection; returns how many there were.
    pub fn cut_all(&self) -> usize {
        let links: Vec<_> = self.shared.links.lock().unwrap().drain(..).collect();
        for l in &links {
            l.pumps.iter().for_each(JoinHandle::abort);
        }
        self.shared.cuts.fetch_add(links.len() as u64, Ordering::Relaxed);
        links.len()
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Relaxed)
    }

    /// While down, new connections are dropped on accept.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, stalled: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

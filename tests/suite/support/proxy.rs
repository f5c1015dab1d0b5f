//! A TCP proxy on 127.0.0.1 that adds latency to, resets, swallows or holds the connections
//! it forwards: network faults between goremotecache and its store, without touching either.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward, adding this much to every round trip (half each way).
    Delay(Duration),
    /// Accept, then close at once.
    Reset,
    /// Accept, read everything, answer nothing.
    Swallow,
    /// Accept and hold the connection, unanswered, until the mode changes; then do with it
    /// what the new mode says (uploads kept pending for as long as a test needs).
    Hold,
}

pub struct Proxy {
    pub endpoint: String,
    mode: watch::Sender<Mode>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts a proxy to `target` in `mode`.
    pub fn start(target: &str, mode: Mode) -> Self {
        let target: SocketAddr = target
            .trim_start_matches("http://")
            .parse()
            .expect("an http://host:port endpoint");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, modes) = watch::channel(mode);
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut modes = modes.clone();
                tokio::spawn(async move {
                    let mode = match modes.wait_for(|mode| *mode != Mode::Hold).await {
                        Ok(mode) => *mode,
                        Err(_) => return,
                    };
                    handle(client, target, mode).await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            mode,
            runtime: Some(runtime),
        }
    }

    /// Changes what happens to connections made from now on, and to those held.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(mut client: TcpStream, target: SocketAddr, mode: Mode) {
    let delay = match mode {
        Mode::Reset | Mode::Hold => return,
        Mode::Swallow => {
            let mut sink = vec![0u8; 64 * 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Mode::Delay(delay) => delay,
    };
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let one_way = delay / 2;
    tokio::spawn(pump(client_read, server_write, one_way));
    tokio::spawn(pump(server_read, client_write, one_way));
}

/// Copies one direction, delivering each piece `delay` after it was read (pieces keep
/// flowing meanwhile, as on a long link).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

//! Listening: the accept loop ([`run`], and [`serve_app`] for any router) with its bound on
//! connections, TLS ([`tls_acceptor`]),
//! and the graceful stop: on the shutdown signal no new connection is taken and the requests
//! in flight get [`DRAIN`] to finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::connection::{self, WriteDeadline};
use super::routes::router;
use super::state::ServerState;
use crate::config::ServeTimeouts;

/// A TLS handshake must be complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Serves `listener` until `shutdown` completes, then finishes the requests in flight (for at
/// most [`DRAIN`]). At most `max_connections` connections are served at once; more are closed
/// at once. Each connection is bounded in time by the state's
/// [`ServeTimeouts`](crate::config::ServeTimeouts).
pub async fn run(
    listener: TcpListener,
    state: Arc<ServerState>,
    max_connections: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits {
        max_connections,
        timeouts: state.timeouts,
        drain: DRAIN,
        loopback_only: false,
    };
    serve_app(listener, router(state), limits, tls, shutdown).await;
}

/// The bounds of an accept loop ([`serve_app`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// The time bounds of each connection.
    pub timeouts: ServeTimeouts,
    /// How long the requests in flight get once the shutdown completes.
    pub drain: Duration,
    /// Close a connection from any address but loopback unanswered (the daemon's module
    /// proxy, which has no tokens).
    pub loopback_only: bool,
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then gives the
/// requests in flight `limits.drain`: the accept loop of `serve` and of the daemon's module
/// proxy.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let timeouts = limits.timeouts;
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((_, peer)) if limits.loopback_only && !peer.ip().is_loopback() => {
                tracing::warn!("refused a connection from {peer}: loopback only");
                continue;
            }
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!("accepting a connection failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Under TLS too, so that the handshake's writes are bounded as well.
        let stream = WriteDeadline::new(stream, timeouts.write);
        let service = TowerToHyperService::new(app.clone());
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            match tls {
                None => connection::serve(stream, service, timeouts.idle, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection::serve(stream, service, timeouts.idle, stop).await
                        }
                        Ok(Err(err)) => tracing::debug!("TLS handshake failed: {err}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "requests still in flight after {}s were cut off",
            limits.drain.as_secs()
        );
    }
}

/// Why the certificate or the key of `--tls-cert` and `--tls-key` cannot be used: the file
/// and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The TLS configuration of `--tls-cert` and `--tls-key`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    crate::store::install_crypto_provider();
    let tls_error = |what: &std::path::Path, err: &dyn std::fmt::Display| {
        TlsError(format!("{}: {err}", what.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|err| tls_error(cert, &err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| tls_error(cert, &err))?;
    if certs.is_empty() {
        return Err(tls_error(cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| tls_error(key, &err))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|err| tls_error(cert, &err))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Completes on SIGTERM or Ctrl-C.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("goremotecache: stopping: finishing the requests in flight");
}

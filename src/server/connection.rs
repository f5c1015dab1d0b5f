//! One accepted connection of `goremotecache serve`, and the time bounds on it that hyper does
//! not keep itself.
//!
//! Every direction of a connection is bounded in time, so that no client, with a token or
//! without, holds a connection slot (or a `--max-in-flight` slot, through an answer it does
//! not read) for longer than the bounds:
//!
//! - **Waiting for a request** (a new connection, or an idle keep-alive one after its last
//!   answer) until its headers are complete: `--idle-timeout`. This is hyper's
//!   `header_read_timeout`: hyper starts that timer whenever the connection is ready to read
//!   a request head, idle keep-alive waits included, and stops it once the head is parsed; a
//!   request whose handler works for a long time (a slow S3 put) is not cut by it, because
//!   hyper reads no next head while one is in flight. One timer, so a slowly sent head gets the
//!   same bound as an idle connection: both hold a slot for the same time.
//! - **Reading a request body**: `--body-timeout` between chunks, kept by the handlers (a body
//!   is read only by the handler that wants it; one the handler leaves unread is not drained
//!   by hyper, which closes the connection after the answer instead).
//! - **Writing an answer**: `--write-timeout`, kept here by [`WriteDeadline`] around the raw
//!   stream (under TLS, so the handshake's writes are bounded too): a write, flush or shutdown
//!   that makes no progress for that long fails, hyper ends the connection, and the answer's
//!   body is dropped, which frees whatever slot it held.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// A stream whose writes fail once they have made no progress for a while: a client that
/// stops reading its answers is cut off instead of holding the connection forever.
///
/// Only time spent *pending* counts: a write that completes, even a short one, starts the
/// clock again, so a slow reader that keeps reading is never cut. Reads pass through.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed at the first pending write after progress; fires `timeout` later.
    stall: Pin<Box<Sleep>>,
    armed: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stall: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }

    /// Runs one write-side operation of the inner stream under the deadline.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        if let Poll::Ready(done) = op(Pin::new(&mut self.inner), cx) {
            self.armed = false;
            return Poll::Ready(done);
        }
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.timeout;
            self.stall.as_mut().reset(deadline);
        }
        // Polling the timer registers this task, so it is woken to fail the write even if the
        // socket never becomes writable again.
        match self.stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of its answer for {}",
                    humantime::format_duration(self.timeout)
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .bounded(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .bounded(cx, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().bounded(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .bounded(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// Serves HTTP/1.1 on one connection until it ends, or until `stop` says to finish. A
/// request's headers must be complete within `idle_timeout` of the connection being ready
/// for it (see the module's notes); a write stall ends the connection through `stream`.
pub async fn serve<S>(
    stream: S,
    service: TowerToHyperService<Router>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = ended {
        tracing::debug!("connection ended: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(100));
        let err = stream.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_not_cut() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match far.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got += n,
                }
            }
        });
        // Each read comes well within the timeout, and the whole write takes longer than it.
        let mut stream = WriteDeadline::new(near, Duration::from_secs(1));
        stream.write_all(&[1u8; 12_800]).await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        assert_eq!(reader.await.unwrap(), 12_800);
    }
}

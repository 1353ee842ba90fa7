//! A connection whose writes make no progress for too long fails: how a server drops a
//! client that stopped reading (an SSE browser tab frozen in the background, a proxy that
//! stopped draining) instead of holding its buffers for ever.
//!
//! The timer exists only while a write is blocked, so an idle or flowing connection costs
//! one pointer for it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The error a stalled write fails with (inside an [`io::Error`] of kind `TimedOut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled(pub Duration);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer accepted no data for {:?}", self.0)
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// Whether `error`, or an error it was caused by, is a stalled write.
    pub fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            let inner = e
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            if e.is::<Stalled>() || inner.is_some_and(|i| i.is::<Stalled>()) {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// Wraps an I/O stream: a write (or flush) that stays pending for `limit` fails with
/// [`io::ErrorKind::TimedOut`]; any progress restarts the clock.
pub struct WriteStall<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, limit: Duration) -> WriteStall<S> {
        WriteStall {
            inner,
            limit,
            blocked: None,
        }
    }

    /// Called with the inner write's result: starts the clock on `Pending`, stops it on
    /// progress, and turns a pending write that outlived the limit into an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.blocked = None;
            return result;
        }
        let limit = self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled(limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_fails_the_write_after_the_limit() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteStall::new(near, Duration::from_secs(10));
        io.write_all(&[1; 64]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = io.write_all(&[2; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(Stalled::caused(&error));
        assert!(!Stalled::caused(&io::Error::other("reset")));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // What was written before is intact.
        let mut got = [0; 64];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1; 64]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (near, mut far) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = [0; 16];
            while total < 160 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                total += far.read(&mut chunk).await.unwrap();
            }
            total
        });
        let mut io = WriteStall::new(near, Duration::from_secs(10));
        // Ten stalls of 6 s each: 60 s in all, but never 10 s without progress.
        io.write_all(&[7; 160]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 160);
    }
}

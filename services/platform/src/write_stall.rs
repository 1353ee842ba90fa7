//! A connection whose writes make too little progress for too long fails: how a server
//! drops a client that stopped reading (an SSE browser tab frozen in the background, a proxy
//! that stopped draining), or that reads only a trickle to hold a connection open at no
//! cost to itself, instead of holding its buffers for ever.
//!
//! The timer exists only while the socket is full (a write pending or only partly taken),
//! so an idle or flowing connection costs one pointer for it.

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

/// Bytes a peer must take within the limit, once the socket is full, to keep the
/// connection: 16 KiB per 10 s is 1.6 KB/s, far below any real reader.
pub const MIN_PROGRESS: usize = 16 * 1024;

/// Wraps an I/O stream: once the socket is full (a write pending, or only partly taken), the
/// peer must take [`MIN_PROGRESS`] bytes within `limit`, or the write (or flush) fails with
/// [`io::ErrorKind::TimedOut`]. A write taken whole (the socket has room again) stops the
/// clock.
pub struct WriteStall<S> {
    inner: S,
    limit: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
    /// Bytes taken since the clock started.
    progress: usize,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, limit: Duration) -> WriteStall<S> {
        WriteStall {
            inner,
            limit,
            blocked: None,
            progress: 0,
        }
    }

    /// Called with the inner write's result and the bytes offered: a write taken whole
    /// stops the clock; a partial one counts towards [`MIN_PROGRESS`] (which stops it);
    /// `Pending` starts it, and fails once it outlived the limit.
    fn watch_write(
        &mut self,
        cx: &mut Context<'_>,
        offered: usize,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match &result {
            Poll::Ready(Ok(n)) if *n < offered => {
                self.progress += n;
                if self.progress >= MIN_PROGRESS {
                    self.blocked = None;
                    self.progress = 0;
                } else if self.blocked.is_none() {
                    self.blocked = Some(Box::pin(tokio::time::sleep(self.limit)));
                }
                result
            }
            Poll::Ready(_) => {
                self.blocked = None;
                self.progress = 0;
                result
            }
            Poll::Pending => self.watch(cx, result),
        }
    }

    /// Called with a pending (or finished) operation's result: starts the clock on
    /// `Pending` and turns a wait that outlived the limit into an error; a finished flush
    /// stops it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.blocked = None;
            self.progress = 0;
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
        self.watch_write(cx, buf.len(), result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let offered = bufs.iter().map(|b| b.len()).sum();
        self.watch_write(cx, offered, result)
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

    /// A reader taking `per_read` bytes every 6 s from a 16 KiB socket buffer, while
    /// `total` bytes are written: what the writer saw.
    async fn reading_every_6s(per_read: usize, total: usize) -> io::Result<()> {
        let (near, mut far) = tokio::io::duplex(16 * 1024);
        tokio::spawn(async move {
            let mut chunk = vec![0; per_read];
            loop {
                tokio::time::sleep(Duration::from_secs(6)).await;
                if far.read_exact(&mut chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut io = WriteStall::new(near, Duration::from_secs(10));
        io.write_all(&vec![7; total]).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        // 16 KiB every 6 s: ten stalls, a minute in all, never under the minimum.
        reading_every_6s(MIN_PROGRESS, 11 * MIN_PROGRESS)
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_takes_only_a_trickle_is_cut_off() {
        let started = tokio::time::Instant::now();
        let error = reading_every_6s(64, 4 * MIN_PROGRESS).await.unwrap_err();
        assert!(Stalled::caused(&error));
        assert!(
            started.elapsed() <= Duration::from_secs(12),
            "cut within about the limit: {:?}",
            started.elapsed()
        );
    }
}

//! Fewer, larger socket writes for streamed results.
//!
//! The HTTP/2 layer (h2) writes each DATA frame of a large payload with a
//! system call of its own and asks the socket to flush after it. A client
//! that advertises HTTP/2's default 16 KiB frames (gRPC-Go, and so the ADBC
//! Flight SQL driver, cannot advertise more) therefore costs the server
//! one `writev` per 16 KiB of Arrow data. [`CoalescedWrites`] gathers those
//! frames in a buffer of its own and writes them together.
//!
//! Invariants:
//! - Nothing stays buffered once the connection has nothing more to send.
//!   A flush right after a whole 16 KiB frame was accepted is deferred by
//!   one poll of the connection's task (the task is woken at once); the
//!   next flush, the next read, or a full buffer writes everything out.
//!   h2 reads and flushes on every poll of a connection, and a TLS
//!   handshake reads after its flush, so the deferred bytes go out on the
//!   very next poll. A flush after a shorter write (the end of a burst)
//!   writes at once.
//! - Only writes smaller than [`SMALL_WRITE_BYTES`] are gathered. A larger
//!   one (a frame for a client that advertises large frames) goes to the
//!   socket directly, without a copy, after what is buffered.
//! - Reads, the connection's addresses and shutdown pass through; shutdown
//!   writes out what is buffered first.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// How many bytes are gathered before they are written: 16 frames of
/// HTTP/2's default size.
pub const COALESCE_BYTES: usize = 256 * 1024;

/// HTTP/2's default frame size: h2 cuts a payload into frames of the
/// peer's maximum size, so a write this large is most likely followed by
/// another, and a smaller one (a payload's last frame, a control frame)
/// ends a burst and is written out at once.
pub const FULL_FRAME_BYTES: usize = 16 * 1024;

/// Writes at least this large (a frame for a client that advertises large
/// frames) are not gathered.
pub const SMALL_WRITE_BYTES: usize = 64 * 1024;

/// A connection whose small writes are gathered into larger ones.
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
    /// Bytes were accepted since the last flush was asked for.
    fresh: bool,
    /// The last write accepted was a whole frame of HTTP/2's default size
    /// (or a TLS record of one), so more are likely to follow.
    last_full: bool,
}

impl<T> CoalescedWrites<T> {
    /// Wraps a connection.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            fresh: false,
            last_full: false,
        }
    }

    /// The number of bytes accepted and not yet written to the socket.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything buffered to the socket.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies `bufs` whole into the buffer.
    fn accept(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(COALESCE_BYTES);
        }
        let mut taken = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            taken += b.len();
        }
        self.fresh = true;
        self.last_full = taken >= FULL_FRAME_BYTES;
        taken
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if len >= SMALL_WRITE_BYTES {
            // A large frame: what is buffered goes first, then the frame
            // itself, without a copy.
            std::task::ready!(self.poll_drain(cx))?;
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.buf.len() + len > COALESCE_BYTES {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(self.accept(bufs)))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fresh && this.last_full && this.buf.len() < COALESCE_BYTES {
            // More frames may follow within this poll of the connection;
            // the next flush writes them all. Wake the task so that there
            // is a next flush even if nothing else happens.
            this.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        this.fresh = false;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.fresh = false;
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The peer may be waiting for what is buffered before it answers
        // (a TLS handshake flushes once, then only reads).
        if this.buffered() > 0
            && let Poll::Ready(Err(e)) = this.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for CoalescedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the "socket".
    #[derive(Default)]
    struct Counting {
        data: Vec<u8>,
        writes: usize,
        flushes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.data.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frame(i: usize) -> Vec<u8> {
        vec![(i % 251) as u8; 16 * 1024]
    }

    #[tokio::test]
    async fn frames_flushed_one_by_one_reach_the_socket_together_and_in_order() {
        let mut io = CoalescedWrites::new(Counting::default());
        let mut expected = Vec::new();
        for i in 0..64 {
            // As h2 does: a frame, then a flush.
            io.write_all(&frame(i)).await.unwrap();
            io.flush().await.unwrap();
            expected.extend(frame(i));
        }
        // The connection's next poll flushes again with nothing new.
        io.flush().await.unwrap();
        assert_eq!(io.buffered(), 0);
        assert_eq!(io.inner.data, expected);
        // 64 frames of 16 KiB in 256 KiB writes: 4, not 64.
        assert_eq!(io.inner.writes, 4, "writes: {}", io.inner.writes);
    }

    #[tokio::test]
    async fn a_deferred_flush_wakes_the_task_and_the_next_one_writes() {
        let mut io = CoalescedWrites::new(Counting::default());
        io.write_all(&frame(1)).await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(
            io.inner.writes, 0,
            "a flush after a whole frame is deferred"
        );
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(io.inner.data, frame(1));
        assert_eq!(io.buffered(), 0);
    }

    #[tokio::test]
    async fn a_short_write_ends_a_burst_and_is_flushed_at_once() {
        let mut io = CoalescedWrites::new(Counting::default());
        io.write_all(&frame(1)).await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"last frame of a payload").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.buffered(), 0);
        assert_eq!(io.inner.writes, 1, "both frames in one write");
        assert_eq!(io.inner.data.len(), frame(1).len() + 23);
    }

    #[tokio::test]
    async fn a_large_write_goes_straight_through_after_what_is_buffered() {
        let mut io = CoalescedWrites::new(Counting::default());
        io.write_all(b"head").await.unwrap();
        let big = vec![7u8; SMALL_WRITE_BYTES];
        let n = io.write(&big).await.unwrap();
        assert_eq!(n, big.len());
        assert_eq!(io.buffered(), 0);
        assert_eq!(io.inner.writes, 2);
        assert_eq!(&io.inner.data[..4], b"head");
        assert_eq!(io.inner.data.len(), 4 + big.len());
    }

    #[tokio::test]
    async fn shutdown_writes_out_what_is_buffered() {
        let mut io = CoalescedWrites::new(Counting::default());
        io.write_all(b"last frame").await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(io.inner.data, b"last frame");
    }

    /// Both ends of a loopback TCP connection: (accepted, connecting).
    async fn connected() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        (accepted.unwrap().0, client.unwrap())
    }

    #[tokio::test]
    async fn a_read_after_a_deferred_flush_sends_what_is_buffered() {
        // As a TLS handshake does: write, flush once, then wait for the
        // peer's answer, which it sends only after reading ours.
        let (socket, mut client) = connected().await;
        let server = tokio::spawn(async move {
            let mut io = CoalescedWrites::new(socket);
            io.write_all(&frame(0)).await.unwrap();
            io.flush().await.unwrap();
            let mut answer = [0u8; 6];
            io.read_exact(&mut answer).await.unwrap();
            answer
        });
        let mut hello = vec![0u8; frame(0).len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut hello),
        )
        .await
        .expect("the server's bytes never left its buffer")
        .unwrap();
        assert_eq!(hello, frame(0));
        client.write_all(b"answer").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"answer");
    }

    #[tokio::test]
    async fn over_a_socket_every_byte_arrives() {
        let (socket, mut client) = connected().await;
        let sender = tokio::spawn(async move {
            let mut io = CoalescedWrites::new(socket);
            for i in 0..100 {
                io.write_all(&frame(i)).await.unwrap();
                io.flush().await.unwrap();
            }
            io.flush().await.unwrap();
            io.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        sender.await.unwrap();
        let expected: Vec<u8> = (0..100).flat_map(frame).collect();
        assert_eq!(got, expected);
    }
}

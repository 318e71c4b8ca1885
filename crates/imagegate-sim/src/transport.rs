//! The simulator's own listener, so a handler can drop its connection without answering
//! (`[sim:reset]`).
//!
//! [`SimListener`] wraps the caller's `TcpListener`; every accepted connection is a
//! [`SimStream`] sharing an abort flag with a [`ConnHandle`], which `serve` hands to the
//! handlers as `ConnectInfo<ConnHandle>`. Once a handler calls [`ConnHandle::reset`], the next
//! write on that connection (the head of the answer: hyper writes nothing before the handler
//! returns) fails instead, the socket's linger is set to zero, and hyper drops the connection:
//! the client receives a TCP RST and not one byte of the response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The caller's listener, yielding connections that can be reset.
pub(crate) struct SimListener(pub TcpListener);

impl Listener for SimListener {
    type Io = SimStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let stream = SimStream {
                        inner,
                        abort: Arc::default(),
                    };
                    return (stream, addr);
                }
                // As axum's own `TcpListener` does: a failed handshake is skipped at once, other
                // errors (e.g. out of file descriptors) are retried after a second.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "simulator accept error");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection: a `TcpStream` whose writes fail once its handle was reset.
pub(crate) struct SimStream {
    inner: TcpStream,
    abort: Arc<AtomicBool>,
}

impl SimStream {
    /// The error every operation returns once the connection is reset; arms the TCP reset.
    fn aborted(&self) -> Option<io::Error> {
        if !self.abort.load(Ordering::Acquire) {
            return None;
        }
        // Zero linger: closing the socket sends RST instead of FIN.
        if let Err(e) = self.inner.set_zero_linger() {
            tracing::debug!(error = %e, "could not set SO_LINGER for a simulated reset");
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "simulated connection reset",
        ))
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.aborted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.aborted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.aborted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.aborted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.aborted() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A handle on the connection a request arrived on (`ConnectInfo<ConnHandle>`).
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Arc<AtomicBool>);

impl ConnHandle {
    /// Makes the connection fail its next write and close with a reset.
    pub fn reset(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        Self(stream.io().abort.clone())
    }
}

//! Client connections: accepting them, their limits and timeouts, and the drain at shutdown.
//!
//! Every connection is HTTP/1.1 (hyper through `hyper_util`'s connection builder, with a timer),
//! served by a task of one [`JoinSet`]: on shutdown the listener is closed, every connection is
//! told to finish its current request and close, and the set is awaited for at most the drain
//! timeout; what still runs then is aborted.
//!
//! Slow or idle clients cannot hold a connection for ever:
//!
//! | limit | key | what happens |
//! |---|---|---|
//! | request line and headers | `server.header_read_timeout` | the connection is closed, no answer |
//! | idle kept-alive connection | `server.header_read_timeout` | hyper starts the header timer again as soon as an answer is written, so the wait for the next request is bounded by the same limit; closed, no answer |
//! | wait for the next body piece | `server.body_read_timeout` | the body read fails, the handler answers 400, the connection is closed |
//! | whole body | `server.body_total_timeout` | the same |
//! | open connections | `server.max_connections` | no more are accepted until one closes (they wait in the listen backlog) |
//! | open connections per client IP | `server.max_connections_per_ip` | a new connection is closed at once, no answer |
//!
//! The client IP is the TCP peer's address: behind a proxy or load balancer every client shares
//! the proxy's address (`X-Forwarded-For` is not read).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::ServerConfig;

mod body;

pub use body::{BodyTimeout, BodyTimeouts, TimedBody};

/// Pause after an accept error that is not about one connection (out of file descriptors…).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stopping` is cancelled, then drains for at most
/// `config.drain_timeout` (see the module docs). Returns once every connection is closed or the
/// drain timeout is over.
pub async fn run(
    config: &ServerConfig,
    listener: TcpListener,
    router: Router,
    stopping: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let shared = Arc::new(Shared {
        builder,
        router,
        body: BodyTimeouts {
            gap: config.body_read_timeout,
            total: config.body_total_timeout,
        },
        stopping: stopping.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(PerIp::new(config.max_connections_per_ip));
    let mut connections = JoinSet::new();

    'accept: loop {
        // At the cap, wait for a connection to close before accepting another.
        let slot = tokio::select! {
            biased;
            () = stopping.cancelled() => break 'accept,
            Some(done) = connections.join_next() => { finished(done); continue 'accept }
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break 'accept,
            },
        };
        let (tcp, peer) = loop {
            tokio::select! {
                biased;
                () = stopping.cancelled() => break 'accept,
                Some(done) = connections.join_next() => finished(done),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => break accepted,
                    Err(e) => accept_failed(&e, &stopping).await,
                },
            }
        };
        let Some(ip_slot) = per_ip.open(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: too many open from this address");
            continue;
        };
        // Answers are written whole (or as a few large buffers): send the last segment at once
        // rather than wait for the client's ACK of the previous one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a client connection");
        }
        connections.spawn(serve_connection(shared.clone(), tcp, peer, slot, ip_slot));
    }

    // Stop accepting: new connections are refused from here on.
    drop(listener);
    let drain = async {
        while let Some(done) = connections.join_next().await {
            finished(done);
        }
    };
    if tokio::time::timeout(config.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "drain timeout reached; abandoning remaining requests"
        );
        connections.shutdown().await;
    }
}

/// What every connection task shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    /// Built once; a clone per request is a reference count.
    router: Router,
    body: BodyTimeouts,
    stopping: CancellationToken,
}

/// Serves one connection until it closes; at shutdown, lets its current request finish first.
async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    _ip_slot: IpSlot,
) {
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut req = req.map(|body| axum::body::Body::new(TimedBody::new(body, shared.body)));
            // The TCP peer, for what is counted per client address (failed authentications).
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            shared.router.clone().oneshot(req)
        })
    };
    let conn = shared.builder.serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shared.stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, resets, malformed requests: the client's side of things.
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

fn finished(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!(error = %e, "a client connection task panicked");
        }
    }
}

/// An accept error about one connection is skipped; any other (out of file descriptors) is
/// logged and accepting pauses, so the loop does not spin.
async fn accept_failed(e: &io::Error, stopping: &CancellationToken) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing");
    tokio::select! {
        () = stopping.cancelled() => {}
        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
    }
}

/// Open connections per client address.
struct PerIp {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, unless it has `cap` open already.
    fn open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 client on a dual-stack socket is counted as its IPv4 address.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip,
        })
    }
}

/// One open connection of an address; gives its slot back when dropped.
struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_and_given_back() {
        let per_ip = Arc::new(PerIp::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = per_ip.open(a).unwrap();
        let second = per_ip.open(mapped).unwrap();
        assert!(
            per_ip.open(a).is_none(),
            "the same address, however written"
        );
        let _other = per_ip.open(b).unwrap();
        drop(first);
        let again = per_ip.open(a).unwrap();
        assert!(per_ip.open(a).is_none());
        drop(again);
        drop(second);
        assert!(
            !per_ip.open.lock().unwrap().contains_key(&a),
            "no entry left"
        );
    }
}

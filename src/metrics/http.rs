//! The HTTP metrics middleware and the per-request upstream clock.
//!
//! [`Track`] counts every request by route template and status, keeps the in-flight gauge, and
//! records the duration, the gateway's overhead and the bytes sent **when the response body ends**
//! (a streamed answer is timed to its last event, not to its headers).
//!
//! The overhead is the total minus the time the request spent waiting on the upstream, measured by
//! an [`UpstreamWait`] that [`Track`] puts into the request's extensions. The image handlers carry it
//! into [`CallCtx`](crate::upstream::CallCtx); the upstream client, the task engine and result
//! downloads hold it while they wait on the platform.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;
use tracing::Span;

use super::{InFlight, Metrics, UNMATCHED_ROUTE};
use crate::error::ApiError;
use crate::hook::{After, Before, Hook};

/// Wall-clock time a request spends waiting on the upstream. Concurrent waits (fanned-out calls,
/// parallel downloads) count once: the clock runs while at least one wait is open.
#[derive(Debug, Clone, Default)]
pub struct UpstreamWait(Arc<Mutex<WaitState>>);

#[derive(Debug, Default)]
struct WaitState {
    open: u32,
    since: Option<Instant>,
    total: Duration,
}

impl UpstreamWait {
    /// Starts a wait; it ends when the guard drops.
    pub fn enter(&self) -> Waiting {
        self.state().open(Instant::now());
        Waiting(self.clone())
    }

    /// The time waited so far (an open wait counts up to now).
    pub fn total(&self) -> Duration {
        self.state().total(Instant::now())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WaitState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WaitState {
    fn open(&mut self, now: Instant) {
        if self.open == 0 {
            self.since = Some(now);
        }
        self.open += 1;
    }

    fn close(&mut self, now: Instant) {
        self.open = self.open.saturating_sub(1);
        if self.open == 0 {
            if let Some(since) = self.since.take() {
                self.total += now.saturating_duration_since(since);
            }
        }
    }

    fn total(&self, now: Instant) -> Duration {
        self.total
            + self
                .since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// An open wait on the upstream; see [`UpstreamWait::enter`].
pub struct Waiting(UpstreamWait);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.state().close(Instant::now());
    }
}

/// A finished request, as the middleware saw it.
pub(super) struct Done {
    pub route: String,
    pub method: Method,
    pub status: StatusCode,
    pub total: Duration,
    pub upstream: Duration,
    pub bytes: u64,
}

/// Counts and times every request; see the module docs. Runs outside auth, so 401s are counted.
#[derive(Clone)]
pub struct Track(pub Arc<Metrics>);

impl Hook for Track {
    type After = Tracked;

    fn before(&self, req: &mut Request) -> Before<Tracked> {
        let start = Instant::now();
        // Route templates only (`/v1/models/{id}`), never the raw path: the label set stays closed.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
            .to_owned();
        let wait = UpstreamWait::default();
        req.extensions_mut().insert(wait.clone());
        let in_flight = self.0.http_in_flight(&route);
        Before::Call(
            Tracked {
                metrics: self.0.clone(),
                wait,
                start,
                route,
                method: req.method().clone(),
                in_flight,
            },
            Span::none(),
        )
    }
}

/// A request being counted, until its answer's body ends.
pub struct Tracked {
    metrics: Arc<Metrics>,
    wait: UpstreamWait,
    start: Instant,
    route: String,
    method: Method,
    in_flight: InFlight,
}

impl After for Tracked {
    fn after(self, res: Response) -> Response {
        if let Some(e) = res.extensions().get::<ApiError>() {
            self.metrics.error(e.code.fault());
        }
        let finish = Finish {
            metrics: self.metrics,
            wait: self.wait,
            start: self.start,
            bytes: 0,
            route: self.route,
            method: self.method,
            status: res.status(),
            _in_flight: self.in_flight,
        };
        let (parts, body) = res.into_parts();
        Response::from_parts(
            parts,
            Body::new(Counted {
                inner: body,
                finish: Some(finish),
            }),
        )
    }
}

/// Records the request when dropped: at the end of the body, or when the client goes away.
struct Finish {
    metrics: Arc<Metrics>,
    wait: UpstreamWait,
    start: Instant,
    bytes: u64,
    route: String,
    method: Method,
    status: StatusCode,
    _in_flight: InFlight,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.metrics.http_done(&Done {
            route: std::mem::take(&mut self.route),
            method: self.method.clone(),
            status: self.status,
            total: self.start.elapsed(),
            upstream: self.wait.total(),
            bytes: self.bytes,
        });
    }
}

/// The response body, counting bytes and recording the request as soon as the last frame is out.
struct Counted {
    inner: Body,
    finish: Option<Finish>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(f)) = (frame.data_ref(), this.finish.as_mut()) {
                    f.bytes += data.len() as u64;
                }
                // Recorded before the last bytes leave, so a client that reads the whole answer
                // and then scrapes `/metrics` always sees its request counted.
                if this.inner.is_end_stream() {
                    this.finish = None;
                }
            }
            Poll::Ready(_) => this.finish = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_waits_count_once() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut s = WaitState::default();
        s.open(at(0));
        s.open(at(1));
        s.close(at(2));
        s.close(at(3));
        assert_eq!(s.total(at(8)), Duration::from_secs(3));
        s.open(at(8));
        assert_eq!(
            s.total(at(10)),
            Duration::from_secs(5),
            "an open wait counts"
        );
    }
}

//! Delivery faults: what happens to a create's HTTP answer once its task was accepted
//! (`[sim:reset]`, `[sim:truncate]`, `[sim:stallcreate=SECS]`).
//!
//! [`deliver`] wraps every `/api/v1` handler (inside the gate). `jobs::start` reports each task
//! it creates through [`accepted`] to the request that created it (a task-local slot the
//! middleware opens around the handler), so the faults apply exactly when a task exists, and
//! only after the handler built its answer (for sync models, after the generation):
//!
//! 1. `stallcreate`: the answer is held SECS seconds (not scaled); shutdown ends the wait with
//!    a 503.
//! 2. `reset`: the connection is reset (TCP RST) without a byte of the answer (see
//!    `transport`). A reqwest client gets an error from `send()`, not a status: a request error
//!    whose source is the I/O error `ConnectionReset` ("Connection reset by peer"). Without the
//!    simulator's listener (an embedded [`crate::router`]), the answer's body fails at once
//!    instead, so the client may see the status line before the error.
//! 3. `truncate`: the answer's status and headers (HTTP 200 `application/json` for a success)
//!    with `Content-Length` of the whole body, then the first half of the body; 50 ms after the
//!    answer was ready (time for that half to be flushed) the body fails and hyper closes the
//!    connection (a large body may be cut even earlier). A reqwest client gets its response
//!    from `send()`, then an error from `bytes()` / `text()` / `json()` (a decode error whose
//!    source is hyper's `IncompleteBody`, "end of file before message length reached").

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;
use tokio_util::io::ReaderStream;

use super::api::ApiError;
use super::state::AppState;
use super::transport::ConnHandle;

/// How long a truncated body waits, after its first half, before failing.
const TRUNCATE_PAUSE: Duration = Duration::from_millis(50);

/// How the create's answer is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// `[sim:reset]`: no answer, the connection is reset.
    Reset,
    /// `[sim:truncate]`: half the body, then the connection is closed.
    Truncate,
}

/// The delivery faults of one accepted create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// `[sim:stallcreate=SECS]`.
    pub stall: Option<Duration>,
    pub cut: Option<Cut>,
}

tokio::task_local! {
    /// The delivery faults of the task created by the current request, if any.
    static ACCEPTED: Cell<Option<Delivery>>;
}

/// Reports a created task's delivery faults to the request being handled (no-op outside one).
pub(crate) fn accepted(delivery: Delivery) {
    // Outside a request (no scope) there is no answer to act on.
    let _ = ACCEPTED.try_with(|slot| slot.set(Some(delivery)));
}

/// Applies the delivery faults of the task the handler created, if it created one.
pub(crate) async fn deliver(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|ConnectInfo(c)| c.clone());
    let (res, delivery) = ACCEPTED
        .scope(Cell::new(None), async move {
            let res = next.run(req).await;
            (res, ACCEPTED.with(Cell::take))
        })
        .await;
    let Some(delivery) = delivery else {
        return res;
    };
    if let Some(stall) = delivery.stall {
        if !state.sleep(stall).await {
            return ApiError::shutting_down().into_response();
        }
    }
    match delivery.cut {
        None => res,
        Some(Cut::Reset) => reset(conn.as_ref(), res),
        Some(Cut::Truncate) => truncate(res).await,
    }
}

/// Drops the connection without answering (or, without a connection handle, fails the body).
fn reset(conn: Option<&ConnHandle>, res: Response) -> Response {
    match conn {
        Some(conn) => {
            conn.reset();
            res
        }
        None => {
            let (parts, _) = res.into_parts();
            let body = Cutoff::new(Bytes::new(), Duration::ZERO);
            Response::from_parts(parts, Body::from_stream(ReaderStream::new(body)))
        }
    }
}

/// The answer with its full `Content-Length` but only the first half of its body.
async fn truncate(res: Response) -> Response {
    let (mut parts, body) = res.into_parts();
    let Ok(full) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::with(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            500,
            "simulated answer could not be buffered",
        )
        .into_response();
    };
    parts.headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(full.len()),
    );
    let half = full.slice(..full.len() / 2);
    let body = Cutoff::new(half, TRUNCATE_PAUSE);
    Response::from_parts(parts, Body::from_stream(ReaderStream::new(body)))
}

/// A reader yielding `head`, then failing after `pause`.
struct Cutoff {
    head: Bytes,
    pause: Pin<Box<Sleep>>,
}

impl Cutoff {
    fn new(head: Bytes, pause: Duration) -> Self {
        Self {
            head,
            pause: Box::pin(tokio::time::sleep(pause)),
        }
    }
}

impl AsyncRead for Cutoff {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match this.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "simulated truncated answer",
            ))),
        }
    }
}

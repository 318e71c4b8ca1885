//! Reads what a handler left of the request body before the response goes out.
//!
//! A handler may answer before the body is fully read: auth refuses an upload, validation stops at
//! the 17th image, or a streaming client (the Node SDK) sends the final chunk of a chunked body a
//! moment after the multipart data ended. If the connection then closes with unread bytes in the
//! socket, the kernel resets it and the client loses the response. So the body is shared between
//! the handler and this layer: whatever the handler did not read is read (and discarded) here,
//! within a byte budget and a time limit, and only then is the response returned.
//!
//! Except when the client asked `Expect: 100-continue` and the handler never read the body (a
//! refusal before the upload: auth, a key over its limits): then the client is waiting for a go
//! that never comes and sends no body, so nothing is read — reading would send the `100
//! Continue` and make it upload what is refused.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::EXPECT;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

/// Longest wait for the rest of a body the handler did not read.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A body shared with the middleware: the handler reads through it, the middleware reads the rest.
struct SharedBody(Arc<Mutex<Shared>>);

#[derive(Default)]
struct Shared {
    body: Body,
    /// Whether the handler asked for any of the body.
    touched: bool,
}

impl SharedBody {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut shared = self.shared();
        shared.touched = true;
        Pin::new(&mut shared.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.shared().body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.shared().body.size_hint()
    }
}

/// Middleware: see the module docs. `budget` is the most it reads after the handler is done.
pub async fn drain_unread_body(budget: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let shared = Arc::new(Mutex::new(Shared {
        body,
        touched: false,
    }));
    let req = Request::from_parts(parts, Body::new(SharedBody(shared.clone())));
    let res = next.run(req).await;
    let Shared {
        body: rest,
        touched,
    } = std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner));
    if expects_continue && !touched {
        return res;
    }
    let drain = async move {
        let mut read = 0usize;
        let mut rest = rest;
        while let Some(Ok(frame)) = rest.frame().await {
            read = read.saturating_add(frame.data_ref().map_or(0, Bytes::len));
            if read > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    res
}

//! Middleware with nothing to await of its own, as plain tower layers: a synchronous
//! [`Hook::before`] that may answer at once, and an [`After`] applied to the inner answer.
//!
//! Why not `axum::middleware::from_fn`: each `from_fn` layer boxes its future and that future
//! holds the request up to three times (the argument, the moved local, `Next::run`'s own), about
//! 1.2 KB per layer for the whole life of the request. A request waiting minutes on its job
//! paid that for every layer; here a layer's future is its `After` and the inner future.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Span;

/// What a layer does with a request before the inner service sees it.
pub enum Before<A> {
    /// Answers at once: the inner service is not called.
    Answer(Response),
    /// Calls the inner service (inside the span: `Span::none()` for none of its own), then the
    /// `After` with its answer (outside the span).
    Call(A, Span),
}

/// Work done on the inner service's answer.
pub trait After: Send + 'static {
    fn after(self, res: Response) -> Response;
}

/// One layer's two halves.
pub trait Hook: Clone + Send + Sync + 'static {
    type After: After;
    fn before(&self, req: &mut Request) -> Before<Self::After>;
}

/// The [`Layer`] of a [`Hook`].
#[derive(Clone)]
pub struct HookLayer<H>(pub H);

impl<S, H: Clone> Layer<S> for HookLayer<H> {
    type Service = HookService<S, H>;

    fn layer(&self, inner: S) -> Self::Service {
        HookService {
            inner,
            hook: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HookService<S, H> {
    inner: S,
    hook: H,
}

impl<S, H> Service<Request> for HookService<S, H>
where
    S: Service<Request, Error = Infallible> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
    H: Hook,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HookFuture<S::Future, H::After>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        match self.hook.before(&mut req) {
            Before::Answer(res) => HookFuture::Answered { res: Some(res) },
            Before::Call(after, span) => {
                // The service that was polled ready is the one called; a clone takes its place.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let inner = span.in_scope(|| inner.call(req));
                HookFuture::Calling {
                    inner,
                    after: Some(after),
                    span,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`HookService`] call.
    #[project = Proj]
    pub enum HookFuture<F, A> {
        Answered { res: Option<Response> },
        Calling { #[pin] inner: F, after: Option<A>, span: Span },
    }
}

impl<F, R, A> Future for HookFuture<F, A>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
    A: After,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Answered { res } => Poll::Ready(Ok(res.take().unwrap_or_else(polled_again))),
            Proj::Calling { inner, after, span } => {
                let res = {
                    let _in = span.enter();
                    match ready!(inner.poll(cx)) {
                        Ok(res) => res.into_response(),
                        Err(never) => match never {},
                    }
                };
                Poll::Ready(Ok(match after.take() {
                    Some(a) => a.after(res),
                    None => polled_again(),
                }))
            }
        }
    }
}

/// A future polled after it completed (a bug in the caller): an empty 500, never a panic.
fn polled_again() -> Response {
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

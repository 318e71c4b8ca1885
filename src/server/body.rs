//! A request body with time limits: the next piece must come within the gap limit once the
//! reader asks for it, and the whole body within the total limit.
//!
//! The timers run only while the reader waits: a piece the client already sent is handed over
//! whatever the clock says, and a body that arrives without a wait never starts a timer. When a
//! limit is passed the read fails (the handlers answer such a body with an OpenAI-shaped 400)
//! and the body reads as finished afterwards; the connection is then closed after the answer,
//! since the rest of the body was never read.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The two limits of [`TimedBody`].
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest wait for the next piece.
    pub gap: Duration,
    /// Longest time for the whole body, from when the body was created.
    pub total: Duration,
}

/// Why a body read failed: the client stopped sending or was too slow overall.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no request body data for {0:?}")]
    Gap(Duration),
    #[error("the request body took longer than {0:?}")]
    Total(Duration),
}

/// Wraps a body with [`BodyTimeouts`] (see the module docs).
pub struct TimedBody<B> {
    inner: B,
    limits: BodyTimeouts,
    created: Instant,
    /// The whole-body deadline, set at the first wait.
    total: Option<Pin<Box<Sleep>>>,
    /// The current wait's deadline; cleared by every piece received.
    gap: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: BodyTimeouts) -> Self {
        Self {
            inner,
            limits,
            created: Instant::now(),
            total: None,
            gap: None,
            expired: false,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.gap = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limits = this.limits;
        let created = this.created;
        let total = this.total.get_or_insert_with(|| {
            // An absurd limit that overflows the clock: tokio's `sleep` clamps it.
            Box::pin(match created.checked_add(limits.total) {
                Some(at) => tokio::time::sleep_until(at),
                None => tokio::time::sleep(limits.total),
            })
        });
        if total.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(BodyTimeout::Total(limits.total).into())));
        }
        let gap = this
            .gap
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limits.gap)));
        if gap.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(BodyTimeout::Gap(limits.gap).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.expired {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use std::convert::Infallible;

    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt as _, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    const LIMITS: BodyTimeouts = BodyTimeouts {
        gap: Duration::from_secs(30),
        total: Duration::from_secs(600),
    };

    /// A body fed by a task that sends `chunks` pieces of `size` bytes, `pause` apart.
    fn paced(
        chunks: usize,
        size: usize,
        pause: Duration,
    ) -> (
        TimedBody<impl Body<Data = Bytes, Error = Infallible> + Unpin>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        #[allow(clippy::disallowed_methods, reason = "the test's feeding client")]
        let feeder = tokio::spawn(async move {
            let piece = Bytes::from(vec![7u8; size]);
            for _ in 0..chunks {
                tokio::time::sleep(pause).await;
                if tx.send(piece.clone()).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        })
        .boxed();
        (TimedBody::new(StreamBody::new(stream), LIMITS), feeder)
    }

    #[tokio::test(start_paused = true)]
    async fn a_64_mib_upload_with_short_pauses_is_read_whole() {
        // 1024 pieces of 64 KiB, 1 s apart: 17 minutes in all would pass the total limit, so
        // 0.5 s apart: 8.5 minutes, each pause far under the 30 s gap limit.
        let (body, feeder) = paced(1024, 64 * 1024, Duration::from_millis(500));
        let started = Instant::now();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 64 * 1024 * 1024);
        assert!(started.elapsed() > LIMITS.gap, "longer than one gap in all");
        feeder.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_gap_limit() {
        let (mut body, feeder) = paced(2, 10, Duration::from_secs(31));
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("no request body data"), "{err}");
        assert_eq!(started.elapsed(), LIMITS.gap);
        assert!(body.frame().await.is_none(), "finished after the failure");
        assert!(body.is_end_stream());
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_at_the_total_limit() {
        // A piece every 20 s: never a 30 s gap, but over 600 s in all.
        let (body, feeder) = paced(100, 10, Duration::from_secs(20));
        let started = Instant::now();
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("took longer"), "{err}");
        assert_eq!(started.elapsed(), LIMITS.total);
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn data_already_sent_is_handed_over_late() {
        let (mut body, feeder) = paced(1, 10, Duration::ZERO);
        feeder.await.unwrap();
        // The reader comes back long after the gap limit: the piece was there all along.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap().len(), 10);
        assert!(body.frame().await.is_none());
    }
}

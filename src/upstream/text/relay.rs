//! The relay of a text upstream's answer to the client: every chunk is passed on as it arrives
//! (nothing is held back), while a side scanner finds where events end and reads the final
//! `usage`.
//!
//! - **Streams** (`text/event-stream`): while the upstream is silent for the keepalive
//!   interval, a `: keepalive` comment is written — only at an event boundary, never inside an
//!   event (a comment line there would end the event early for some parsers).
//! - **Whole answers** (JSON): the bytes are passed on as they come and kept (up to a cap) to
//!   read `usage` at the end.
//!
//! When the relay ends — the upstream finished, failed, or the client went away and the body was
//! dropped (which drops the upstream call too) — its `on_end` runs exactly once with what was
//! seen.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use super::usage_of;
use crate::ledger::Tokens;

/// The comment written while the upstream is silent.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Largest event (or whole answer) kept to read its usage; larger ones are passed on unread.
const MAX_KEPT: usize = 16 * 1024 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream's answer was passed on whole.
    Complete,
    /// The upstream's answer broke off (its connection failed or the call timed out).
    UpstreamFailed,
    /// The client went away first.
    ClientGone,
}

/// What the relay saw, for the ledger.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub ending: Ending,
    /// The last usage the answer reported, if any.
    pub usage: Option<Tokens>,
}

/// Finds event boundaries in an SSE stream and the usage of its events.
#[derive(Debug)]
struct Events {
    /// The bytes of the current event (up to [`MAX_KEPT`]).
    event: Vec<u8>,
    overflow: bool,
    /// Characters on the current line so far.
    line: usize,
    /// The previous byte was a `\r` (a `\n` after it ends nothing more).
    cr: bool,
    /// The bytes passed on so far end exactly after an event (or nothing was sent yet).
    at_boundary: bool,
    usage: Option<Tokens>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            event: Vec::new(),
            overflow: false,
            line: 0,
            cr: false,
            at_boundary: true,
            usage: None,
        }
    }
}

impl Events {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            let newline = match b {
                b'\n' if self.cr => {
                    self.cr = false;
                    continue;
                }
                b'\n' => true,
                b'\r' => {
                    self.cr = true;
                    true
                }
                _ => {
                    self.cr = false;
                    false
                }
            };
            if newline {
                if self.line == 0 {
                    self.end_event();
                } else {
                    self.line = 0;
                    self.keep(b"\n");
                }
            } else {
                self.line = self.line.saturating_add(1);
                self.at_boundary = false;
                self.keep(&[b]);
            }
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.event.len().saturating_add(bytes.len()) > MAX_KEPT {
            self.overflow = true;
        } else if !self.overflow {
            self.event.extend_from_slice(bytes);
        }
    }

    /// An empty line: the event is complete.
    fn end_event(&mut self) {
        self.at_boundary = true;
        if !self.overflow && !self.event.is_empty() {
            let text = String::from_utf8_lossy(&self.event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let data = data.join("\n");
            if data.contains("\"usage\"") {
                if let Some(u) = serde_json::from_str::<Value>(&data)
                    .ok()
                    .as_ref()
                    .and_then(usage_of)
                {
                    self.usage = Some(u);
                }
            }
        }
        self.event.clear();
        self.overflow = false;
    }
}

/// What the relay reads as it passes bytes on.
#[derive(Debug)]
enum Scan {
    Events(Events),
    Whole { kept: Vec<u8>, overflow: bool },
}

impl Scan {
    fn feed(&mut self, chunk: &[u8]) {
        match self {
            Self::Events(e) => e.feed(chunk),
            Self::Whole { kept, overflow } => {
                if kept.len().saturating_add(chunk.len()) > MAX_KEPT {
                    *overflow = true;
                } else if !*overflow {
                    kept.extend_from_slice(chunk);
                }
            }
        }
    }

    fn usage(&self) -> Option<Tokens> {
        match self {
            Self::Events(e) => e.usage,
            Self::Whole { kept, overflow } => (!*overflow)
                .then(|| serde_json::from_slice::<Value>(kept).ok())
                .flatten()
                .as_ref()
                .and_then(usage_of),
        }
    }
}

type OnEnd = Box<dyn FnOnce(End) + Send>;

/// The answer's body: the upstream's bytes, keepalives between events, `on_end` once.
pub struct Relay<S> {
    inner: S,
    scan: Scan,
    /// Keepalives for a stream: the interval and the next one's timer.
    keepalive: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    on_end: Option<OnEnd>,
}

impl<S> Relay<S> {
    /// A relay of an event stream, with a keepalive every `keepalive` of silence.
    pub fn events(inner: S, keepalive: Duration, on_end: OnEnd) -> Self {
        let timer = Box::pin(tokio::time::sleep(keepalive));
        Self {
            inner,
            scan: Scan::Events(Events::default()),
            keepalive: Some((keepalive, timer)),
            on_end: Some(on_end),
        }
    }

    /// A relay of a whole answer (JSON).
    pub fn whole(inner: S, on_end: OnEnd) -> Self {
        Self {
            inner,
            scan: Scan::Whole {
                kept: Vec::new(),
                overflow: false,
            },
            keepalive: None,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, ending: Ending) {
        if let Some(f) = self.on_end.take() {
            f(End {
                ending,
                usage: self.scan.usage(),
            });
        }
    }
}

impl<S, E> Stream for Relay<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.on_end.is_none() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.scan.feed(&chunk);
                if let Some((every, timer)) = &mut this.keepalive {
                    let next = tokio::time::Instant::now().checked_add(*every);
                    if let Some(next) = next {
                        timer.as_mut().reset(next);
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let message = e.to_string();
                tracing::warn!(error = message, "the text upstream's answer broke off");
                this.end(Ending::UpstreamFailed);
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Ready(None) => {
                this.end(Ending::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let at_boundary = matches!(&this.scan, Scan::Events(e) if e.at_boundary);
                let Some((every, timer)) = &mut this.keepalive else {
                    return Poll::Pending;
                };
                // A fired timer is re-armed (and polled again, so it wakes this task); a
                // keepalive goes out only between events.
                while timer.as_mut().poll(cx).is_ready() {
                    let Some(next) = tokio::time::Instant::now().checked_add(*every) else {
                        return Poll::Pending;
                    };
                    timer.as_mut().reset(next);
                    if at_boundary {
                        return Poll::Ready(Some(Ok(Bytes::from_static(KEEPALIVE))));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S> Drop for Relay<S> {
    fn drop(&mut self) {
        self.end(Ending::ClientGone);
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt as _;

    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<End>>>, OnEnd) {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let e = ends.clone();
        (ends, Box::new(move |end| e.lock().unwrap().push(end)))
    }

    #[test]
    fn boundaries_and_usage_across_chunk_splits() {
        let stream = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
                      event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":5}}}\r\n\r\n";
        // Every split point gives the same answer.
        for cut in 0..stream.len() {
            let (a, b) = stream.as_bytes().split_at(cut);
            let mut e = Events::default();
            e.feed(a);
            e.feed(b);
            assert!(e.at_boundary, "cut at {cut}");
            assert_eq!(
                e.usage,
                Some(Tokens {
                    input: 12,
                    output: 5
                }),
                "cut at {cut}"
            );
        }
        let mut e = Events::default();
        e.feed(b"data: {\"a\":1}\n");
        assert!(!e.at_boundary, "inside an event");
        e.feed(b"\n");
        assert!(e.at_boundary);
    }

    #[tokio::test(start_paused = true)]
    async fn keepalives_only_between_events() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        let inner = tokio_stream_like(rx);
        let (ends, on_end) = recorder();
        let mut relay = Relay::events(inner, Duration::from_secs(1), on_end);
        // Silent before the first event: a keepalive.
        assert_eq!(relay.next().await.unwrap().unwrap(), KEEPALIVE);
        tx.send(Ok(Bytes::from_static(b"data: {\"x\":"))).unwrap();
        assert_eq!(relay.next().await.unwrap().unwrap(), "data: {\"x\":");
        // Inside an event: silence gives nothing until the event ends.
        let next = tokio::time::timeout(Duration::from_secs(5), relay.next()).await;
        assert!(next.is_err(), "no keepalive inside an event");
        tx.send(Ok(Bytes::from_static(b"1}\n\n"))).unwrap();
        assert_eq!(relay.next().await.unwrap().unwrap(), "1}\n\n");
        assert_eq!(relay.next().await.unwrap().unwrap(), KEEPALIVE);
        drop(tx);
        assert!(relay.next().await.is_none());
        assert_eq!(ends.lock().unwrap()[0].ending, Ending::Complete);
    }

    #[tokio::test]
    async fn a_dropped_relay_reports_the_client_gone_once() {
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        let (ends, on_end) = recorder();
        let relay = Relay::whole(tokio_stream_like(rx), on_end);
        drop(relay);
        let ends = ends.lock().unwrap();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].ending, Ending::ClientGone);
    }

    #[tokio::test]
    async fn a_whole_answer_gives_its_usage() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        let (ends, on_end) = recorder();
        let mut relay = Relay::whole(tokio_stream_like(rx), on_end);
        tx.send(Ok(Bytes::from_static(b"{\"usage\":{\"prompt_tokens\":3,")))
            .unwrap();
        tx.send(Ok(Bytes::from_static(b"\"completion_tokens\":4}}")))
            .unwrap();
        drop(tx);
        while relay.next().await.is_some() {}
        let end = ends.lock().unwrap()[0];
        assert_eq!(
            end.usage,
            Some(Tokens {
                input: 3,
                output: 4
            })
        );
    }

    /// An unbounded receiver as a stream.
    fn tokio_stream_like<T: Send + 'static>(
        rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|v| (v, rx))
        }))
    }
}

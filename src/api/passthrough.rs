//! `POST /v1/responses` and `POST /v1/chat/completions`: the text pass-through of
//! `[passthrough]` (Codex's and Cursor's model turns), under the caller's key, limits and budget.
//!
//! 1. **admit** — a `[passthrough]` exists; a body of 1 MiB or more (or of unknown size) is
//!    not read when the key's limits refuse anyway; the body is a JSON object naming a `model` the key
//!    may use; a key or team with a budget may use only a priced model (403 `model_not_priced`);
//!    the key's and team's rate and concurrency limits take the request.
//! 2. **reserve** — with a price: the most the call may cost (its output cap, and its body's
//!    bytes / 4 as input tokens, at most [`MAX_INPUT_ESTIMATE`]) is reserved against the budgets.
//! 3. **relay** — the body goes upstream as it came (a streamed chat completion without
//!    `stream_options` asks for its usage), the answer comes back as it arrives
//!    ([`relay`](crate::upstream::text::relay)).
//! 4. **record** — before anything is sent, the call's ledger row is committed, booked at its
//!    reservation with an unknown outcome: a crash while the upstream works leaves it so.
//! 5. **book** — when the relay ends, a [`Bill`] completes that row in place with the reported
//!    usage at the model's price. An answer that ended without usage (the client left, the
//!    upstream broke off or reported none) stays booked at its reservation: the most it could
//!    have cost.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::images::{body_error, json_content_type, json_object, large_body, request_id};
use crate::budget::Reservation;
use crate::config::TextPrice;
use crate::error::{ApiError, ErrorCode};
use crate::keys::ClientKey;
use crate::ledger::{Row, Tokens};
use crate::limits::Admission;
use crate::model::{TextRoute, Usd};
use crate::state::{AppState, RequestLog};
use crate::store::Op;
use crate::upstream::text::output_cap;
use crate::upstream::text::relay::{End, Ending, Relay};

/// The input tokens reserved for a request at most (its bytes / 4 below that).
pub const MAX_INPUT_ESTIMATE: u64 = 200_000;

pub async fn responses(State(state): State<Arc<AppState>>, request: Request) -> Response {
    relay(state, TextRoute::Responses, request).await
}

pub async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    relay(state, TextRoute::ChatCompletions, request).await
}

async fn relay(state: Arc<AppState>, route: TextRoute, request: Request) -> Response {
    match run(&state, route, request).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &Arc<AppState>,
    route: TextRoute,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(text) = &state.text else {
        return Err(ApiError::new(
            ErrorCode::PassthroughNotConfigured,
            format!(
                "This gateway has no text upstream for /v1/{}: add a [passthrough] section (base_url, api_key) to its configuration.",
                route.path()
            ),
        ));
    };
    let caller = request
        .extensions()
        .get::<ClientKey>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("No API key."))?;
    json_content_type(request.headers())?;
    // A large body (a Codex turn carries its images) is not read when the limits refuse anyway.
    if large_body(&request) {
        state.limits.precheck(&caller)?;
    }
    let headers = request.headers().clone();
    let limit = state.config.server.max_body_bytes;
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| body_error(e.status(), limit))?;
    let mut fields = json_object(&body)?;
    let model = match fields.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(ApiError::invalid("model", "model must be a string.")),
        None => return Err(ApiError::missing("model")),
    };
    if !caller.record.allows(&model) {
        return Err(ApiError::model_not_allowed(&model));
    }
    let config = text.config();
    let price = config.prices.get(&model).copied();
    let budgeted = caller.record.budget.is_limited()
        || caller.team.as_ref().is_some_and(|t| t.budget.is_limited());
    if budgeted && price.is_none() {
        return Err(ApiError::new(
            ErrorCode::ModelNotPriced,
            format!(
                "The text model `{model}` has no price in [passthrough.prices], and this key or its team has a budget: ask the operator to price it."
            ),
        )
        .with_param("model"));
    }
    let admission = state.limits.admit(&caller, 0).await?;
    let call_id = format!("txtcall_{}", uuid::Uuid::new_v4().simple());
    let reservation = match price {
        Some(p) => {
            let input = (body.len() as u64 / 4).min(MAX_INPUT_ESTIMATE);
            let output = output_cap(route, &fields, config.max_output_tokens);
            let cost = p.cost(input, output);
            Some(state.budgets.reserve(&caller, cost, &call_id).await?)
        }
        None => None,
    };
    let stream = fields.get("stream").and_then(Value::as_bool) == Some(true);
    let body = if route == TextRoute::ChatCompletions
        && stream
        && !fields.contains_key("stream_options")
    {
        fields.insert("stream_options".into(), json!({"include_usage": true}));
        Bytes::from(serde_json::to_vec(&fields).map_err(|e| ApiError::internal(e.to_string()))?)
    } else {
        body
    };
    let rate_headers = admission.headers();
    let mut bill = Bill {
        state: state.clone(),
        route,
        caller,
        model: model.clone(),
        request_id: request_id(&headers),
        call_id,
        started: Instant::now(),
        price,
        reservation,
        _admission: admission,
        stage: Stage::Recording,
        done: false,
    };
    // Durable before the upstream sees anything: booked at the reservation, outcome unknown.
    let provisional = bill.row(
        502,
        Some(ErrorCode::UpstreamOutcomeUnknown),
        bill.reserved(),
        None,
    );
    state
        .store()
        .write(vec![Op::Ledger(Box::new(provisional))])
        .await?;
    bill.stage = Stage::Sent;
    let res = match text.send(route, &headers, body).await {
        Ok(res) => res,
        Err(e) => {
            // No answer. A call that never connected reached nothing; any other (a timeout, a
            // connection lost after sending) may have been worked on.
            let ending = if e.code == ErrorCode::UpstreamUnavailable {
                bill.stage = Stage::Answered(e.status());
                Ending::Complete
            } else {
                Ending::UpstreamFailed
            };
            bill.close(End {
                ending,
                usage: None,
            });
            return Err(e);
        }
    };
    let status = res.status();
    bill.stage = Stage::Answered(status);
    let content_type = res.headers().get(CONTENT_TYPE).cloned();
    let events = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let on_end = Box::new(move |end: End| {
        let mut bill = bill;
        bill.close(end);
    });
    let upstream = Box::pin(res.bytes_stream());
    let body = if events {
        Body::from_stream(Relay::events(upstream, config.keepalive, on_end))
    } else {
        Body::from_stream(Relay::whole(upstream, on_end))
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let h = out.headers_mut();
    if let Some(ct) = content_type {
        h.insert(CONTENT_TYPE, ct);
    }
    if events {
        h.insert("cache-control", HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    for (name, value) in rate_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    out.extensions_mut().insert(RequestLog {
        public_model: Some(model.into()),
        ..RequestLog::default()
    });
    Ok(out)
}

/// Where a text call is: what its end owes depends on it.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Its row is being written: nothing was sent.
    Recording,
    /// Sent (or being sent): the upstream may be working on it.
    Sent,
    /// The upstream answered with this status.
    Answered(StatusCode),
}

/// One text call's money: its reservation, its concurrency slots and its ledger row. Closed once:
/// by the relay's end, by a call that got no answer, or — when the client left before the
/// answer — on drop.
struct Bill {
    state: Arc<AppState>,
    route: TextRoute,
    caller: ClientKey,
    model: String,
    request_id: String,
    /// Names the call's ledger row ([`Row::call_id`]).
    call_id: String,
    started: Instant,
    price: Option<TextPrice>,
    reservation: Option<Reservation>,
    _admission: Admission,
    stage: Stage,
    done: bool,
}

impl Drop for Bill {
    fn drop(&mut self) {
        self.close(End {
            ending: Ending::ClientGone,
            usage: None,
        });
    }
}

impl Bill {
    fn reserved(&self) -> Usd {
        self.reservation
            .as_ref()
            .map_or(Usd::ZERO, Reservation::amount)
    }

    /// The call's ledger row as it stands.
    fn row(&self, status: u16, error: Option<ErrorCode>, cost: Usd, tokens: Option<Tokens>) -> Row {
        let mut row = Row::text(
            &self.caller.id,
            self.caller.team_id(),
            &self.model,
            &self.request_id,
            self.started.elapsed().as_millis(),
            status,
            error,
            cost,
            tokens,
        );
        row.call_id = Some(self.call_id.clone());
        row
    }

    fn close(&mut self, end: End) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // Refused outright (an error status, or no connection): nothing was worked on.
        let refused = match self.stage {
            Stage::Recording => true,
            Stage::Sent => false,
            Stage::Answered(s) => s.as_u16() >= 400 && end.ending != Ending::UpstreamFailed,
        };
        let cost = match (self.price, end.usage) {
            (None, _) => Usd::ZERO,
            (Some(p), Some(u)) => p.cost(u.input, u.output),
            // No usage: the most it could have cost.
            (Some(_), None) if !refused => self.reserved(),
            (Some(_), None) => Usd::ZERO,
        };
        let (status, error) = match (end.ending, self.stage) {
            (Ending::ClientGone, _) => (499, Some(ErrorCode::ClientClosedRequest)),
            (Ending::UpstreamFailed, _) | (_, Stage::Recording | Stage::Sent) => {
                (502, Some(ErrorCode::UpstreamError))
            }
            (Ending::Complete, Stage::Answered(s)) if s.is_server_error() => {
                (s.as_u16(), Some(ErrorCode::UpstreamError))
            }
            (Ending::Complete, Stage::Answered(s)) if s.as_u16() >= 400 => {
                (s.as_u16(), Some(ErrorCode::UpstreamRejectedRequest))
            }
            (Ending::Complete, Stage::Answered(s)) => (s.as_u16(), None),
        };
        if let Some(r) = self.reservation.take() {
            r.settle(cost);
        }
        let tokens = end.usage.unwrap_or_default();
        self.state.metrics.text_usage(
            self.route,
            self.caller.team_id(),
            &self.caller.id,
            (tokens.input, tokens.output),
            cost,
        );
        let row = self.row(status, error, cost, end.usage);
        // Queued now, not from a task: a row closed by a shutdown's drain is ahead of its flush.
        self.state
            .store()
            .write_later(vec![Op::CompleteText(Box::new(row))]);
    }
}

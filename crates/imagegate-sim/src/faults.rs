//! Fault injection: prompt directives (`[sim:policy]`, `[sim:slow=3]`, …) and the per-model
//! fault table set at runtime through `POST /_sim/faults`.
//!
//! A prompt directive always wins over the table; the table is consulted (model entry first,
//! then `*`) only when the prompt names no outcome. Directive names are matched
//! case-insensitively; unknown directives are ignored. When a prompt names several outcomes
//! (`[sim:policy] [sim:500]`), the first one wins; `nofile`, `slow`, `slowfile`, `pollfail`,
//! `slowpoll`, `filebytes`, `stallcreate` and one of `reset` / `truncate` (the first named) combine with any
//! outcome.
//!
//! HTTP-level faults (`401`, `402`, `403`, `429`, `500`, `code402`, `code500`, `malformed`) answer
//! at once, before field validation and without creating a task. The others act on the accepted
//! job.
//!
//! Result files:
//! - `[sim:nofile]`: the result URLs are made but nothing is stored behind them (always 404).
//! - `[sim:nofile=N]`: each result file answers 404 to its first N downloads, then is served
//!   normally (`N = 0` is no fault; a value that is not a whole number means plain `nofile`).
//!
//! Delivery faults act on the create's HTTP answer once the request was accepted, i.e. a task
//! was created (see `delivery`); they are ignored when no task is created (HTTP-level faults,
//! validation errors). The task itself runs exactly as without the fault (it can be polled and
//! calls back), and it is billed as its outcome says (a success is billed even though its answer
//! was lost, see `billing`):
//! - `[sim:reset]`: no answer at all: the connection is closed with a TCP reset once the answer
//!   is ready (at once for async creates, after the generation for sync models), without a
//!   single byte of the response written.
//! - `[sim:truncate]`: the answer's status and headers, `Content-Length` of the whole body, then
//!   only the first half of the body, and the connection is closed.
//! - `[sim:stallcreate=SECS]`: the answer is held SECS more seconds (not scaled by the time
//!   scale; shutdown releases it with a 503). Combines with `reset` / `truncate`, which then act
//!   after the stall.
//!
//! The fault table takes `reset`, `truncate`, `nofile` (plain) and `stallcreate` (with `secs`,
//! e.g. `{"rate":0.1,"kind":"stallcreate","secs":30}`) as kinds too.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::api::ApiError;
use super::delivery::{Cut, Delivery};
use super::jobs::Model;
use super::state::{duration_secs, lock, AppState};

/// What a fault does. Names are the directive names (`[sim:<name>]`) and the table's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FaultKind {
    /// The task fails with "Content policy violation".
    #[serde(rename = "policy")]
    Policy,
    /// The task fails with a non-policy error ("Internal generation error").
    #[serde(rename = "fail")]
    Fail,
    /// The call answers HTTP 401 with an error body.
    #[serde(rename = "401")]
    Http401,
    /// The call answers HTTP 402 with an error body.
    #[serde(rename = "402")]
    Http402,
    /// The call answers HTTP 403 with an error body (`{"code":403,"msg":"forbidden"}`).
    #[serde(rename = "403")]
    Http403,
    /// The call answers HTTP 429 with an error body and `retry-after` (7 s, or `[sim:429=SECS]`).
    #[serde(rename = "429")]
    Http429,
    /// The call answers HTTP 500 with an error body.
    #[serde(rename = "500")]
    Http500,
    /// HTTP 200 with body `{"code":402,"msg":"insufficient credits"}`.
    #[serde(rename = "code402")]
    Code402,
    /// HTTP 200 with body `{"code":500,"msg":"internal server error"}`.
    #[serde(rename = "code500")]
    Code500,
    /// HTTP 200 with a truncated, unparseable JSON body.
    #[serde(rename = "malformed")]
    Malformed,
    /// The task never leaves `processing`; a synchronous call never answers.
    #[serde(rename = "stuck")]
    Stuck,
    /// Generation succeeds but the result URLs answer 404.
    #[serde(rename = "nofile")]
    NoFile,
    /// The task is accepted but the connection is reset instead of answering.
    #[serde(rename = "reset")]
    Reset,
    /// The task is accepted and the answer's body is cut short (`Content-Length` too large).
    #[serde(rename = "truncate")]
    Truncate,
    /// The task is accepted at once but the answer is held `secs` seconds.
    #[serde(rename = "stallcreate")]
    StallCreate,
}

impl FaultKind {
    fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    /// Whether the kind is an outcome (`Directives::kind`) rather than a modifier that combines
    /// with outcomes (`nofile`, `reset`, `truncate`, `stallcreate`).
    fn is_outcome(self) -> bool {
        !matches!(
            self,
            Self::NoFile | Self::Reset | Self::Truncate | Self::StallCreate
        )
    }

    /// The immediate HTTP answer for faults that replace the whole response.
    pub fn http_response(self) -> Option<Response> {
        let err = |status: StatusCode, code: u16, msg: &str| ApiError::with(status, code, msg);
        Some(match self {
            Self::Http401 => err(StatusCode::UNAUTHORIZED, 401, "Invalid API key").into_response(),
            Self::Http402 => {
                err(StatusCode::PAYMENT_REQUIRED, 402, "insufficient credits").into_response()
            }
            Self::Http403 => err(StatusCode::FORBIDDEN, 403, "forbidden").into_response(),
            Self::Http429 => {
                let mut res =
                    err(StatusCode::TOO_MANY_REQUESTS, 429, "rate limit exceeded").into_response();
                res.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(7u32));
                res
            }
            Self::Http500 => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                500,
                "internal server error",
            )
            .into_response(),
            Self::Code402 => err(StatusCode::OK, 402, "insufficient credits").into_response(),
            Self::Code500 => err(StatusCode::OK, 500, "internal server error").into_response(),
            Self::Malformed => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"code":200,"msg":"success","data":{"taskId":"cl"#,
            )
                .into_response(),
            Self::Policy
            | Self::Fail
            | Self::Stuck
            | Self::NoFile
            | Self::Reset
            | Self::Truncate
            | Self::StallCreate => return None,
        })
    }
}

/// How a generation ends, once the request itself was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeed,
    Policy,
    Fail,
    Stuck,
}

/// `[sim:nofile]` / `[sim:nofile=N]`: how downloads of the result files miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum NoFile {
    /// Files are served.
    #[default]
    Off,
    /// Nothing is stored behind the result URLs: every download answers 404.
    Always,
    /// Each file answers 404 to its first N downloads, then is served.
    First(u32),
}

/// Everything the prompt (and the fault table) asks of one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directives {
    /// The outcome fault, if any (`nofile`, `reset`, `truncate` and `stallcreate` are kept
    /// apart in `nofile`, `cut` and `stall_create`).
    pub kind: Option<FaultKind>,
    pub nofile: NoFile,
    /// `[sim:reset]` / `[sim:truncate]`: how the create's answer is cut.
    pub cut: Option<Cut>,
    /// `[sim:stallcreate=SECS]`: how long the create's answer is held, not scaled.
    pub stall_create: Option<Duration>,
    /// `[sim:slow=SECS]`: generation latency, not scaled.
    pub slow: Option<Duration>,
    /// `[sim:slowfile=SECS]`: result download delay, not scaled.
    pub slowfile: Option<Duration>,
    /// `[sim:pollfail=N]`: the first N polls of the task answer HTTP 500.
    pub pollfail: u32,
    /// `[sim:slowpoll=SECS]`: every poll of the task answers SECS seconds late (not scaled).
    pub slowpoll: Option<Duration>,
    /// `[sim:filebytes=N]`: PNG result files are exactly N bytes long (see `render`).
    pub file_bytes: Option<u32>,
    /// `[sim:inline]`: gpt-image-2-all's OpenAI-shaped sync answer carries `b64_json` only, no
    /// `url` (the platform's docs show both; a platform that keeps no result file would not).
    pub inline_only: bool,
    /// `[sim:429=SECS]`: the `retry-after` of the 429 answer.
    pub retry_after: Option<u32>,
}

impl Directives {
    /// Reads every `[sim:name]` / `[sim:name=value]` token of `prompt`.
    pub fn parse(prompt: &str) -> Self {
        let mut out = Self::default();
        let lower = prompt.to_ascii_lowercase();
        let mut rest = lower.as_str();
        while let Some(start) = rest.find("[sim:") {
            rest = &rest[start + 5..];
            let Some(end) = rest.find(']') else { break };
            let token = rest[..end].trim();
            rest = &rest[end + 1..];
            let (name, value) = match token.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (token, None),
            };
            let secs = || value.and_then(|v| v.parse::<f64>().ok()).map(duration_secs);
            match name {
                "slow" => out.slow = secs().or(out.slow),
                "slowfile" => out.slowfile = secs().or(out.slowfile),
                "stallcreate" => out.stall_create = secs().or(out.stall_create),
                "slowpoll" => out.slowpoll = secs().or(out.slowpoll),
                "nofile" => {
                    out.nofile = match value.and_then(|v| v.parse().ok()) {
                        Some(0) => NoFile::Off,
                        Some(n) => NoFile::First(n),
                        None => NoFile::Always,
                    };
                }
                "filebytes" => {
                    out.file_bytes = value.and_then(|v| v.parse().ok()).or(out.file_bytes);
                }
                "pollfail" => {
                    out.pollfail = value.and_then(|v| v.parse().ok()).unwrap_or(out.pollfail);
                }
                "429" => {
                    out.retry_after = value.and_then(|v| v.parse().ok()).or(out.retry_after);
                    if out.kind.is_none() {
                        out.kind = Some(FaultKind::Http429);
                    }
                }
                "inline" => out.inline_only = true,
                "reset" => out.cut = out.cut.or(Some(Cut::Reset)),
                "truncate" => out.cut = out.cut.or(Some(Cut::Truncate)),
                _ => match FaultKind::parse(name) {
                    Some(kind) if out.kind.is_none() && kind.is_outcome() => out.kind = Some(kind),
                    _ => {}
                },
            }
        }
        out
    }

    /// The outcome of an accepted request.
    pub fn outcome(&self) -> Outcome {
        match self.kind {
            Some(FaultKind::Policy) => Outcome::Policy,
            Some(FaultKind::Fail) => Outcome::Fail,
            Some(FaultKind::Stuck) => Outcome::Stuck,
            _ => Outcome::Succeed,
        }
    }

    /// The immediate answer replacing the response, for HTTP-level faults.
    pub fn http_fault(&self) -> Option<Response> {
        let mut res = self.kind.and_then(FaultKind::http_response)?;
        if let (Some(FaultKind::Http429), Some(secs)) = (self.kind, self.retry_after) {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        Some(res)
    }

    /// What happens to the create's answer once the task is accepted.
    pub fn delivery(&self) -> Delivery {
        Delivery {
            stall: self.stall_create,
            cut: self.cut,
        }
    }

    /// Generation latency: the `slow` directive, or `normal`.
    pub fn latency(&self, normal: Duration) -> Duration {
        self.slow.unwrap_or(normal)
    }
}

/// One fault table entry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRule {
    /// Probability in `0.0..=1.0` that a request to this model gets the fault.
    pub rate: f64,
    pub kind: FaultKind,
    /// Seconds of a `stallcreate` rule (required there, refused with any other kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
}

/// Model keys the table accepts.
pub(crate) const FAULT_KEYS: [&str; 6] = [
    "gpt-image-2-lite",
    "gpt-image-2-all",
    "gpt-image-2-beta",
    "sparkpix-image",
    "sparkpix-edit",
    "*",
];

/// The per-model fault table (`POST /_sim/faults` replaces it whole).
pub(crate) type FaultTable = BTreeMap<String, FaultRule>;

/// Checks a table sent to `POST /_sim/faults`.
pub(crate) fn validate_table(table: &FaultTable) -> Result<(), String> {
    for (model, rule) in table {
        if !FAULT_KEYS.contains(&model.as_str()) {
            return Err(format!(
                "unknown model key {model:?}; expected one of {FAULT_KEYS:?}"
            ));
        }
        if !(0.0..=1.0).contains(&rule.rate) {
            return Err(format!("rate for {model} must be within 0.0..=1.0"));
        }
        match (rule.kind, rule.secs) {
            (FaultKind::StallCreate, Some(s)) if s.is_finite() && s >= 0.0 => {}
            (FaultKind::StallCreate, _) => {
                return Err(format!(
                    "stallcreate for {model} needs secs, a number of seconds >= 0"
                ))
            }
            (_, Some(_)) => return Err(format!("secs for {model} is only for stallcreate")),
            (_, None) => {}
        }
    }
    Ok(())
}

/// The directives of one request to `model`: the prompt's, completed by a roll on the table.
pub(crate) fn directives_for(table: &FaultTable, model: &str, prompt: &str) -> Directives {
    let mut d = Directives::parse(prompt);
    if d.kind.is_some() {
        return d;
    }
    let Some(rule) = table.get(model).or_else(|| table.get("*")) else {
        return d;
    };
    if rule.rate > 0.0 && fastrand::f64() < rule.rate {
        match rule.kind {
            FaultKind::NoFile => d.nofile = NoFile::Always,
            FaultKind::Reset => d.cut = d.cut.or(Some(Cut::Reset)),
            FaultKind::Truncate => d.cut = d.cut.or(Some(Cut::Truncate)),
            FaultKind::StallCreate => {
                d.stall_create = d.stall_create.or(rule.secs.map(duration_secs));
            }
            kind => d.kind = Some(kind),
        }
    }
    d
}

/// The directives of one request to `model`, with the simulator's current fault table.
pub(crate) fn directives(state: &AppState, model: Model, prompt: &str) -> Directives {
    directives_for(&lock(&state.faults), model.name(), prompt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives() {
        let d = Directives::parse(
            "a cat [SIM:policy] [sim:slow=2.5][sim:nofile] [sim:pollfail=3] [sim:filebytes=768] [sim:slowpoll=0.5]",
        );
        assert_eq!(d.file_bytes, Some(768));
        assert_eq!(d.kind, Some(FaultKind::Policy));
        assert_eq!(d.nofile, NoFile::Always);
        assert_eq!(d.slow, Some(Duration::from_millis(2500)));
        assert_eq!(d.pollfail, 3);
        assert_eq!(d.slowpoll, Some(Duration::from_millis(500)));
        assert_eq!(
            Directives::parse("[sim:code402]").kind,
            Some(FaultKind::Code402)
        );
        assert_eq!(
            Directives::parse("[sim:500]").kind,
            Some(FaultKind::Http500)
        );
        let forbidden = Directives::parse("[sim:403]");
        assert_eq!(forbidden.kind, Some(FaultKind::Http403));
        assert_eq!(forbidden.http_fault().unwrap().status(), 403);
        assert!(Directives::parse("[sim:bogus] [sim:stuck").kind.is_none());
        let d = Directives::parse("[sim:429=12]");
        assert_eq!(
            (d.kind, d.retry_after),
            (Some(FaultKind::Http429), Some(12))
        );
        let res = d.http_fault().unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "12");
        let plain = Directives::parse("[sim:429]").http_fault().unwrap();
        assert_eq!(plain.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn parses_delivery_and_file_directives() {
        let d = Directives::parse("x [sim:truncate] [sim:reset] [sim:stallcreate=1.5] [sim:fail]");
        assert_eq!(d.kind, Some(FaultKind::Fail));
        assert_eq!(d.cut, Some(Cut::Truncate));
        assert_eq!(d.stall_create, Some(Duration::from_millis(1500)));
        assert!(d.http_fault().is_none());
        let d = Directives::parse("[sim:reset]");
        assert_eq!((d.kind, d.cut), (None, Some(Cut::Reset)));
        assert_eq!(d.outcome(), Outcome::Succeed);
        assert_eq!(Directives::parse("[sim:stallcreate]").stall_create, None);
        let nofile = |p: &str| Directives::parse(p).nofile;
        assert_eq!(nofile("[sim:nofile=3]"), NoFile::First(3));
        assert_eq!(nofile("[sim:nofile=0]"), NoFile::Off);
        assert_eq!(nofile("[sim:nofile=x]"), NoFile::Always);
        assert_eq!(nofile("[sim:nofile]"), NoFile::Always);
    }

    #[test]
    fn table_takes_delivery_faults() {
        let rule = |kind, secs| FaultRule {
            rate: 1.0,
            kind,
            secs,
        };
        let mut table = FaultTable::new();
        table.insert("*".into(), rule(FaultKind::StallCreate, Some(2.0)));
        assert!(validate_table(&table).is_ok());
        let d = directives_for(&table, "gpt-image-2-lite", "x [sim:truncate]");
        assert_eq!(d.stall_create, Some(Duration::from_secs(2)));
        assert_eq!(d.cut, Some(Cut::Truncate));
        table.insert("*".into(), rule(FaultKind::Reset, None));
        let d = directives_for(&table, "gpt-image-2-lite", "x");
        assert_eq!((d.kind, d.cut), (None, Some(Cut::Reset)));
        table.insert("*".into(), rule(FaultKind::StallCreate, None));
        assert!(validate_table(&table).is_err());
        table.insert("*".into(), rule(FaultKind::Truncate, Some(1.0)));
        assert!(validate_table(&table).is_err());
    }
}

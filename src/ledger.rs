//! The spend ledger: one row per finished image request, and the usage reports built from it.
//!
//! A row is written for every image request that was authenticated and parsed into an
//! [`ImageRequest`] — successes, refusals by a limit or a budget (status 429, cost 0), invalid
//! requests for the model (400, cost 0) and upstream failures (cost 0: failed generations are not
//! billed). Bodies that do not parse (400 `invalid_body`) and unauthenticated calls get none.
//! A request dropped while the upstream worked (the client hung up) is booked in full with
//! status 499, since the upstream may have billed it.
//! A row never holds a prompt or image bytes.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::ErrorCode;
use crate::model::{ModelId, Usd};
use crate::request::ImageRequest;

/// One finished request.
#[derive(Debug, Clone)]
pub struct Row {
    pub ts_ms: i64,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub request_id: String,
    pub key_id: String,
    pub team: Option<String>,
    /// The public model the client asked for (or the default).
    pub model: String,
    /// The upstream model that produced the images (none when nothing was produced).
    pub served_model: Option<String>,
    pub n: u8,
    pub size: Option<String>,
    pub quality: String,
    pub cost: Usd,
    pub status: u16,
    pub error_code: Option<String>,
    pub latency_ms: i64,
    pub task_ids: String,
    /// The job this row closes: at most one row per job (a unique index).
    pub job_id: Option<String>,
    /// Set on a compensating row (an operator settled an unknown outcome as not billed): the
    /// job it gives money back for. Its cost is booked negative.
    pub adjusts: Option<String>,
    /// A text pass-through call's token usage (none on image rows).
    pub tokens: Option<Tokens>,
    /// A text pass-through call's id: its row is written before the call (booked at the call's
    /// reservation, outcome unknown) and completed in place when the call ends.
    pub call_id: Option<String>,
}

/// Tokens a text call used, as its upstream reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

/// What is known of a request once it is finished.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: u16,
    pub error_code: Option<ErrorCode>,
    pub served: Option<ModelId>,
    pub cost: Usd,
    pub task_ids: Vec<String>,
}

impl Row {
    pub fn new(
        key_id: &str,
        team: Option<&str>,
        public: &str,
        req: &ImageRequest,
        request_id: &str,
        latency_ms: u128,
        outcome: Finished,
    ) -> Self {
        Self {
            served_model: outcome.served.map(|m| m.as_str().to_owned()),
            n: req.n,
            size: req.size.map(|s| s.to_string()),
            quality: req.quality.as_str().to_owned(),
            cost: outcome.cost,
            status: outcome.status,
            error_code: outcome.error_code.map(|c| c.as_str().to_owned()),
            task_ids: outcome.task_ids.join(","),
            ..Self::now(key_id, team, public, request_id, latency_ms)
        }
    }

    /// The row of a text pass-through call: `model` is the text model asked for, `tokens` what
    /// its upstream reported.
    #[allow(
        clippy::too_many_arguments,
        reason = "the columns of one row, each named at the call site"
    )]
    pub fn text(
        key_id: &str,
        team: Option<&str>,
        model: &str,
        request_id: &str,
        latency_ms: u128,
        status: u16,
        error_code: Option<ErrorCode>,
        cost: Usd,
        tokens: Option<Tokens>,
    ) -> Self {
        Self {
            served_model: Some(model.to_owned()),
            cost,
            status,
            error_code: error_code.map(|c| c.as_str().to_owned()),
            tokens,
            ..Self::now(key_id, team, model, request_id, latency_ms)
        }
    }

    /// A row stamped now, with who asked for what; nothing served, nothing spent.
    fn now(
        key_id: &str,
        team: Option<&str>,
        model: &str,
        request_id: &str,
        latency_ms: u128,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            ts_ms: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
            day: utc_day(now),
            request_id: request_id.to_owned(),
            key_id: key_id.to_owned(),
            team: team.map(str::to_owned),
            model: model.to_owned(),
            served_model: None,
            n: 0,
            size: None,
            quality: String::new(),
            cost: Usd::ZERO,
            status: 0,
            error_code: None,
            latency_ms: i64::try_from(latency_ms).unwrap_or(i64::MAX),
            task_ids: String::new(),
            job_id: None,
            adjusts: None,
            tokens: None,
            call_id: None,
        }
    }

    /// The cost as booked: negative on a compensating row.
    pub fn cost_micros(&self) -> i64 {
        let c = i64::try_from(self.cost.micros()).unwrap_or(i64::MAX);
        if self.adjusts.is_some() {
            -c
        } else {
            c
        }
    }
}

/// `YYYY-MM-DD` of `t` in UTC.
pub fn utc_day(t: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate(10);
    s
}

/// `YYYY-MM` of `t` in UTC: the budget month.
pub fn utc_month(t: SystemTime) -> String {
    let mut s = utc_day(t);
    s.truncate(7);
    s
}

/// A usage report's grouping column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Key,
    Team,
    Model,
    ServedModel,
    Day,
    Month,
}

impl GroupBy {
    pub fn column(self) -> &'static str {
        match self {
            Self::Key => "key_id",
            Self::Team => "team",
            Self::Model => "model",
            Self::ServedModel => "served_model",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::Model => "model",
            Self::ServedModel => "served_model",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                serde_json::from_value(Value::String(p.trim().to_owned())).map_err(|_| {
                    format!("unknown group `{p}`: use key, team, model, served_model, day, month")
                })
            })
            .collect()
    }
}

/// Filters and grouping of a usage report. Days are `YYYY-MM-DD`, inclusive.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub group_by: Vec<GroupBy>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub key: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
}

/// One line of a usage report: the group's values, then the sums.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub groups: Vec<String>,
    pub requests: u64,
    pub succeeded: u64,
    pub images: u64,
    pub cost_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The report as JSON: `{"group_by": [...], "rows": [{key, requests, …, cost_usd}], "total": …}`.
pub fn usage_json(group_by: &[GroupBy], rows: &[UsageRow]) -> Value {
    let mut total = Usd::ZERO;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            total = total + Usd(r.cost_micros);
            let mut item = serde_json::Map::new();
            for (g, v) in group_by.iter().zip(&r.groups) {
                item.insert(g.name().to_owned(), json!(v));
            }
            item.insert("requests".into(), json!(r.requests));
            item.insert("succeeded".into(), json!(r.succeeded));
            item.insert("images".into(), json!(r.images));
            item.insert("input_tokens".into(), json!(r.input_tokens));
            item.insert("output_tokens".into(), json!(r.output_tokens));
            item.insert("cost_usd".into(), json!(Usd(r.cost_micros).to_string()));
            item.insert("cost_micros".into(), json!(r.cost_micros));
            Value::Object(item)
        })
        .collect();
    let names: Vec<&str> = group_by.iter().map(|g| g.name()).collect();
    json!({ "group_by": names, "rows": items, "total_cost_usd": total.to_string() })
}

/// The report as CSV with a header line. Costs are exact decimal dollars.
pub fn usage_csv(group_by: &[GroupBy], rows: &[UsageRow]) -> String {
    let mut out = String::new();
    for g in group_by {
        out.push_str(g.name());
        out.push(',');
    }
    out.push_str("requests,succeeded,images,cost_usd,input_tokens,output_tokens\n");
    for r in rows {
        for v in &r.groups {
            out.push_str(&csv_field(v));
            out.push(',');
        }
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.requests,
            r.succeeded,
            r.images,
            Usd(r.cost_micros),
            r.input_tokens,
            r.output_tokens
        ));
    }
    out
}

/// Ids are restricted to safe characters, but quote anything that would break a CSV line.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_day_and_month() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(utc_day(t), "2023-11-14");
        assert_eq!(utc_month(t), "2023-11");
    }

    #[test]
    fn csv_renders_exact_costs() {
        let rows = [UsageRow {
            groups: vec!["alice".into()],
            requests: 3,
            succeeded: 2,
            images: 2,
            cost_micros: 50_000,
            input_tokens: 0,
            output_tokens: 0,
        }];
        assert_eq!(
            usage_csv(&[GroupBy::Key], &rows),
            "key,requests,succeeded,images,cost_usd,input_tokens,output_tokens\nalice,3,2,2,0.05,0,0\n"
        );
        assert!(GroupBy::parse_list("key,day").is_ok());
        assert!(GroupBy::parse_list("nope").is_err());
    }
}

//! Prometheus metrics: **every series imagegate exports is declared in this file**, with its help
//! text, its labels and the reason for its buckets. `GET /metrics` renders them.
//!
//! Rules:
//! - Every name starts with `imagegate_`; `dashboards/imagegate.json` and
//!   `deploy/prometheus/alerts.yml` use only these names (a test scrapes a real gateway and checks).
//! - Label values come from closed sets (`labels.rs`): route templates, [`ModelId`]s, [`Phase`],
//!   [`CallOutcome`], [`Fault`], [`RefusalReason`], [`CircuitGauge`], qualities, HTTP statuses — and
//!   key and team labels only by their configured id. Never a raw key, a prompt or any other
//!   free-form text.
//! - Each registry belongs to one gateway ([`AppState`](crate::state::AppState) holds it), so tests
//!   running several gateways in one process do not share counters.
//! - One typed method per event (below, grouped by who calls it): callers say what happened,
//!   this file decides how it is counted.
//!
//! The HTTP middleware (requests, latency, overhead, bytes sent) is in [`http`].

pub mod http;
mod labels;

use std::time::Duration;

use prometheus::{
    CounterVec, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::Usd;
use crate::model::{ModelId, Quality, TextRoute};
use crate::upstream::failure::FailureKind;

pub use http::UpstreamWait;
pub use labels::{CallOutcome, CircuitGauge, Fault, JobEvent, Phase, RefusalReason, WebhookResult};

/// Seconds, for whole requests, single upstream calls and tasks: a SparkPix answer takes well
/// under a second, a high-quality 4K gpt-image-2-all task about two minutes, and model deadlines
/// go up to a few minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0,
];

/// Seconds of the gateway's own work per request: parsing, validation, base64 and format
/// conversion. Sub-millisecond for most requests; converting a 4K image can take most of a second.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Polls of one async task: a task usually ends within a few polls; a stuck one is polled once
/// per `poll_interval` until its deadline (120 polls for a 2-minute deadline at 1 s).
const POLL_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0,
];

/// The label for a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The team label of a key that belongs to no team.
pub const NO_TEAM: &str = "none";

/// Every series, registered in one registry.
pub struct Metrics {
    registry: Registry,
    // HTTP (the middleware in `http`)
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_in_flight: IntGaugeVec,
    http_sent_bytes: IntCounterVec,
    overhead: HistogramVec,
    errors: IntCounterVec,
    // Upstream (the client and the task engine)
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    downloaded_bytes: IntCounterVec,
    tasks_in_flight: IntGaugeVec,
    task_polls: HistogramVec,
    // Per request on one upstream model (the image handlers)
    task_duration: HistogramVec,
    images: IntCounterVec,
    cost: CounterVec,
    // The text pass-through
    text_tokens: IntCounterVec,
    text_cost: CounterVec,
    // Routing
    failovers: IntCounterVec,
    circuit_state: IntGaugeVec,
    upstream_reachable: IntGauge,
    database_up: IntGauge,
    redis_up: IntGauge,
    // Keys and budgets
    refusals: IntCounterVec,
    budget_used: GaugeVec,
    // Jobs
    jobs: IntCounterVec,
    jobs_in_flight: IntGauge,
    webhooks: IntCounterVec,
}

impl Metrics {
    /// Declares every series. Fails only on a malformed declaration (a bug caught by the tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let r = &registry;
        let info = int_gauge(
            r,
            "imagegate_build_info",
            "Always 1; the running version in `version`.",
            &["version"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Self {
            http_requests: int_counter(r, "imagegate_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                &["route", "method", "status"])?,
            http_duration: histogram(r, "imagegate_http_request_duration_seconds",
                "Time from request to the end of the response body (a streamed answer included).",
                &["route", "status"], LATENCY_BUCKETS)?,
            http_in_flight: int_gauge(r, "imagegate_http_requests_in_flight",
                "HTTP requests being served, by route template.", &["route"])?,
            http_sent_bytes: int_counter(r, "imagegate_http_response_bytes_total",
                "Response body bytes sent to clients, by route template.", &["route"])?,
            overhead: histogram(r, "imagegate_gateway_overhead_seconds",
                "The gateway's own time per request: the total minus the time spent waiting on the upstream (calls, task polling, result downloads).",
                &["route"], OVERHEAD_BUCKETS)?,
            errors: int_counter(r, "imagegate_errors_total",
                "Error answers by fault: caller_*, policy_*, upstream_*, gateway_*.", &["fault"])?,
            upstream_requests: int_counter(r, "imagegate_upstream_requests_total",
                "Calls to the upstream platform by upstream model, phase (create, poll, download) and outcome.",
                &["model", "phase", "outcome"])?,
            upstream_duration: histogram(r, "imagegate_upstream_request_duration_seconds",
                "Duration of one upstream call by upstream model and phase.",
                &["model", "phase"], LATENCY_BUCKETS)?,
            downloaded_bytes: int_counter(r, "imagegate_upstream_downloaded_bytes_total",
                "Result file bytes downloaded from the upstream, by upstream model.", &["model"])?,
            tasks_in_flight: int_gauge(r, "imagegate_upstream_tasks_in_flight",
                "Async upstream tasks being polled, by upstream model.", &["model"])?,
            task_polls: histogram(r, "imagegate_upstream_task_polls",
                "Polls per async upstream task, by upstream model.", &["model"], POLL_BUCKETS)?,
            task_duration: histogram(r, "imagegate_task_duration_seconds",
                "End-to-end time of one request on one upstream model (calls, polling, downloads, encoding) by upstream model, quality and outcome.",
                &["model", "quality", "outcome"], LATENCY_BUCKETS)?,
            images: int_counter(r, "imagegate_images_produced_total",
                "Images returned to clients, by upstream model.", &["model"])?,
            cost: counter(r, "imagegate_cost_usd_total",
                "What the upstream charges for the images produced, in USD, by team, key id and upstream model (prices from `models.<id>`).",
                &["team", "key_id", "model"])?,
            text_tokens: int_counter(r, "imagegate_text_tokens_total",
                "Tokens of text pass-through calls as their upstream reported them, by route (responses, chat_completions) and direction (input, output).",
                &["route", "direction"])?,
            text_cost: counter(r, "imagegate_text_cost_usd_total",
                "What text pass-through calls cost at `[passthrough.prices]`, in USD, by team, key id and route.",
                &["team", "key_id", "route"])?,
            failovers: int_counter(r, "imagegate_failovers_total",
                "Requests moved from one upstream model to another, by the failure that caused it.",
                &["from", "to", "reason"])?,
            circuit_state: int_gauge(r, "imagegate_circuit_state",
                "Circuit breaker state per upstream model: 0 closed, 1 half-open, 2 open.", &["model"])?,
            upstream_reachable: {
                let g = IntGauge::new("imagegate_upstream_reachable",
                    "1 when the last TCP connect to the upstream's host succeeded, 0 when it failed (probed at most every 10 s, on /readyz and /metrics).")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            database_up: {
                let g = IntGauge::new("imagegate_database_up",
                    "1 when the database answered the last check (on /readyz and /metrics), 0 when it did not; always 1 on the embedded SQLite.")?;
                r.register(Box::new(g.clone()))?;
                g.set(1);
                g
            },
            redis_up: {
                let g = IntGauge::new("imagegate_redis_up",
                    "1 when Redis ([cluster] redis_url) answered the last check (on /readyz and /metrics), 0 when it did not; 1 without Redis.")?;
                r.register(Box::new(g.clone()))?;
                g.set(1);
                g
            },
            refusals: int_counter(r, "imagegate_refusals_total",
                "Requests refused by the gateway's limits (429), by team, key id and reason (request_rate, image_rate, concurrency, budget).",
                &["team", "key_id", "reason"])?,
            budget_used: gauge(r, "imagegate_budget_used_ratio",
                "Share of the team's budget spent in the current budget period (1 = exhausted).", &["team"])?,
            jobs: int_counter(r, "imagegate_jobs_total",
                "Job events: created, completed, failed, unknown (the upstream may have billed; booked until resolved), resumed (after a restart), joined_idempotency_key, joined_sdk_retry, replayed.",
                &["event"])?,
            webhooks: int_counter(r, "imagegate_webhook_deliveries_total",
                "Webhook delivery attempts to clients by result: delivered, retrying, gave_up.",
                &["result"])?,
            jobs_in_flight: {
                let g = IntGauge::new("imagegate_jobs_in_flight",
                    "Jobs running in this process (answered or not).")?;
                r.register(Box::new(g.clone()))?;
                g
            },
            registry,
        })
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding only fails on a malformed family, which `new` cannot build.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    // === HTTP: the middleware (`http::Track`) and the panic handler ===

    fn http_in_flight(&self, route: &str) -> InFlight {
        InFlight::new(self.http_in_flight.with_label_values(&[route]))
    }

    fn http_done(&self, done: &http::Done) {
        let status = done.status.as_str();
        self.http_requests
            .with_label_values(&[&done.route, done.method.as_str(), status])
            .inc();
        self.http_duration
            .with_label_values(&[&done.route, status])
            .observe(done.total.as_secs_f64());
        self.overhead
            .with_label_values(&[&done.route])
            .observe(done.total.saturating_sub(done.upstream).as_secs_f64());
        self.http_sent_bytes
            .with_label_values(&[&done.route])
            .inc_by(done.bytes);
    }

    /// An error answer (or an error event in a streamed answer).
    pub fn error(&self, fault: Fault) {
        self.errors.with_label_values(&[fault.as_str()]).inc();
    }

    // === Upstream: the client (`Upstream::send`, result downloads) and the task engine ===

    /// One upstream call ended.
    pub fn upstream_call(
        &self,
        model: ModelId,
        phase: Phase,
        outcome: CallOutcome,
        took: Duration,
    ) {
        let m = model.as_str();
        self.upstream_requests
            .with_label_values(&[m, phase.as_str(), outcome.as_str()])
            .inc();
        self.upstream_duration
            .with_label_values(&[m, phase.as_str()])
            .observe(took.as_secs_f64());
    }

    /// A result file was downloaded.
    pub fn downloaded(&self, model: ModelId, bytes: usize) {
        self.downloaded_bytes
            .with_label_values(&[model.as_str()])
            .inc_by(bytes as u64);
    }

    /// An async task is being polled until the guard drops.
    pub fn task_in_flight(&self, model: ModelId) -> InFlight {
        InFlight::new(self.tasks_in_flight.with_label_values(&[model.as_str()]))
    }

    /// An async task ended (completed, failed or timed out) after `polls` polls.
    pub fn task_polls(&self, model: ModelId, polls: u32) {
        self.task_polls
            .with_label_values(&[model.as_str()])
            .observe(f64::from(polls));
    }

    // === Requests on an upstream model: the image handlers ===

    /// One request's work on one upstream model ended (images ready, or failed).
    pub fn task_done(
        &self,
        model: ModelId,
        quality: Quality,
        outcome: CallOutcome,
        took: Duration,
    ) {
        self.task_duration
            .with_label_values(&[model.as_str(), quality.as_str(), outcome.as_str()])
            .observe(took.as_secs_f64());
    }

    /// Images returned to a client.
    pub fn images_produced(&self, model: ModelId, n: usize) {
        self.images
            .with_label_values(&[model.as_str()])
            .inc_by(n as u64);
    }

    /// What the images of one request cost. `team` and `key_id` are configured ids (never a key);
    /// a key without a team is counted under [`NO_TEAM`].
    pub fn cost(&self, team: Option<&str>, key_id: &str, model: ModelId, usd: Usd) {
        self.cost
            .with_label_values(&[team.unwrap_or(NO_TEAM), key_id, model.as_str()])
            .inc_by(usd.as_dollars());
    }

    /// A text call's tokens and cost.
    pub fn text_usage(
        &self,
        route: TextRoute,
        team: Option<&str>,
        key_id: &str,
        tokens: (u64, u64),
        usd: Usd,
    ) {
        let r = route.label();
        self.text_tokens
            .with_label_values(&[r, "input"])
            .inc_by(tokens.0);
        self.text_tokens
            .with_label_values(&[r, "output"])
            .inc_by(tokens.1);
        self.text_cost
            .with_label_values(&[team.unwrap_or(NO_TEAM), key_id, r])
            .inc_by(usd.as_dollars());
    }

    // === Routing ===

    /// A request left `from` for `to` because of `reason`.
    pub fn failover(&self, from: ModelId, to: ModelId, reason: FailureKind) {
        self.failovers
            .with_label_values(&[from.as_str(), to.as_str(), reason.as_str()])
            .inc();
    }

    /// A model's circuit changed state. Every enabled model starts `Closed`.
    pub fn circuit_state(&self, model: ModelId, state: CircuitGauge) {
        self.circuit_state
            .with_label_values(&[model.as_str()])
            .set(state as i64);
    }

    /// The last upstream reachability probe's answer.
    pub fn upstream_reachable(&self, reachable: bool) {
        self.upstream_reachable.set(i64::from(reachable));
    }

    pub fn redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    // === Keys and budgets ===

    /// The gateway's limits refused a request.
    pub fn refused(&self, team: Option<&str>, key_id: &str, reason: RefusalReason) {
        self.refusals
            .with_label_values(&[team.unwrap_or(NO_TEAM), key_id, reason.as_str()])
            .inc();
    }

    /// The share of `team`'s budget spent in the current period (0.0–1.0, may exceed 1).
    pub fn budget_used(&self, team: &str, ratio: f64) {
        self.budget_used.with_label_values(&[team]).set(ratio);
    }

    // === Jobs ===

    pub fn job(&self, event: JobEvent) {
        self.jobs.with_label_values(&[event.as_str()]).inc();
    }

    pub fn webhook(&self, result: WebhookResult) {
        self.webhooks.with_label_values(&[result.as_str()]).inc();
    }

    /// A job running in this process, counted while the guard lives.
    pub fn job_running(&self) -> InFlight {
        InFlight::new(self.jobs_in_flight.clone())
    }
}

/// Keeps a gauge incremented while alive.
pub struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === declaration helpers ===

fn int_counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let m = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<CounterVec> {
    let m = CounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn int_gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let m = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let m = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_declared_series_with_help() {
        let m = Metrics::new().unwrap();
        m.error(Fault::CallerNotFound);
        m.cost(None, "demo", ModelId::Lite, Usd(40_000));
        m.cost(None, "demo", ModelId::Lite, Usd(40_000));
        m.circuit_state(ModelId::Beta, CircuitGauge::Open);
        let text = m.render();
        assert!(
            text.contains("imagegate_errors_total{fault=\"caller_not_found\"} 1"),
            "{text}"
        );
        assert!(text.contains("imagegate_cost_usd_total{key_id=\"demo\",model=\"gpt-image-2-lite\",team=\"none\"} 0.08"), "{text}");
        assert!(
            text.contains("imagegate_circuit_state{model=\"gpt-image-2-beta\"} 2"),
            "{text}"
        );
        assert!(text.contains("# HELP imagegate_build_info "), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("imagegate_"), "{line}");
        }
    }

    #[test]
    fn in_flight_guards_decrement() {
        let m = Metrics::new().unwrap();
        let a = m.task_in_flight(ModelId::Beta);
        let b = m.task_in_flight(ModelId::Beta);
        drop(a);
        assert!(m
            .render()
            .contains("imagegate_upstream_tasks_in_flight{model=\"gpt-image-2-beta\"} 1"));
        drop(b);
        assert!(m
            .render()
            .contains("imagegate_upstream_tasks_in_flight{model=\"gpt-image-2-beta\"} 0"));
    }
}

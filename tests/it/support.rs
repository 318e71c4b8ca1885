//! Test support: a simulator and a gateway per test, each on its own ephemeral port.

use imagegate::model::ModelId;
use std::time::Duration;

use imagegate::config::Config;
use imagegate_sim::SimConfig;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const KEY: &str = imagegate::demo::DEMO_KEY;
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-7f3a9c";
/// The admin key tests configure with [`with_admin`].
pub const ADMIN_KEY: &str = "sk-admin-0123456789abcdef";

/// Sets the admin key.
pub fn with_admin(c: &mut Config) {
    c.admin.key = Some(ADMIN_KEY.to_owned());
}

pub struct Env {
    pub gateway: String,
    pub sim: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    sim_stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
    pub fn param(&self) -> &str {
        self.body["error"]["param"].as_str().unwrap_or_default()
    }
}

pub async fn start() -> Env {
    start_with(|_| {}).await
}

/// Starts a simulator (time scale 0.002: a 2-minute task takes 0.24 s) and a gateway in front of
/// it; `tweak` edits the gateway config first.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Env {
    start_scaled(0.002, tweak).await
}

/// The demo polls tasks every second with the simulator at time scale 0.05; at `time_scale`,
/// the same interval relative to the tasks' lengths (40 ms at the tests' 0.002). A test that
/// counts polls sets `poll_interval` itself.
pub fn poll_interval(time_scale: f64) -> Duration {
    Duration::from_secs_f64(time_scale / 0.05)
}

pub async fn start_scaled(time_scale: f64, tweak: impl FnOnce(&mut Config)) -> Env {
    let stop = CancellationToken::new();
    let sim_stop = CancellationToken::new();
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = sim_listener.local_addr().unwrap();
    let sim_config = SimConfig {
        api_key: UPSTREAM_KEY.to_owned(),
        public_base_url: None,
        time_scale,
    };
    tokio::spawn(imagegate_sim::serve(
        sim_config,
        sim_listener,
        sim_stop.clone().cancelled_owned(),
    ));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = imagegate::demo::demo_config(sim_addr, UPSTREAM_KEY, addr).unwrap();
    for id in [ModelId::All, ModelId::Beta, ModelId::Lite] {
        config.models.get_mut(id).first_poll_delay = Duration::from_millis(30);
    }
    for id in [ModelId::All, ModelId::Beta] {
        config.models.get_mut(id).poll_interval = poll_interval(time_scale);
    }
    tweak(&mut config);
    // Checked as a deployment's file would be, but for the poll interval: the config accepts
    // none under 1 s (it spares the real platform), while the simulator's tasks are over long
    // before that. `imagegate::serve` takes the config as given.
    let mut checked = config.clone();
    for id in [ModelId::All, ModelId::Beta] {
        let m = checked.models.get_mut(id);
        m.poll_interval = m.poll_interval.max(Duration::from_secs(1));
    }
    checked.validate().unwrap();
    let server = tokio::spawn(imagegate::serve(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ));
    Env {
        gateway: format!("http://{addr}"),
        sim: format!("http://{sim_addr}"),
        http: reqwest::Client::new(),
        stop,
        sim_stop,
        server: Some(server),
    }
}

impl Env {
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        let res = self.post_raw(path).json(&body).send().await.unwrap();
        Self::read(res).await
    }

    /// A POST to the gateway with the client key, for tests that shape the body themselves.
    pub fn post_raw(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.gateway))
            .bearer_auth(KEY)
    }

    /// A call to the admin API with the admin key.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Self::read(rb.send().await.unwrap()).await
    }

    /// A generation with another client key.
    pub async fn generate_as(&self, key: &str, body: Value) -> Answer {
        let res = self
            .http
            .post(format!("{}/v1/images/generations", self.gateway))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::read(res).await
    }

    pub async fn generate(&self, body: Value) -> Answer {
        self.post("/v1/images/generations", body).await
    }

    pub async fn post_form(&self, form: reqwest::multipart::Form) -> Answer {
        let res = self
            .post_raw("/v1/images/edits")
            .multipart(form)
            .send()
            .await
            .unwrap();
        Self::read(res).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let res = self
            .http
            .get(format!("{}{path}", self.gateway))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        Self::read(res).await
    }

    pub async fn read(res: reqwest::Response) -> Answer {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Every request the simulator received on `/api/v1/*`.
    pub async fn upstream_requests(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/requests", self.sim))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn upstream_stats(&self) -> Value {
        self.http
            .get(format!("{}/_sim/stats", self.sim))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn set_faults(&self, faults: Value) {
        let res = self
            .http
            .post(format!("{}/_sim/faults", self.sim))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    /// Create calls the simulator accepted (generations and edits, sync or task).
    pub async fn creates(&self) -> u64 {
        self.upstream_stats().await["creates"]
            .as_u64()
            .unwrap_or_default()
    }

    /// Waits (on the simulator's request log, not a clock) until the upstream has a request.
    pub async fn until_upstream_called(&self) {
        self.until_upstream_has(1).await;
    }

    /// Waits (on the simulator's request log) until the upstream has `n` requests.
    pub async fn until_upstream_has(&self, n: usize) {
        for _ in 0..1000 {
            if self.upstream_requests().await.len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the upstream never got {n} requests");
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.server.take() {
            Some(h) => h.await.unwrap(),
            None => Ok(()),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
        self.sim_stop.cancel();
    }
}

/// A real PNG of the given size.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgba);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![128u8; (width * height * 4) as usize])
            .unwrap();
    }
    out
}

pub fn png_part(name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(png(32, 32))
        .file_name(name.to_owned())
        // The SDKs often send octet-stream: the gateway must sniff bytes, not trust this.
        .mime_str("application/octet-stream")
        .unwrap()
}

/// Decodes `data[i].b64_json` and returns the bytes.
pub fn b64_image(body: &Value, i: usize) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = body["data"][i]["b64_json"].as_str().expect("b64_json");
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Requests the simulator got for `path`.
pub fn on_path<'a>(reqs: &'a [Value], path: &str) -> Vec<&'a Value> {
    reqs.iter().filter(|r| r["path"] == json!(path)).collect()
}

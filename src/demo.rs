//! `imagegate demo`: the simulator and the gateway on loopback with a ready configuration, so a
//! newcomer sees the whole path work with no upstream account.
//!
//! Prints a human example and one machine-readable line,
//! `IMAGEGATE_READY {"gateway_url","simulator_url","api_key","limited_api_key","admin_key"}`, that
//! the SDK end-to-end tests read (`limited_api_key` allows one request per minute, `admin_key`
//! opens the admin API and the `imagegate keys …` commands).
//!
//! `run` needs the simulator and exists only with the `demo` feature (on by default); the
//! configuration and the keys are always here, for the tests that start a gateway like the
//! demo's.

use std::net::SocketAddr;

use crate::config::Config;

/// The client key the demo accepts.
pub const DEMO_KEY: &str = "sk-imagegate-demo";

/// A second demo key limited to one request per minute, to see a 429 (`rate_limit_exceeded`).
pub const DEMO_LIMITED_KEY: &str = "sk-imagegate-demo-limited";

/// The secret that signs the demo key's webhooks (`callback_url` on a request).
pub const DEMO_WEBHOOK_SECRET: &str = "whsec_aW1hZ2VnYXRlLWRlbW8td2ViaG9va3M=";

/// The demo's admin key (`[admin]`), for the admin API and the CLI.
pub const DEMO_ADMIN_KEY: &str = "sk-imagegate-demo-admin";

#[cfg(feature = "demo")]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub sim_listen: SocketAddr,
    /// Simulated latency multiplier (1.0 = the platform's real latencies).
    pub time_scale: f64,
}

/// The gateway configuration the demo uses, pointed at a simulator on `sim`.
pub fn demo_config(
    sim: SocketAddr,
    upstream_key: &str,
    listen: SocketAddr,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[server]
listen = "{listen}"
drain_timeout = "5s"

[upstream]
base_url = "http://{sim}"
api_key = "{upstream_key}"

[results]
allowed_hosts = ["{sim}"]

# The simulator answers on this machine, over plain http.
[urls]
allow_http = true
allow_loopback = true

[admin]
key = "{DEMO_ADMIN_KEY}"

[[keys]]
id = "demo"
key = "{DEMO_KEY}"
webhook_secret = "{DEMO_WEBHOOK_SECRET}"

[[keys]]
id = "demo-limited"
key = "{DEMO_LIMITED_KEY}"
requests_per_minute = 1

[models.gpt-image-2-all]
first_poll_delay = "300ms"
poll_interval = "1s"

[models.gpt-image-2-beta]
first_poll_delay = "300ms"
poll_interval = "1s"

# Fault directives in demo prompts (`[sim:500]`) fail one request; they should not take a
# model out of rotation for the requests that follow.
[routing.circuit]
enabled = false
"#
    );
    Ok(Config::from_toml(&text, &|_| None)?)
}

/// Runs simulator + gateway until `shutdown` resolves.
#[cfg(feature = "demo")]
pub async fn run(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use std::io::Write as _;

    use imagegate_sim::SimConfig;
    use tokio::net::TcpListener;
    use tokio_util::sync::CancellationToken;

    let sim_listener = TcpListener::bind(opts.sim_listen).await?;
    let sim_addr = sim_listener.local_addr()?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    let upstream_key = format!("sk-sim-{}", uuid::Uuid::new_v4().simple());
    let mut config = demo_config(sim_addr, &upstream_key, addr)?;
    // Jobs, keys and the ledger in a directory of their own, removed when the demo stops.
    let data =
        std::env::temp_dir().join(format!("imagegate-demo-{}", uuid::Uuid::new_v4().simple()));
    config.data.dir = Some(data.clone());

    let stop = CancellationToken::new();
    #[allow(
        clippy::disallowed_methods,
        reason = "the demo owns the simulator's task: it is cancelled and awaited below"
    )]
    let sim = tokio::spawn(imagegate_sim::serve(
        SimConfig {
            api_key: upstream_key,
            public_base_url: None,
            time_scale: opts.time_scale,
        },
        sim_listener,
        stop.clone().cancelled_owned(),
    ));

    let gateway_url = format!("http://{addr}/v1");
    let ready = serde_json::json!({
        "gateway_url": gateway_url,
        "simulator_url": format!("http://{sim_addr}"),
        "api_key": DEMO_KEY,
        "limited_api_key": DEMO_LIMITED_KEY,
        "admin_key": DEMO_ADMIN_KEY,
        "webhook_secret": DEMO_WEBHOOK_SECRET,
    });
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "imagegate demo: gateway on {gateway_url}, simulated upstream on http://{sim_addr} (time scale {})\n\n\
         Try it with the OpenAI Python SDK:\n\n\
         from openai import OpenAI\n\
         client = OpenAI(base_url=\"{gateway_url}\", api_key=\"{DEMO_KEY}\")\n\
         img = client.images.generate(model=\"gpt-image-2-all\", prompt=\"a lighthouse at dusk\", size=\"1024x1024\")\n\
         open(\"out.png\", \"wb\").write(__import__(\"base64\").b64decode(img.data[0].b64_json))\n\n\
         or curl:\n\n\
         curl {gateway_url}/images/generations -H 'Authorization: Bearer {DEMO_KEY}' \\\n  \
         -H 'Content-Type: application/json' -d '{{\"model\":\"sparkpix\",\"prompt\":\"a cat\",\"response_format\":\"url\"}}'\n\n\
         Admin key {DEMO_ADMIN_KEY}, for the admin API and the CLI:\n\n\
         imagegate keys list --admin-key {DEMO_ADMIN_KEY} --url http://{addr}\n",
        opts.time_scale
    )?;
    writeln!(out, "IMAGEGATE_READY {ready}")?;
    out.flush()?;
    drop(out);

    let result = crate::serve(config, listener, shutdown).await;
    stop.cancel();
    let _ = sim.await;
    if let Err(e) = std::fs::remove_dir_all(&data) {
        tracing::warn!(dir = %data.display(), error = %e, "could not remove the demo's data directory");
    }
    result
}

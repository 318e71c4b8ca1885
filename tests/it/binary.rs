//! Black-box tests of the real binary: CLI, config errors, that no secret shows up in responses,
//! logs or `/metrics`, and the JSON log format.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::{Env, KEY, UPSTREAM_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_imagegate");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let out = Command::new(BIN)
        .args(["check-config", "config/imagegate.example.toml"])
        .env("IMAGEGATE_UPSTREAM_KEY", "k")
        .env("IMAGEGATE_CI_KEY", "sk-ci-0123456789")
        .env("OPENAI_API_KEY", "sk-text")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write_config(
        "[upstream]\nbase_url = \"http://x\"\napi_key = \"k\"\n[[keys]]\nid = \"a\"\nkey = \"sk-aaaaaaaa\"\n[server]\nlisten = \"127.0.0.1:0\"\nmax_body = 5\n",
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(bad.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("server") && err.contains("max_body"), "{err}");

    let bad = write_config("[upstream]\nbase_url = \"ftp://x\"\napi_key = \"${NOPE_NOT_SET}\"\n");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(bad.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("NOPE_NOT_SET"),
        "{err}"
    );
}

#[test]
fn hash_key_refuses_a_secret_shorter_than_a_config_key() {
    let min = imagegate::config::MIN_CLIENT_KEY_LEN;
    let short = "k".repeat(min - 1);
    let out = Command::new(BIN)
        .args(["hash-key", &short])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains(&format!("at least {min} characters")), "{err}");

    let ok = "k".repeat(min);
    let out = Command::new(BIN).args(["hash-key", &ok]).output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        hex::encode(imagegate::auth::digest(&ok)),
        "{printed}"
    );
}

/// `imagegate demo` prints an admin key on its READY line that the CLI can use, with the
/// `/v1` URL the demo prints and the flags after the subcommand.
#[cfg(feature = "demo")]
#[test]
fn demo_admin_key_works_with_the_cli() {
    let mut demo = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(json) = line.strip_prefix("IMAGEGATE_READY ") {
                let ready: Value = serde_json::from_str(json).unwrap();
                let _ = ready_tx.send((ready, banner));
                return;
            }
            banner.push_str(&line);
            banner.push('\n');
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(30));
    let result = std::panic::catch_unwind(|| {
        let (ready, banner) = ready.expect("the demo printed IMAGEGATE_READY");
        let admin_key = ready["admin_key"].as_str().unwrap();
        assert_eq!(admin_key, imagegate::demo::DEMO_ADMIN_KEY);
        assert!(
            banner.contains(&format!(
                "imagegate keys list --admin-key {admin_key} --url http://"
            )),
            "{banner}"
        );
        let gateway_url = ready["gateway_url"].as_str().unwrap();
        assert!(gateway_url.ends_with("/v1"), "{gateway_url}");
        let out = Command::new(BIN)
            .args([
                "keys",
                "list",
                "--admin-key",
                admin_key,
                "--url",
                gateway_url,
            ])
            .env_remove("IMAGEGATE_URL")
            .env_remove("IMAGEGATE_ADMIN_KEY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<&str> = listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["demo", "demo-limited"], "{listed}");
    });
    demo.kill().unwrap();
    demo.wait().unwrap();
    reader.join().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A simulator in this process, on an ephemeral port, accepting [`UPSTREAM_KEY`].
async fn start_sim(stop: &CancellationToken) -> std::net::SocketAddr {
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim_listener.local_addr().unwrap();
    let sim_config = imagegate_sim::SimConfig {
        api_key: UPSTREAM_KEY.to_owned(),
        public_base_url: None,
        time_scale: 0.002,
    };
    tokio::spawn(imagegate_sim::serve(
        sim_config,
        sim_listener,
        stop.clone().cancelled_owned(),
    ));
    sim
}

/// The gateway config for the binary tests: the upstream key comes from the environment, logs at
/// `trace` so that every line that could leak is written.
fn gateway_config(sim: std::net::SocketAddr, logging: &str) -> tempfile::NamedTempFile {
    write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{sim}\"\napi_key = \"${{TEST_UPSTREAM_KEY}}\"\n\
         [results]\nallowed_hosts = [\"{sim}\"]\n[urls]\nallow_http = true\nallow_loopback = true\n[logging]\nfilter = \"trace\"\n{logging}\n[[keys]]\nid = \"t\"\nkey = \"{KEY}\"\n\
         [models.gpt-image-2-beta]\nfirst_poll_delay = \"10ms\"\npoll_interval = \"1s\"\n"
    ))
}

/// `imagegate serve` as a child process, its stderr captured line by line.
struct Gateway {
    /// The working directory: `./imagegate-data` is created in it.
    _dir: tempfile::TempDir,
    child: std::process::Child,
    logs: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
    addr: String,
}

impl Gateway {
    fn spawn(config: &tempfile::NamedTempFile) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .current_dir(dir.path())
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .env("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                if line.contains("imagegate listening") {
                    // `addr=127.0.0.1:1234` (human) or `"addr":"127.0.0.1:1234"` (JSON).
                    let addr: String = line
                        .split("addr")
                        .nth(1)
                        .unwrap()
                        .trim_start_matches(['=', '"', ':'])
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    let _ = addr_tx.send(addr);
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway reported its address");
        Self {
            _dir: dir,
            child,
            logs,
            reader,
            addr,
        }
    }

    /// SIGTERM, a clean exit, and everything it logged.
    fn stop(mut self) -> String {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "clean exit on SIGTERM"
        );
        self.reader.join().unwrap();
        let logs = self.logs.lock().unwrap().clone();
        logs
    }
}

#[tokio::test]
async fn upstream_key_never_appears_in_responses_or_logs() {
    let stop = CancellationToken::new();
    let sim = start_sim(&stop).await;
    let config = gateway_config(sim, "");
    let gateway = Gateway::spawn(&config);
    let addr = gateway.addr.clone();
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    for (model, prompt) in [
        ("sparkpix", "ok"),
        ("gpt-image-2-lite", "x [sim:401]"),
        ("gpt-image-2-all", "x [sim:malformed]"),
        ("gpt-image-2-beta", "x [sim:fail]"),
        ("gpt-image-2-beta", "ok"),
        ("gpt-image-2-lite", "x [sim:402]"),
    ] {
        let res = http
            .post(format!("http://{addr}/v1/images/generations"))
            .bearer_auth(KEY)
            .json(&json!({"model": model, "prompt": prompt, "size": "1024x1024"}))
            .send()
            .await
            .unwrap();
        let a = Env::read(res).await;
        bodies.push_str(&format!("{:?} {}\n", a.headers, a.body));
    }
    // A client that gives up while its task runs: the job goes on; stopping the gateway leaves
    // it in the store, logged, not dropped silently.
    let gave_up = http
        .post(format!("http://{addr}/v1/images/generations"))
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(400))
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "x [sim:stuck]"}))
        .send()
        .await;
    assert!(gave_up.is_err());
    let logs = gateway.stop();
    stop.cancel();

    assert!(
        logs.contains("upstream_auth_failed"),
        "the logs were captured: {logs}"
    );
    assert!(
        logs.matches(" request").count() >= 6,
        "one access line per request: {logs}"
    );
    assert!(!logs.contains(UPSTREAM_KEY), "upstream key in logs");
    assert!(
        logs.contains("the next start resumes it"),
        "abandoned task logged: {logs}"
    );
    assert!(!bodies.contains(UPSTREAM_KEY), "upstream key in responses");
    assert!(!logs.contains(KEY), "client key in logs");
}

#[tokio::test]
async fn json_logs_carry_request_ids_and_no_secret_reaches_logs_or_metrics() {
    const PROMPT: &str = "a lighthouse PROMPT-9c2e-private";
    const WRONG_KEY: &str = "sk-not-a-configured-key-51b7";
    let stop = CancellationToken::new();
    let sim = start_sim(&stop).await;
    let config = gateway_config(sim, "format = \"json\"");
    let gateway = Gateway::spawn(&config);
    let base = format!("http://{}", gateway.addr);
    let http = reqwest::Client::new();
    let post = |id: &str, body: Value| {
        http.post(format!("{base}/v1/images/generations"))
            .bearer_auth(KEY)
            .header("x-request-id", id)
            .json(&body)
    };
    let res = post("req-ok-1", json!({"model": "sparkpix", "prompt": PROMPT}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for (id, model, prompt) in [
        ("req-401", "gpt-image-2-lite", "x [sim:401]"),
        ("req-500", "gpt-image-2-all", "x [sim:500]"),
        ("req-policy", "gpt-image-2-beta", "x [sim:policy]"),
    ] {
        let res = post(
            id,
            json!({"model": model, "prompt": format!("{PROMPT} {prompt}")}),
        )
        .send()
        .await
        .unwrap();
        assert!(res.status().is_client_error() || res.status().is_server_error());
    }
    let res = http
        .post(format!("{base}/v1/images/generations"))
        .bearer_auth(WRONG_KEY)
        .json(&json!({"prompt": PROMPT}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let gave_up = post(
        "req-abandoned",
        json!({"model": "gpt-image-2-beta", "prompt": "x [sim:stuck]"}),
    )
    .timeout(Duration::from_millis(400))
    .send()
    .await;
    assert!(gave_up.is_err());
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = gateway.stop();
    stop.cancel();

    for secret in [UPSTREAM_KEY, KEY, WRONG_KEY, "PROMPT-9c2e"] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
    assert!(metrics.contains("imagegate_images_produced_total{model=\"sparkpix\"} 1"));

    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "request" && l["fields"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {logs}"))
    };
    let ok = &access("req-ok-1")["fields"];
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["key_id"], "t");
    assert_eq!(ok["model"], "sparkpix");
    assert_eq!(ok["upstream_model"], "sparkpix");
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["cost_usd"], "0.01");
    for field in ["latency_ms", "upstream_ms", "task_ids", "path", "method"] {
        assert!(!ok[field].is_null(), "{field} in {ok}");
    }
    assert!(ok.get("prompt").is_none(), "prompts are off by default");
    assert_eq!(access("req-500")["fields"]["error_code"], "upstream_error");
    assert_eq!(
        access("req-policy")["fields"]["error_code"],
        "moderation_blocked"
    );
    assert_eq!(
        access("req-401")["fields"]["error_code"],
        "upstream_auth_failed"
    );
    // A line logged while serving a request (not by the access log) names the request.
    let abandoned = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the next start resumes it"))
        })
        .unwrap_or_else(|| panic!("abandoned task logged: {logs}"));
    assert_eq!(
        abandoned["span"]["request_id"], "req-abandoned",
        "{abandoned}"
    );
}

#[tokio::test]
async fn log_prompts_puts_the_prompt_in_the_access_line() {
    let stop = CancellationToken::new();
    let sim = start_sim(&stop).await;
    let config = gateway_config(sim, "log_prompts = true");
    let gateway = Gateway::spawn(&config);
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/images/generations", gateway.addr))
        .bearer_auth(KEY)
        .json(
            &json!({"model": "sparkpix", "prompt": "an opted-in prompt", "response_format": "url"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let logs = gateway.stop();
    stop.cancel();
    let access = logs
        .lines()
        .find(|l| l.contains(" request request_id="))
        .unwrap_or_else(|| panic!("an access line: {logs}"));
    assert!(access.contains("prompt=\"an opted-in prompt\""), "{access}");
}

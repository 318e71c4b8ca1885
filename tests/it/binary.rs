//! Black-box tests of the real binary: CLI, config errors, and that the upstream key never shows
//! up in responses or logs.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
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

#[tokio::test]
async fn upstream_key_never_appears_in_responses_or_logs() {
    let stop = CancellationToken::new();
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = sim_listener.local_addr().unwrap();
    let sim_config = imagegate::sim::SimConfig {
        api_key: UPSTREAM_KEY.to_owned(),
        public_base_url: None,
        time_scale: 0.002,
    };
    tokio::spawn(imagegate::sim::serve(
        sim_config,
        sim_listener,
        stop.clone().cancelled_owned(),
    ));

    let config = write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"http://{sim}\"\napi_key = \"${{TEST_UPSTREAM_KEY}}\"\n\
         [results]\nallowed_hosts = [\"{sim}\"]\n[logging]\nfilter = \"trace\"\n[[keys]]\nid = \"t\"\nkey = \"{KEY}\"\n\
         [models.gpt-image-2-beta]\nfirst_poll_delay = \"10ms\"\npoll_interval = \"1s\"\n"
    ));
    let mut child = Command::new(BIN)
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
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
                let _ = addr_tx.send(addr);
            }
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway reported its address");
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
    // A client that gives up while its task runs: the abandoned task is logged, not dropped silently.
    let gave_up = http
        .post(format!("http://{addr}/v1/images/generations"))
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(400))
        .json(&json!({"model": "gpt-image-2-beta", "prompt": "x [sim:stuck]"}))
        .send()
        .await;
    assert!(gave_up.is_err());
    for _ in 0..200 {
        if logs
            .lock()
            .unwrap()
            .contains("before its upstream task finished")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    reader.join().unwrap();
    stop.cancel();

    let logs = logs.lock().unwrap().clone();
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
        logs.contains("before its upstream task finished"),
        "abandoned task logged: {logs}"
    );
    assert!(!bodies.contains(UPSTREAM_KEY), "upstream key in responses");
    assert!(!logs.contains(KEY), "client key in logs");
}

//! Client keys and teams through the admin API: creation, revocation, persistence, the CLI.

use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::support::{start_with, with_admin, ADMIN_KEY, KEY};

fn sparkpix() -> serde_json::Value {
    json!({"model": "sparkpix", "prompt": "x", "response_format": "url"})
}

#[tokio::test]
async fn admin_api_refuses_without_the_admin_key() {
    let env = start_with(with_admin).await;
    for path in [
        "/admin/keys",
        "/admin/usage",
        "/admin/spend",
        "/admin/upstream-keys",
    ] {
        let url = format!("{}{path}", env.gateway);
        let none = env.http.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{path}");
        let client = env.http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(client.status(), 401, "{path}");
        assert_eq!(
            env.admin(Method::GET, path, None).await.status,
            200,
            "{path}"
        );
    }
    // The admin key does not open the image API.
    let res = env
        .http
        .post(format!("{}/v1/images/generations", env.gateway))
        .bearer_auth(ADMIN_KEY)
        .json(&sparkpix())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn created_key_works_and_revocation_is_immediate() {
    let env = start_with(with_admin).await;
    let team = env
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"id": "design", "monthly_budget_usd": 5})),
        )
        .await;
    assert_eq!(team.status, 201, "{:?}", team.body);
    let created = env
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "bob", "team": "design", "models": ["sparkpix"], "monthly_budget_usd": 1})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-ig-") && secret.len() == 70);

    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 200);
    let other = env
        .generate_as(&secret, json!({"model": "gpt-image-2-lite", "prompt": "x"}))
        .await;
    assert_eq!((other.status, other.code()), (403, "model_not_allowed"));

    // The secret is never shown again.
    let got = env.admin(Method::GET, "/admin/keys/bob", None).await;
    assert!(got.body.get("secret").is_none() && !got.body.to_string().contains(&secret));
    assert_eq!(got.body["spend"]["month_spent_usd"], "0.01");

    let off = env
        .admin(Method::POST, "/admin/keys/bob/disable", None)
        .await;
    assert_eq!(off.status, 200);
    let refused = env.generate_as(&secret, sparkpix()).await;
    assert_eq!((refused.status, refused.code()), (401, "invalid_api_key"));
    env.admin(Method::POST, "/admin/keys/bob/enable", None)
        .await;
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 200);
    let patched = env
        .admin(
            Method::PATCH,
            "/admin/keys/bob",
            Some(json!({"expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 401);
    assert_eq!(
        env.admin(Method::DELETE, "/admin/keys/bob", None)
            .await
            .status,
        200
    );
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 401);
    assert_eq!(
        env.admin(Method::GET, "/admin/keys/bob", None).await.status,
        404
    );

    // Static keys are the config file's.
    let stat = env
        .admin(Method::POST, "/admin/keys/demo/disable", None)
        .await;
    assert_eq!(stat.status, 409);
    let bad = env
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"team": "nope", "rpm": 3})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rpm"),
        "{:?}",
        bad.body
    );
}

#[tokio::test]
async fn deleting_a_team_with_keys_needs_force() {
    let env = start_with(with_admin).await;
    env.admin(Method::POST, "/admin/teams", Some(json!({"id": "ops"})))
        .await;
    let created = env
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "erin", "team": "ops"})),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);

    let refused = env.admin(Method::DELETE, "/admin/teams/ops", None).await;
    assert_eq!((refused.status, refused.code()), (409, "conflict"));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1 key") && message.contains("erin") && message.contains("force=true"),
        "{message}"
    );
    assert_eq!(
        env.admin(Method::GET, "/admin/teams/ops", None)
            .await
            .status,
        200
    );

    let forced = env
        .admin(Method::DELETE, "/admin/teams/ops?force=true", None)
        .await;
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    assert_eq!(
        env.admin(Method::GET, "/admin/teams/ops", None)
            .await
            .status,
        404
    );
    // A team no key names goes without `force`.
    env.admin(Method::POST, "/admin/teams", Some(json!({"id": "empty"})))
        .await;
    assert_eq!(
        env.admin(Method::DELETE, "/admin/teams/empty", None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn keys_teams_and_ledger_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let config = |c: &mut imagegate::config::Config| {
        with_admin(c);
        c.keys.clear();
        c.data.dir = Some(path.clone());
    };
    let env = start_with(config).await;
    env.admin(Method::POST, "/admin/teams", Some(json!({"id": "ops"})))
        .await;
    let created = env
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"id": "carol", "team": "ops", "total_budget_usd": 0.02})),
        )
        .await;
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 200);
    env.shutdown().await.unwrap();

    let env = start_with(config).await;
    assert!(path.join(imagegate::store::DB_FILE).is_file());
    let team = env.admin(Method::GET, "/admin/teams/ops", None).await;
    assert_eq!(team.body["spend"]["total_spent_usd"], "0.01");
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 200);
    // The budget counted the spend from before the restart: $0.02 is used up.
    assert_eq!(
        env.generate_as(&secret, sparkpix()).await.code(),
        "insufficient_quota"
    );
    let usage = env
        .admin(Method::GET, "/admin/usage?group_by=team", None)
        .await;
    assert_eq!(usage.body["rows"][0]["team"], "ops");
    assert_eq!(usage.body["rows"][0]["cost_micros"], json!(20_000));
}

#[tokio::test]
async fn cli_creates_keys_and_reports_usage() {
    let env = start_with(with_admin).await;
    let bin = env!("CARGO_BIN_EXE_imagegate");
    let url = env.gateway.clone();
    let run = move |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .env("IMAGEGATE_URL", &url)
            .env("IMAGEGATE_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let r = run.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        r(&["teams", "create", "design", "--budget-usd", "50"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let r = run.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        r(&[
            "keys",
            "create",
            "--id",
            "dana",
            "--team",
            "design",
            "--budget-usd",
            "1",
            "--rpm",
            "5",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["requests_per_minute"], 5);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 200);

    let r = run.clone();
    let (ok, out, _) = tokio::task::spawn_blocking(move || r(&["usage", "--by", "team", "--csv"]))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(
        out,
        "team,requests,succeeded,images,cost_usd,input_tokens,output_tokens\ndesign,1,1,1,0.01,0,0\n"
    );
    let r = run.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || r(&["keys", "disable", "dana"]))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(env.generate_as(&secret, sparkpix()).await.status, 401);
    // A team that keys name is deleted only with --force.
    let r = run.clone();
    let (ok, _, err) = tokio::task::spawn_blocking(move || r(&["teams", "delete", "design"]))
        .await
        .unwrap();
    assert!(!ok && err.contains("409") && err.contains("dana"), "{err}");
    let r = run.clone();
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || r(&["teams", "delete", "design", "--force"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    // A refusal is reported with the gateway's message and a failure exit.
    let (ok, _, err) = tokio::task::spawn_blocking(move || run(&["keys", "get", "nobody"]))
        .await
        .unwrap();
    assert!(!ok && err.contains("No key with id `nobody`"), "{err}");
}

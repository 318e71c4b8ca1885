//! Config parsing and validation rules.

use super::*;

const MIN: &str = r#"
    [upstream]
    base_url = "http://127.0.0.1:9"
    api_key = "${UP_KEY}"
    [[keys]]
    id = "alice"
    key = "sk-alice-123"
"#;

fn env(name: &str) -> Option<String> {
    (name == "UP_KEY").then(|| "up-secret".to_owned())
}

#[test]
fn interpolates_and_fills_model_defaults() {
    let c = Config::from_toml(MIN, &env).unwrap();
    assert_eq!(c.upstream.api_key, "up-secret");
    assert_eq!(
        c.models.get(ModelId::All).poll_interval,
        Duration::from_secs(3)
    );
    assert_eq!(c.models.get(ModelId::Lite).price_usd, Some(0.04));
}

#[test]
fn partial_model_table_keeps_other_defaults() {
    let text = format!("{MIN}\n[models.gpt-image-2-beta]\nprice_usd = 0.05\n");
    let c = Config::from_toml(&text, &env).unwrap();
    assert_eq!(c.models.get(ModelId::Beta).price_usd, Some(0.05));
    assert_eq!(
        c.models.get(ModelId::Beta).deadline,
        Duration::from_secs(120)
    );
}

#[test]
fn unknown_key_is_named() {
    let text = format!("{MIN}\n[models.gpt-image-2-all]\npoll_intervall = \"2s\"\n");
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    assert!(
        e.contains("models.gpt-image-2-all") && e.contains("poll_intervall"),
        "{e}"
    );
}

#[test]
fn invalid_value_is_named() {
    let text = format!("{MIN}\n[models.gpt-image-2-all]\npoll_interval = \"200ms\"\n");
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    assert!(e.contains("models.gpt-image-2-all.poll_interval"), "{e}");
}

#[test]
fn missing_env_var_is_named() {
    let e = Config::from_toml(MIN, &|_| None).unwrap_err().to_string();
    assert!(
        e.contains("upstream.api_key") && e.contains("UP_KEY"),
        "{e}"
    );
}

#[test]
fn env_overrides_win() {
    let env = |name: &str| match name {
        "UP_KEY" => Some("a".to_owned()),
        "IMAGEGATE_LISTEN" => Some("127.0.0.1:9999".to_owned()),
        "IMAGEGATE_UPSTREAM_BASE_URL" => Some("http://upstream.test".to_owned()),
        "IMAGEGATE_UPSTREAM_API_KEY" => Some("override".to_owned()),
        _ => None,
    };
    let c = Config::from_toml(MIN, &env).unwrap();
    assert_eq!(c.server.listen.port(), 9999);
    assert_eq!(c.upstream.base_url, "http://upstream.test");
    assert_eq!(c.upstream.api_key, "override");
}

#[test]
fn example_config_parses() {
    let text = include_str!("../../config/imagegate.example.toml");
    let env = |name: &str| match name {
        "IMAGEGATE_UPSTREAM_KEY" => Some("k".to_owned()),
        "IMAGEGATE_CI_KEY" => Some("sk-ci-0123456789".to_owned()),
        "OPENAI_API_KEY" => Some("sk-text".to_owned()),
        _ => None,
    };
    Config::from_toml(text, &env).unwrap();
}

#[test]
fn connection_limits_default_and_refuse_zero() {
    let c = Config::from_toml(MIN, &env).unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(30));
    assert_eq!(c.server.body_total_timeout, Duration::from_secs(600));
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_connections_per_ip, 1_000);
    let text = format!(
        "[server]\nheader_read_timeout = \"0s\"\nbody_read_timeout = \"0s\"\n\
         body_total_timeout = \"0s\"\nmax_connections = 0\nmax_connections_per_ip = 0\n{MIN}"
    );
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    for key in [
        "server.header_read_timeout",
        "server.body_read_timeout",
        "server.body_total_timeout",
        "server.max_connections:",
        "server.max_connections_per_ip",
    ] {
        assert!(e.contains(key), "{key}: {e}");
    }
}

#[test]
fn debug_never_shows_secrets() {
    let c = Config::from_toml(MIN, &env).unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("up-secret") && !dbg.contains("sk-alice-123"),
        "{dbg}"
    );
}

#[test]
fn key_and_team_problems_are_named() {
    let text = format!(
        "{MIN}requests_per_minute = 0\nmodels = [\"dall-e\"]\nexpires_at = \"soon\"\n\
         [[teams]]\nid = \"a team\"\n[limits.models.nope]\nmax_concurrent = 1\n"
    );
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    for needle in [
        "keys[0].requests_per_minute",
        "keys[0].models: unknown model, group or alias `dall-e`",
        "keys[0].expires_at",
        "teams[0].id",
        "limits.models.nope",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let text = format!("{MIN}budget = 3\n");
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    assert!(e.contains("keys[0]") && e.contains("budget"), "{e}");
}

#[test]
fn keys_may_be_absent_with_a_data_dir() {
    let no_keys = "[upstream]\nbase_url = \"http://x\"\napi_key = \"k\"\n";
    let e = Config::from_toml(no_keys, &env).unwrap_err().to_string();
    assert!(e.contains("keys: at least one client key"), "{e}");
    let with_dir = format!("{no_keys}[data]\ndir = \"/tmp/x\"\n");
    Config::from_toml(&with_dir, &env).unwrap();
}

#[test]
fn upstream_key_pool() {
    let text = format!("{MIN}[[upstream.keys]]\nid = \"b\"\nkey = \"sk-b\"\nweight = 3\n");
    let c = Config::from_toml(&text, &env).unwrap();
    let pool = c.upstream.pool();
    assert_eq!(pool.len(), 2);
    assert_eq!((pool[0].id.as_str(), pool[1].weight), ("default", 3));
    assert!(!format!("{c:?}").contains("sk-b"));
    // Only a pool, no single key: fine. Neither: named.
    let only_pool = text.replace("api_key = \"${UP_KEY}\"", "");
    Config::from_toml(&only_pool, &env).unwrap();
    let neither = MIN.replace("api_key = \"${UP_KEY}\"", "");
    let e = Config::from_toml(&neither, &env).unwrap_err().to_string();
    assert!(e.contains("upstream: set `api_key`"), "{e}");
}

#[test]
fn key_team_must_be_declared() {
    let text = format!("{MIN}team = \"design\"\n");
    let e = Config::from_toml(&text, &env).unwrap_err().to_string();
    assert!(
        e.contains("keys[0].team: no team with id `design` in [[teams]]"),
        "{e}"
    );
    let declared = format!("{text}[[teams]]\nid = \"design\"\n");
    let c = Config::from_toml(&declared, &env).unwrap();
    assert_eq!(c.keys[0].team.as_deref(), Some("design"));
}

#[test]
fn trusted_proxies_must_be_addresses_or_ranges() {
    let base = "[upstream]\nbase_url = \"http://x\"\napi_key = \"k\"\n[[keys]]\nid = \"a\"\nkey = \"sk-aaaaaaaa\"\n";
    let ok = Config::from_toml(
        &format!("{base}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"::1\"]\n"),
        &|_| None,
    )
    .unwrap();
    assert_eq!(ok.server.proxies().len(), 3);
    let e = Config::from_toml(
        &format!("{base}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.internal\"]\n"),
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("server.trusted_proxies[1]"), "{e}");
}

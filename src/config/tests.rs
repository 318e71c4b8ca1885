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
    assert_eq!(c.models.all.poll_interval, Duration::from_secs(3));
    assert_eq!(c.models.lite.price_usd, Some(0.04));
}

#[test]
fn partial_model_table_keeps_other_defaults() {
    let text = format!("{MIN}\n[models.gpt-image-2-beta]\nprice_usd = 0.05\n");
    let c = Config::from_toml(&text, &env).unwrap();
    assert_eq!(c.models.beta.price_usd, Some(0.05));
    assert_eq!(c.models.beta.deadline, Duration::from_secs(120));
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
        _ => None,
    };
    Config::from_toml(text, &env).unwrap();
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

//! `imagegate keys …`, `imagegate teams …`, `imagegate usage`, `imagegate spend`,
//! `imagegate upstream-keys`: the admin API from the command line.
//!
//! The commands talk to the running gateway (`--url`, `--admin-key` or `IMAGEGATE_URL`,
//! `IMAGEGATE_ADMIN_KEY`) rather than opening its database: the gateway holds the spend in
//! flight and the key cache, and only it can revoke a key on its next request or keep budgets
//! exact while requests run.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the gateway is and the admin key. Global flags: accepted before or after the
/// subcommand (`imagegate --admin-key K keys list`, `imagegate keys list --admin-key K`).
#[derive(Args, Debug)]
pub struct Connection {
    /// The gateway's base URL; a trailing `/v1` (the image API's base URL) is accepted.
    #[arg(
        long,
        global = true,
        env = "IMAGEGATE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The admin key (`[admin]` in the gateway's config).
    #[arg(
        long,
        global = true,
        env = "IMAGEGATE_ADMIN_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
}

/// The gateway's root from what the user gave: trailing slashes and a trailing `/v1` (the
/// base URL OpenAI clients use, as `imagegate demo` prints it) are dropped, since the admin
/// routes live at `/admin/*`.
pub fn base_url(url: &str) -> &str {
    let url = url.trim_end_matches('/');
    url.strip_suffix("/v1").unwrap_or(url).trim_end_matches('/')
}

/// Limits and budgets, shared by keys and teams.
#[derive(Args, Debug, Default)]
pub struct Policy {
    #[arg(long)]
    pub name: Option<String>,
    /// Requests per minute.
    #[arg(long = "rpm")]
    pub requests_per_minute: Option<u32>,
    /// Images per minute (a request counts its `n`).
    #[arg(long = "ipm")]
    pub images_per_minute: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// USD per calendar month (UTC).
    #[arg(long = "budget-usd")]
    pub monthly_budget_usd: Option<f64>,
    /// USD over the whole lifetime.
    #[arg(long = "total-budget-usd")]
    pub total_budget_usd: Option<f64>,
}

/// Key-only settings.
#[derive(Args, Debug, Default)]
pub struct KeyFields {
    #[arg(long)]
    pub team: Option<String>,
    /// Allowed models, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// RFC 3339 expiry, e.g. 2026-12-31T23:59:59Z.
    #[arg(long)]
    pub expires_at: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints it with its secret (shown this once).
    Create {
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        key: KeyFields,
        #[command(flatten)]
        policy: Policy,
    },
    List,
    Get {
        id: String,
    },
    /// Change settings; `--clear FIELD` removes one (e.g. `--clear total_budget_usd`).
    Update {
        id: String,
        #[command(flatten)]
        key: KeyFields,
        #[command(flatten)]
        policy: Policy,
        #[arg(long)]
        clear: Vec<String>,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamsCommand {
    Create {
        id: String,
        #[command(flatten)]
        policy: Policy,
    },
    List,
    Get {
        id: String,
    },
    Update {
        id: String,
        #[command(flatten)]
        policy: Policy,
        #[arg(long)]
        clear: Vec<String>,
    },
    /// Delete a team. Refused while keys name it, unless `--force` (they then lose the team's
    /// limits and budget).
    Delete {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

/// `imagegate usage` filters.
#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Grouping, comma-separated: key, team, model, served_model, day, month.
    #[arg(long, default_value = "key")]
    pub by: String,
    /// First day (YYYY-MM-DD, UTC), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, inclusive.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// CSV instead of JSON.
    #[arg(long)]
    pub csv: bool,
}

/// One admin call: method, path, query and JSON body.
struct Call {
    method: reqwest::Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl Call {
    fn new(method: reqwest::Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
        }
    }

    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

fn policy_body(p: &Policy, m: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            m.insert(k.to_owned(), v);
        }
    };
    put("name", json!(p.name));
    put("requests_per_minute", json!(p.requests_per_minute));
    put("images_per_minute", json!(p.images_per_minute));
    put("max_concurrent", json!(p.max_concurrent));
    put("monthly_budget_usd", json!(p.monthly_budget_usd));
    put("total_budget_usd", json!(p.total_budget_usd));
}

fn key_body(k: &KeyFields, p: &Policy, clear: &[String]) -> Value {
    let mut m = Map::new();
    policy_body(p, &mut m);
    for (name, v) in [
        ("team", json!(k.team)),
        ("models", json!(k.models)),
        ("expires_at", json!(k.expires_at)),
    ] {
        if !v.is_null() {
            m.insert(name.to_owned(), v);
        }
    }
    for c in clear {
        m.insert(c.clone(), Value::Null);
    }
    Value::Object(m)
}

/// An admin call built from a command, ready for [`run`].
pub struct CallSpec(Call);

pub fn keys(cmd: KeysCommand) -> CallSpec {
    use reqwest::Method as M;
    CallSpec(match cmd {
        KeysCommand::Create { id, key, policy } => {
            let mut body = key_body(&key, &policy, &[]);
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            Call::new(M::POST, "/admin/keys").body(body)
        }
        KeysCommand::List => Call::new(M::GET, "/admin/keys"),
        KeysCommand::Get { id } => Call::new(M::GET, format!("/admin/keys/{id}")),
        KeysCommand::Update {
            id,
            key,
            policy,
            clear,
        } => Call::new(M::PATCH, format!("/admin/keys/{id}")).body(key_body(&key, &policy, &clear)),
        KeysCommand::Disable { id } => Call::new(M::POST, format!("/admin/keys/{id}/disable")),
        KeysCommand::Enable { id } => Call::new(M::POST, format!("/admin/keys/{id}/enable")),
        KeysCommand::Delete { id } => Call::new(M::DELETE, format!("/admin/keys/{id}")),
    })
}

pub fn teams(cmd: TeamsCommand) -> CallSpec {
    use reqwest::Method as M;
    CallSpec(match cmd {
        TeamsCommand::Create { id, policy } => {
            let mut m = Map::new();
            policy_body(&policy, &mut m);
            m.insert("id".into(), json!(id));
            Call::new(M::POST, "/admin/teams").body(Value::Object(m))
        }
        TeamsCommand::List => Call::new(M::GET, "/admin/teams"),
        TeamsCommand::Get { id } => Call::new(M::GET, format!("/admin/teams/{id}")),
        TeamsCommand::Update { id, policy, clear } => {
            let mut m = Map::new();
            policy_body(&policy, &mut m);
            for c in clear {
                m.insert(c, Value::Null);
            }
            Call::new(M::PATCH, format!("/admin/teams/{id}")).body(Value::Object(m))
        }
        TeamsCommand::Delete { id, force } => {
            let mut call = Call::new(M::DELETE, format!("/admin/teams/{id}"));
            if force {
                call.query.push(("force", "true".to_owned()));
            }
            call
        }
    })
}

pub fn usage(a: UsageArgs) -> CallSpec {
    let mut call = Call::new(reqwest::Method::GET, "/admin/usage");
    call.query.push(("group_by", a.by));
    let optional = [
        ("from", a.from),
        ("to", a.to),
        ("key", a.key),
        ("team", a.team),
        ("model", a.model),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            call.query.push((k, v));
        }
    }
    if a.csv {
        call.query.push(("format", "csv".to_owned()));
    }
    CallSpec(call)
}

pub fn get(path: &str) -> CallSpec {
    CallSpec(Call::new(reqwest::Method::GET, path))
}

/// Sends the call and returns what to print: pretty JSON, or the CSV as is. A refusal is an
/// error carrying the gateway's message.
pub async fn run(conn: &Connection, spec: CallSpec) -> anyhow::Result<String> {
    let admin_key = conn.admin_key.as_deref().ok_or_else(|| {
        anyhow::anyhow!("no admin key: pass --admin-key or set IMAGEGATE_ADMIN_KEY")
    })?;
    let call = spec.0;
    let url = format!("{}{}", base_url(&conn.url), call.path);
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .build()?;
    let mut rb = client
        .request(call.method, &url)
        .bearer_auth(admin_key)
        .query(&call.query);
    if let Some(body) = call.body {
        rb = rb.json(&body);
    }
    let res = rb
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the gateway at {}: {e}", conn.url))?;
    let status = res.status();
    let is_csv = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv"));
    let text = res.text().await?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("{status}: {message}");
    }
    if is_csv {
        return Ok(text);
    }
    let v: Value = serde_json::from_str(&text)?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&v)?))
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn base_url_drops_a_trailing_v1_and_slashes() {
        for given in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/",
            "http://127.0.0.1:8080//v1//",
        ] {
            assert_eq!(base_url(given), "http://127.0.0.1:8080", "{given}");
        }
        // A gateway behind a path prefix keeps it; only the last `/v1` segment goes.
        assert_eq!(base_url("https://x.test/gw/v1/"), "https://x.test/gw");
        assert_eq!(base_url("https://x.test/v1beta"), "https://x.test/v1beta");
    }

    #[test]
    fn an_admin_command_without_a_key_says_how_to_give_one() {
        let conn = super::Connection {
            url: "http://127.0.0.1:9".to_owned(),
            admin_key: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(super::run(&conn, super::get("/admin/spend")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no admin key: pass --admin-key or set IMAGEGATE_ADMIN_KEY"
        );
    }
}

//! Where the MCP tools send their requests: a gateway over HTTP (`imagegate mcp`), or the
//! gateway's own router in-process (`/mcp`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request};
use axum::Router;
use bytes::Bytes;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use serde_json::Value;
use tower::ServiceExt as _;

use super::files;

/// Largest answer read from the gateway (ten 4K images as base64 fit).
const MAX_ANSWER: usize = 512 * 1024 * 1024;

#[derive(Clone)]
pub enum Backend {
    /// `imagegate mcp`: a running gateway, with one client key. Local files may be read.
    Remote {
        http: reqwest::Client,
        /// The gateway's base URL without `/v1`.
        base: Arc<str>,
        key: Arc<str>,
    },
    /// `/mcp`: the gateway's own routes, called with the MCP request's bearer key.
    InProcess { router: Arc<Router> },
}

/// A gateway answer.
pub struct Answer {
    pub status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// An error answer as `code: message` (the OpenAI envelope's), or its status.
    pub fn error_text(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (None, Some(message)) => message.to_owned(),
            _ => format!("The gateway answered {}.", self.status),
        }
    }
}

impl Backend {
    /// The remote backend for `imagegate mcp`; `url` may end in `/v1`.
    pub fn remote(url: &str, key: String) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Ok(Self::Remote {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
            base: base.into(),
            key: key.into(),
        })
    }

    /// Calls `path` with `body` (JSON) and reads the whole answer.
    pub async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        match self {
            Self::Remote { http, base, key } => {
                let mut req = http
                    .request(method, format!("{base}{path}"))
                    .bearer_auth(key.as_ref());
                if let Some(b) = body {
                    req = req.json(&b);
                }
                let res = req
                    .send()
                    .await
                    .map_err(|e| format!("The gateway could not be reached: {e}"))?;
                let status = res.status().as_u16();
                let headers = res.headers().clone();
                let body = res
                    .bytes()
                    .await
                    .map_err(|e| format!("The gateway's answer broke off: {e}"))?;
                Ok(Answer {
                    status,
                    headers,
                    body,
                })
            }
            Self::InProcess { router } => {
                let parts = ctx.extensions.get::<axum::http::request::Parts>();
                let auth = parts.and_then(|p| p.headers.get(header::AUTHORIZATION).cloned());
                let mut req = Request::builder().method(method).uri(path);
                if let Some(auth) = auth {
                    req = req.header(header::AUTHORIZATION, auth);
                }
                if let Some(id) = parts.and_then(|p| p.headers.get("x-request-id").cloned()) {
                    req = req.header("x-request-id", id);
                }
                let req = match body {
                    Some(b) => req
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(b.to_string())),
                    None => req.body(Body::empty()),
                }
                .map_err(|e| e.to_string())?;
                let res = Router::clone(router)
                    .oneshot(req)
                    .await
                    .map_err(|e| e.to_string())?;
                let (parts, body) = res.into_parts();
                let body = axum::body::to_bytes(body, MAX_ANSWER)
                    .await
                    .map_err(|e| format!("The gateway's answer broke off: {e}"))?;
                Ok(Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                })
            }
        }
    }

    /// An image argument as the URL the edit route takes: URLs and data URLs as they are; a file
    /// path (local `imagegate mcp` only) read and sent as a data URL.
    pub async fn image_url(&self, src: &str) -> Result<String, String> {
        let src = src.trim();
        let lower = src.to_ascii_lowercase();
        if lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("data:")
        {
            return Ok(src.to_owned());
        }
        match self {
            Self::Remote { .. } => files::data_url(src).await,
            Self::InProcess { .. } => Err(format!(
                "`{src}` is not a URL: over /mcp, images are http(s) URLs or data URLs (file paths need the local `imagegate mcp`)."
            )),
        }
    }
}

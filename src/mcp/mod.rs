//! The MCP server: image tools for Cursor, Claude Code, Codex and any MCP client.
//!
//! Tools: `generate_image`, `edit_image`, `list_models`. They are clients of the gateway's own
//! OpenAI routes, so the caller's key, limits, budget and ledger apply exactly as to any request:
//!
//! - `imagegate mcp --url … --api-key-env …` (stdio, on the user's machine) calls a running
//!   gateway over HTTP with one client key. Only there may a tool read image files and write the
//!   results to a directory.
//! - `/mcp` on the gateway (Streamable HTTP, stateless, JSON answers) calls the gateway's router
//!   in-process with the caller's own bearer key (checked by the auth layer before MCP sees the
//!   request). Inputs are URLs or data URLs and outputs image content: never a path on the
//!   gateway's host.

mod backend;
mod files;

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::Method;
use axum::Router;
use base64::Engine as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use backend::Answer;
pub use backend::Backend;

/// `generate_image`'s arguments: the fields of `POST /v1/images/generations`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    #[serde(flatten)]
    pub options: ImageOptions,
}

/// `edit_image`'s arguments: the fields of `POST /v1/images/edits`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditArgs {
    /// What to change.
    pub prompt: String,
    /// The images to edit or use as references: http(s) URLs or data URLs, or, with the local
    /// `imagegate mcp`, paths of PNG, JPEG or WebP files.
    pub images: Vec<String>,
    /// A PNG mask (transparent where to paint), in the same forms as `images`.
    pub mask: Option<String>,
    #[serde(flatten)]
    pub options: ImageOptions,
}

/// The options both image tools take.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ImageOptions {
    /// A model id, group or alias (see `list_models`); default `gpt-image-2`, the cheapest
    /// healthy model that can serve the request.
    pub model: Option<String>,
    /// `WIDTHxHEIGHT` (e.g. `1024x1024`, `1536x1024`) or `auto`.
    pub size: Option<String>,
    /// `low`, `medium`, `high` or `auto`.
    pub quality: Option<String>,
    /// How many images, 1 to 10.
    #[schemars(range(min = 1, max = 10))]
    pub n: Option<u8>,
    /// `transparent`, `opaque` or `auto`.
    pub background: Option<String>,
    /// `png` (default), `jpeg` or `webp`.
    pub output_format: Option<String>,
    /// A directory to save the images in; their paths are returned. Only with the local
    /// `imagegate mcp` (stdio).
    pub output_dir: Option<String>,
}

/// The default model of the tools: the group of every gpt-image-2 model.
const DEFAULT_MODEL: &str = "gpt-image-2";

/// The MCP server over one [`Backend`].
#[derive(Clone)]
pub struct ImageTools {
    backend: Backend,
}

impl ImageTools {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }
}

#[tool_router]
impl ImageTools {
    #[tool(
        description = "Generate images from a prompt through imagegate. Returns the images, the model that served them and their cost in USD."
    )]
    async fn generate_image(
        &self,
        Parameters(args): Parameters<GenerateArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let mut body = Map::new();
        body.insert("prompt".into(), json!(args.prompt));
        self.images(&ctx, "/v1/images/generations", body, args.options)
            .await
    }

    #[tool(
        description = "Edit images, or make a new one from reference images, through imagegate. Returns the images, the model that served them and their cost in USD."
    )]
    async fn edit_image(
        &self,
        Parameters(args): Parameters<EditArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if args.images.is_empty() {
            return tool_error(
                "images: give at least one image (a URL, a data URL or a file path).".into(),
            );
        }
        let mut images = Vec::with_capacity(args.images.len());
        for src in &args.images {
            match self.backend.image_url(src).await {
                Ok(url) => images.push(json!({ "image_url": url })),
                Err(e) => return tool_error(e),
            }
        }
        let mut body = Map::new();
        body.insert("prompt".into(), json!(args.prompt));
        body.insert("images".into(), Value::Array(images));
        if let Some(mask) = &args.mask {
            match self.backend.image_url(mask).await {
                Ok(url) => {
                    body.insert("mask".into(), json!({ "image_url": url }));
                }
                Err(e) => return tool_error(e),
            }
        }
        self.images(&ctx, "/v1/images/edits", body, args.options)
            .await
    }

    #[tool(
        description = "List the models imagegate offers: image models (kind `image`), groups and aliases that route to the cheapest healthy model (kind `group`), each with the price of a 1024x1024 image and the model that would serve it, and text models (kind `text`)."
    )]
    async fn list_models(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let listed = match self
            .backend
            .call(&ctx, Method::GET, "/v1/models", None)
            .await
        {
            Ok(a) if a.status < 400 => a,
            Ok(a) => return tool_error(a.error_text()),
            Err(e) => return tool_error(e),
        };
        let ids: Vec<(String, bool)> = listed
            .json()
            .get("data")
            .and_then(Value::as_array)
            .map(|data| {
                data.iter()
                    .filter_map(|m| {
                        let id = m.get("id")?.as_str()?.to_owned();
                        let image = m.get("owned_by").and_then(Value::as_str) == Some("imagegate");
                        Some((id, image))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut models = Vec::with_capacity(ids.len());
        for (id, image) in ids {
            if !image {
                models.push(json!({"id": id, "kind": "text"}));
                continue;
            }
            let quote = self
                .backend
                .call(
                    &ctx,
                    Method::POST,
                    "/v1/images/quote",
                    Some(json!({"model": id, "prompt": "price", "size": "1024x1024"})),
                )
                .await;
            let (served, price) = match quote {
                Ok(a) if a.status < 400 => {
                    let q = a.json();
                    (q.get("served_model").cloned(), q.get("cost_usd").cloned())
                }
                _ => (None, None),
            };
            // A name served by another model is a group or an alias: it routes.
            let kind = if served.as_ref().and_then(Value::as_str) == Some(id.as_str()) {
                "image"
            } else {
                "group"
            };
            models.push(json!({
                "id": id,
                "kind": kind,
                "served_model": served,
                "price_usd": price,
            }));
        }
        let summary = json!({ "models": models });
        structured(Vec::new(), summary)
    }
}

#[tool_handler]
impl ServerHandler for ImageTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("imagegate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "imagegate: generate and edit images with the team's image models, under your key's limits and budget. Each result says which model served it and what it cost.",
        )
    }
}

impl ImageTools {
    /// Sends an image request (`body` plus `o`; `model` defaults to [`DEFAULT_MODEL`], answers
    /// always as base64) and renders its answer.
    async fn images(
        &self,
        ctx: &RequestContext<RoleServer>,
        path: &str,
        mut body: Map<String, Value>,
        o: ImageOptions,
    ) -> CallToolResult {
        let dir = match self.output_dir(o.output_dir) {
            Ok(d) => d,
            Err(e) => return tool_error(e),
        };
        let model = o.model.unwrap_or_else(|| DEFAULT_MODEL.into());
        let fields = [
            ("model", Some(Value::from(model))),
            ("size", o.size.map(Value::from)),
            ("quality", o.quality.map(Value::from)),
            ("n", o.n.map(Value::from)),
            ("background", o.background.map(Value::from)),
            ("output_format", o.output_format.map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                body.insert(k.into(), v);
            }
        }
        body.insert("response_format".into(), json!("b64_json"));
        let answer = self
            .backend
            .call(ctx, Method::POST, path, Some(Value::Object(body)))
            .await;
        images_result(answer, dir.as_deref()).await
    }

    /// Where to save results: only on the user's own machine.
    fn output_dir(&self, dir: Option<String>) -> Result<Option<PathBuf>, String> {
        match (dir, &self.backend) {
            (None, _) => Ok(None),
            (Some(d), Backend::Remote { .. }) => Ok(Some(PathBuf::from(d))),
            (Some(_), Backend::InProcess { .. }) => Err(
                "output_dir is only for the local `imagegate mcp` (stdio): over /mcp the images come back as image content."
                    .into(),
            ),
        }
    }
}

/// A successful result: `content`, then `summary` as text and as structured content.
fn structured(mut content: Vec<ContentBlock>, summary: Value) -> CallToolResult {
    content.push(ContentBlock::text(summary.to_string()));
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(summary);
    result
}

/// A tool result saying what went wrong (the session goes on).
fn tool_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// The images of an answer as image content, saved to `dir` when given, with a summary.
async fn images_result(
    answer: Result<Answer, String>,
    dir: Option<&std::path::Path>,
) -> CallToolResult {
    let answer = match answer {
        Ok(a) if a.status < 400 => a,
        Ok(a) => return tool_error(a.error_text()),
        Err(e) => return tool_error(e),
    };
    let body = answer.json();
    let format = body
        .get("output_format")
        .and_then(Value::as_str)
        .unwrap_or("png")
        .to_owned();
    let mime = match format.as_str() {
        "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "image/png",
    };
    let b64: Vec<&str> = body
        .get("data")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|i| i.get("b64_json")?.as_str())
                .collect()
        })
        .unwrap_or_default();
    if b64.is_empty() {
        return tool_error("The gateway answered without images.".into());
    }
    let content: Vec<ContentBlock> = b64.iter().map(|b| ContentBlock::image(*b, mime)).collect();
    let mut summary = json!({
        "model": answer.header("x-imagegate-upstream"),
        "cost_usd": answer.header("x-imagegate-cost-usd"),
        "images": b64.len(),
        "job_id": answer.header("x-imagegate-job-id"),
    });
    if let Some(dir) = dir {
        let stem = answer
            .header("x-imagegate-job-id")
            .unwrap_or_else(|| format!("imagegate-{}", uuid::Uuid::new_v4().simple()));
        let mut paths = Vec::with_capacity(b64.len());
        for (i, b) in b64.iter().enumerate() {
            let bytes = match base64::engine::general_purpose::STANDARD.decode(b) {
                Ok(bytes) => bytes,
                Err(e) => return tool_error(format!("An image was not valid base64: {e}")),
            };
            match files::save(dir, &stem, i, &format, bytes).await {
                Ok(p) => paths.push(p.display().to_string()),
                Err(e) => return tool_error(e),
            }
        }
        summary["files"] = json!(paths);
    }
    structured(content, summary)
}

/// `imagegate mcp`: the tools on stdin/stdout until the client closes them.
pub async fn serve_stdio(backend: Backend) -> anyhow::Result<()> {
    use rmcp::ServiceExt as _;
    let service = ImageTools::new(backend)
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}

/// `/mcp`: Streamable HTTP, stateless with JSON answers, over `api` — the gateway's routes and
/// middleware without `/mcp` itself.
pub fn routes<S: Clone + Send + Sync + 'static>(api: Router, max_body: usize) -> Router<S> {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // The bearer key is checked before MCP sees a request, so no DNS-rebinding page can
        // call it: any `Host` is served (the gateway runs behind its own host names).
        .disable_allowed_hosts()
        .with_max_request_body_bytes(max_body);
    let backend = Backend::InProcess {
        router: Arc::new(api),
    };
    let service = StreamableHttpService::new(
        move || Ok(ImageTools::new(backend.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().nest_service("/mcp", service)
}

//! Result files: the in-memory store behind the result URLs (`{base}/files/{name}`, no auth),
//! bounded to the most recent 2,000 files, and the download handler.
//!
//! `[sim:nofile]` results are never stored, so their URLs answer 404; `[sim:nofile=N]` results
//! are stored but each answers 404 to its first N downloads; `[sim:slowfile=SECS]` results are
//! stored with a delay applied before each download answers.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::faults::NoFile;
use super::render::Format;
use super::state::{lock, AppState};

/// How many result files are kept (oldest evicted first).
const FILES_CAP: usize = 2_000;

struct StoredFile {
    bytes: Bytes,
    format: Format,
    delay: Option<Duration>,
    /// Downloads left that answer 404 (`[sim:nofile=N]`).
    misses: u32,
}

#[derive(Default)]
pub(crate) struct FileStore {
    map: HashMap<String, StoredFile>,
    order: VecDeque<String>,
}

impl FileStore {
    fn insert(&mut self, name: String, file: StoredFile) {
        while self.order.len() >= FILES_CAP {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
        self.order.push_back(name.clone());
        self.map.insert(name, file);
    }
}

/// Publishes `bytes` as a new result file and returns its URL. With `NoFile::Always`, the URL
/// is made but nothing is stored behind it.
pub(crate) fn publish(
    state: &AppState,
    bytes: Bytes,
    format: Format,
    nofile: NoFile,
    delay: Option<Duration>,
) -> String {
    let name = format!("{}.{}", uuid::Uuid::new_v4().simple(), format.ext());
    let url = format!("{}/files/{name}", state.base_url);
    let misses = match nofile {
        NoFile::Always => return url,
        NoFile::Off => 0,
        NoFile::First(n) => n,
    };
    let file = StoredFile {
        bytes,
        format,
        delay,
        misses,
    };
    lock(&state.files).insert(name, file);
    url
}

/// `GET /files/{name}`.
pub(crate) async fn download(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    lock(&state.intro).stats.downloads += 1;
    let found = match lock(&state.files).map.get_mut(&name) {
        Some(f) if f.misses > 0 => {
            f.misses -= 1;
            None
        }
        Some(f) => Some((f.bytes.clone(), f.format, f.delay)),
        None => None,
    };
    let Some((bytes, format, delay)) = found else {
        return ApiError::with(StatusCode::NOT_FOUND, 404, "file not found").into_response();
    };
    if let Some(d) = delay {
        if !state.sleep(d).await {
            return ApiError::shutting_down().into_response();
        }
    }
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "public, max-age=604800"),
        ],
        bytes,
    )
        .into_response()
}

//! Files on the user's machine, for the local `imagegate mcp` only: image paths read into data
//! URLs, results written to an output directory.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::model::ImageFormat;

/// Largest image file read (the gateway's own edit limit per image is below this).
const MAX_FILE: u64 = 50 * 1024 * 1024;

/// A PNG, JPEG or WebP file as a data URL.
pub async fn data_url(path: &str) -> Result<String, String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("Cannot read `{path}`: {e}"))?;
    if meta.len() > MAX_FILE {
        return Err(format!(
            "`{path}` is larger than {} MiB.",
            MAX_FILE / 1024 / 1024
        ));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("Cannot read `{path}`: {e}"))?;
    let format = ImageFormat::sniff(&bytes)
        .ok_or_else(|| format!("`{path}` is not a PNG, JPEG or WebP image."))?;
    Ok(format!(
        "data:{};base64,{}",
        format.mime(),
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

/// Writes image `i` of a result into `dir` (created if missing) as `{stem}-{i}.{ext}` (the stem
/// is the job id) and returns its absolute path.
pub async fn save(
    dir: &Path,
    stem: &str,
    i: usize,
    ext: &str,
    bytes: Vec<u8>,
) -> Result<PathBuf, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("Cannot create `{}`: {e}", dir.display()))?;
    let ext = if ext == "jpeg" { "jpg" } else { ext };
    let path = dir.join(format!("{stem}-{i}.{ext}"));
    tokio::fs::write(&path, bytes)
        .await
        .map_err(|e| format!("Cannot write `{}`: {e}", path.display()))?;
    Ok(std::path::absolute(&path).unwrap_or(path))
}

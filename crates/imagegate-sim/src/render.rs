//! Result image bytes: real PNG or JPEG files of the requested size with cheap content (a
//! two-colour gradient, stripes and a band picked by a variant derived from the prompt), encoded
//! with fast settings and cached per (width, height, format, variant, file size) so large files
//! are encoded once. Also sniffs image kinds from magic bytes.
//!
//! `[sim:filebytes=N]` asks for PNG files of an exact length, for benchmarks that need a known
//! answer size whatever the picture size: the picture is a solid-colour 1-bit indexed PNG of the
//! requested width and height (a few hundred bytes at 1024x1024, about 3 KB at 4K), padded to N bytes with a private
//! ancillary chunk (`siMp`, random bytes) before `IEND`, which decoders skip. When N is below that
//! minimum the file is the unpadded picture. JPEG results ignore the directive.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::state::lock;

/// Number of distinct pictures per size and format.
pub(crate) const VARIANTS: u8 = 8;

/// Encoded bytes the cache keeps before evicting its oldest entries.
const CACHE_BYTES: usize = 192 * 1024 * 1024;

/// Largest file `[sim:filebytes=N]` makes.
pub(crate) const MAX_FILE_BYTES: u32 = 64 * 1024 * 1024;

/// Result file format. WEBP files are lossless (`image-webp` has no lossy encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    Png,
    Jpeg,
    Webp,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }
}

/// One picture to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RenderKey {
    pub w: u32,
    pub h: u32,
    pub format: Format,
    pub variant: u8,
    /// `[sim:filebytes=N]`: an exact file length (PNG only; see the module docs).
    pub file_bytes: Option<u32>,
}

/// A variant number from the prompt and the image index (FNV-1a).
pub(crate) fn variant(prompt: &str, index: usize) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    ((h.wrapping_add(index as u64)) % u64::from(VARIANTS)) as u8
}

const PALETTE: [[u8; 3]; 8] = [
    [230, 57, 70],
    [29, 53, 87],
    [69, 123, 157],
    [241, 250, 238],
    [244, 162, 97],
    [42, 157, 143],
    [233, 196, 106],
    [38, 70, 83],
];

/// RGB pixels of one picture.
fn pixels(key: RenderKey) -> Vec<u8> {
    let (w, h) = (key.w as usize, key.h as usize);
    let v = usize::from(key.variant);
    let (a, b) = (PALETTE[v % 8], PALETTE[(v + 3) % 8]);
    // lut[t] = colour at gradient position t (0..=255).
    let lut: Vec<[u8; 3]> = (0..256u32)
        .map(|t| {
            let mix = |i: usize| ((u32::from(a[i]) * (255 - t) + u32::from(b[i]) * t) / 255) as u8;
            [mix(0), mix(1), mix(2)]
        })
        .collect();
    let stripe_w = (w / 24).max(4);
    let xs: Vec<(usize, bool)> = (0..w)
        .map(|x| (x * 256 / w, (x / stripe_w + v) % 5 == 0))
        .collect();
    let band = (h / 10).max(1);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let yw = y * 256 / h;
        let in_band = (y / band + v) % 7 == 0;
        for &(xw, stripe) in &xs {
            let c = lut[((xw + yw) / 2).min(255)];
            if stripe || in_band {
                out.extend_from_slice(&[c[0] / 2, c[1] / 2, c[2] / 2]);
            } else {
                out.extend_from_slice(&c);
            }
        }
    }
    out
}

/// Encodes one picture.
pub(crate) fn encode(key: RenderKey) -> Result<Vec<u8>, String> {
    if let (Some(len), Format::Png) = (key.file_bytes, key.format) {
        return padded_png(key, len.min(MAX_FILE_BYTES) as usize);
    }
    let data = pixels(key);
    let mut out = Vec::new();
    match key.format {
        Format::Png => {
            let mut enc = png::Encoder::new(&mut out, key.w, key.h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            enc.set_filter(png::FilterType::Sub);
            let mut writer = enc.write_header().map_err(|e| e.to_string())?;
            writer.write_image_data(&data).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
        }
        Format::Jpeg => {
            let w = u16::try_from(key.w).map_err(|_| "width too large for JPEG".to_string())?;
            let h = u16::try_from(key.h).map_err(|_| "height too large for JPEG".to_string())?;
            jpeg_encoder::Encoder::new(&mut out, 80)
                .encode(&data, w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string())?;
        }
        Format::Webp => {
            image_webp::WebPEncoder::new(&mut out)
                .encode(&data, key.w, key.h, image_webp::ColorType::Rgb8)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

/// A solid-colour PNG of the key's size, `len` bytes long when `len` is above its natural size.
fn padded_png(key: RenderKey, len: usize) -> Result<Vec<u8>, String> {
    /// Length, type and CRC around a chunk's data.
    const CHUNK_OVERHEAD: usize = 12;
    let natural = solid_png(key, None)?;
    if len < natural.len() + CHUNK_OVERHEAD {
        return Ok(natural);
    }
    let mut pad = vec![0u8; len - natural.len() - CHUNK_OVERHEAD];
    fastrand::Rng::with_seed(u64::from(key.variant)).fill(&mut pad);
    solid_png(key, Some(&pad))
}

/// A 1-bit indexed PNG of one colour, with `pad` as a `siMp` chunk (ancillary, private, safe to
/// copy) before `IEND`.
fn solid_png(key: RenderKey, pad: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let colour = PALETTE[usize::from(key.variant) % PALETTE.len()];
    let row = (key.w as usize).div_ceil(8);
    let mut out = Vec::with_capacity(pad.map_or(0, <[u8]>::len) + 1024);
    let mut enc = png::Encoder::new(&mut out, key.w, key.h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::One);
    enc.set_palette(colour.to_vec());
    enc.set_compression(png::Compression::Best);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer
        .write_image_data(&vec![0u8; row * key.h as usize])
        .map_err(|e| e.to_string())?;
    if let Some(pad) = pad {
        writer
            .write_chunk(png::chunk::ChunkType(*b"siMp"), pad)
            .map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Encoded pictures, shared by every result of the same key; concurrent first requests for a
/// key wait for a single encode.
#[derive(Default)]
pub(crate) struct RenderCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<RenderKey, Arc<OnceCell<Bytes>>>,
    order: VecDeque<RenderKey>,
}

impl RenderCache {
    /// The encoded bytes for `key`, encoding them on a blocking thread if needed.
    pub async fn get(&self, key: RenderKey) -> Result<Bytes, String> {
        let cell = {
            let mut inner = lock(&self.inner);
            if let Some(cell) = inner.map.get(&key) {
                cell.clone()
            } else {
                let cell = Arc::new(OnceCell::new());
                inner.map.insert(key, cell.clone());
                inner.order.push_back(key);
                cell
            }
        };
        let bytes = cell
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || encode(key))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(Bytes::from)
            })
            .await?
            .clone();
        self.evict();
        Ok(bytes)
    }

    /// Drops the oldest encoded entries while the cache holds more than its byte budget.
    fn evict(&self) {
        let mut inner = lock(&self.inner);
        let size = |c: &Arc<OnceCell<Bytes>>| c.get().map_or(0, Bytes::len);
        let mut total: usize = inner.map.values().map(size).sum();
        while total > CACHE_BYTES && inner.order.len() > 1 {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(cell) = inner.map.remove(&old) {
                total -= size(&cell);
            }
        }
    }
}

/// Image kind by magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Png,
    Jpeg,
    Webp,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
            Self::Other => "other",
        }
    }
}

pub(crate) fn sniff(b: &[u8]) -> Kind {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Kind::Png
    } else if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Kind::Jpeg
    } else if b.len() >= 12 && b.starts_with(b"RIFF") && &b[8..12] == b"WEBP" {
        Kind::Webp
    } else {
        Kind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_real_files() {
        let png = encode(RenderKey {
            w: 64,
            h: 48,
            format: Format::Png,
            variant: 3,
            file_bytes: None,
        })
        .unwrap();
        assert_eq!(sniff(&png), Kind::Png);
        assert_eq!(&png[16..24], &[0, 0, 0, 64, 0, 0, 0, 48]);
        let jpg = encode(RenderKey {
            w: 64,
            h: 48,
            format: Format::Jpeg,
            variant: 1,
            file_bytes: None,
        })
        .unwrap();
        assert_eq!(sniff(&jpg), Kind::Jpeg);
    }

    #[test]
    fn pads_png_files_to_an_exact_length() {
        let key = |w, h, file_bytes| RenderKey {
            w,
            h,
            format: Format::Png,
            variant: 2,
            file_bytes: Some(file_bytes),
        };
        let small = encode(key(1024, 1024, 10)).unwrap();
        assert_eq!(sniff(&small), Kind::Png);
        assert!(small.len() < 768, "natural size {}", small.len());
        assert_eq!(encode(key(1024, 1024, 768)).unwrap().len(), 768);
        let small_4k = encode(key(3840, 2160, 10)).unwrap();
        assert!(small_4k.len() < 4096, "natural size {}", small_4k.len());
        let big = encode(key(3840, 2160, 100_000)).unwrap();
        assert_eq!(big.len(), 100_000);
        assert_eq!(&big[16..24], &[0, 0, 0x0f, 0, 0, 0, 0x08, 0x70]);
        assert!(big.ends_with(b"IEND\xaeB`\x82"));
        let mut reader = png::Decoder::new(big.as_slice()).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
    }
}

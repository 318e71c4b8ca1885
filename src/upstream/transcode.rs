//! Converts a result image between PNG, JPEG and WEBP when the upstream made a different format
//! than the client asked for (OpenAI's default is PNG; SparkPix only makes JPEG, beta only PNG).
//! Runs on the blocking pool: decoding and encoding a 4K image is CPU work, not I/O.
//!
//! WEBP is written lossless (`image-webp`, pure Rust): exact pixels, larger files than a lossy
//! encoder would make. An image whose header declares more than [`MAX_PIXELS`] is not decoded
//! at all, and every decoder is also given a memory limit (4 bytes per pixel of that), so a
//! small file cannot make the gateway allocate gigabytes.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::io::Cursor;

use bytes::Bytes;

use crate::model::ImageFormat;

/// Largest picture decoded for a conversion: 4× the largest gpt-image-2 output (8,294,400 px).
pub const MAX_PIXELS: u64 = 4 * 8_294_400;

/// Decoded pixels, 8 bits per channel.
struct Pixels {
    width: u32,
    height: u32,
    color: Color,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Color {
    L,
    La,
    Rgb,
    Rgba,
}

impl Color {
    fn channels(self) -> usize {
        match self {
            Self::L => 1,
            Self::La => 2,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
}

/// `bytes` in `wanted`, or `None` when no conversion applies or the image could not be read.
pub fn convert(bytes: &[u8], wanted: ImageFormat) -> Option<Bytes> {
    let have = ImageFormat::sniff(bytes)?;
    if have == wanted {
        return None;
    }
    let pixels = match have {
        ImageFormat::Png => decode_png(bytes)?,
        ImageFormat::Jpeg => decode_jpeg(bytes)?,
        ImageFormat::Webp => decode_webp(bytes)?,
    };
    let expected = (pixels.width as usize)
        .checked_mul(pixels.height as usize)
        .and_then(|n| n.checked_mul(pixels.color.channels()));
    if expected != Some(pixels.data.len()) {
        return None;
    }
    let out = match wanted {
        ImageFormat::Png => encode_png(&pixels)?,
        ImageFormat::Jpeg => encode_jpeg(pixels)?,
        ImageFormat::Webp => encode_webp(&pixels)?,
    };
    Some(Bytes::from(out))
}

fn within_limit(width: u32, height: u32) -> bool {
    width > 0
        && height > 0
        && u64::from(width)
            .checked_mul(u64::from(height))
            .is_some_and(|n| n <= MAX_PIXELS)
}

/// Most memory a decoder may take for one picture: 4 bytes per pixel of the largest accepted.
const MAX_DECODE_BYTES: usize = MAX_PIXELS as usize * 4;

fn decode_png(bytes: &[u8]) -> Option<Pixels> {
    let limits = png::Limits {
        bytes: MAX_DECODE_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(bytes, limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let (w, h) = (reader.info().width, reader.info().height);
    if !within_limit(w, h) {
        return None;
    }
    let mut data = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut data).ok()?;
    data.truncate(frame.buffer_size());
    let color = match frame.color_type {
        png::ColorType::Grayscale => Color::L,
        png::ColorType::GrayscaleAlpha => Color::La,
        png::ColorType::Rgb => Color::Rgb,
        png::ColorType::Rgba => Color::Rgba,
        png::ColorType::Indexed => return None,
    };
    Some(Pixels {
        width: frame.width,
        height: frame.height,
        color,
        data,
    })
}

fn decode_jpeg(bytes: &[u8]) -> Option<Pixels> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.set_max_decoding_buffer_size(MAX_DECODE_BYTES);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    if !within_limit(u32::from(info.width), u32::from(info.height)) {
        return None;
    }
    let color = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => Color::Rgb,
        jpeg_decoder::PixelFormat::L8 => Color::L,
        _ => return None,
    };
    let data = decoder.decode().ok()?;
    Some(Pixels {
        width: u32::from(info.width),
        height: u32::from(info.height),
        color,
        data,
    })
}

fn decode_webp(bytes: &[u8]) -> Option<Pixels> {
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).ok()?;
    decoder.set_memory_limit(MAX_DECODE_BYTES);
    let (w, h) = decoder.dimensions();
    if !within_limit(w, h) {
        return None;
    }
    let color = if decoder.has_alpha() {
        Color::Rgba
    } else {
        Color::Rgb
    };
    let mut data = vec![0; decoder.output_buffer_size()?];
    decoder.read_image(&mut data).ok()?;
    Some(Pixels {
        width: w,
        height: h,
        color,
        data,
    })
}

fn encode_png(p: &Pixels) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(p.data.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, p.width, p.height);
        enc.set_color(match p.color {
            Color::L => png::ColorType::Grayscale,
            Color::La => png::ColorType::GrayscaleAlpha,
            Color::Rgb => png::ColorType::Rgb,
            Color::Rgba => png::ColorType::Rgba,
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().ok()?;
        writer.write_image_data(&p.data).ok()?;
    }
    Some(out)
}

fn encode_jpeg(mut p: Pixels) -> Option<Vec<u8>> {
    let color = match p.color {
        Color::L => jpeg_encoder::ColorType::Luma,
        Color::Rgb => jpeg_encoder::ColorType::Rgb,
        Color::Rgba => jpeg_encoder::ColorType::Rgba,
        // JPEG has no alpha: keep the luminance.
        Color::La => {
            p.data = p
                .data
                .chunks_exact(2)
                .filter_map(|px| px.first().copied())
                .collect();
            jpeg_encoder::ColorType::Luma
        }
    };
    let (w, h) = (u16::try_from(p.width).ok()?, u16::try_from(p.height).ok()?);
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&p.data, w, h, color)
        .ok()?;
    Some(out)
}

fn encode_webp(p: &Pixels) -> Option<Vec<u8>> {
    let color = match p.color {
        Color::L => image_webp::ColorType::L8,
        Color::La => image_webp::ColorType::La8,
        Color::Rgb => image_webp::ColorType::Rgb8,
        Color::Rgba => image_webp::ColorType::Rgba8,
    };
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(&p.data, p.width, p.height, color)
        .ok()?;
    Some(out)
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests index and count what they built"
)]
mod tests {
    use super::*;
    use crate::model::image_dimensions;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        let mut writer = enc.write_header().unwrap();
        writer
            .write_image_data(&vec![90u8; (w * h * 3) as usize])
            .unwrap();
        drop(writer);
        out
    }

    #[test]
    fn converts_between_every_pair_of_formats() {
        use ImageFormat::*;
        for (from, to) in [
            (Png, Jpeg),
            (Png, Webp),
            (Jpeg, Png),
            (Jpeg, Webp),
            (Webp, Png),
            (Webp, Jpeg),
        ] {
            let source = match from {
                Png => Bytes::from(png_bytes(48, 32)),
                other => convert(&png_bytes(48, 32), other).unwrap(),
            };
            let out = convert(&source, to).unwrap_or_else(|| panic!("{from:?} → {to:?}"));
            assert_eq!(ImageFormat::sniff(&out), Some(to), "{from:?} → {to:?}");
            let size = image_dimensions(&out).unwrap();
            assert_eq!((size.width, size.height), (48, 32), "{from:?} → {to:?}");
        }
    }

    #[test]
    fn no_conversion_when_formats_match_or_unreadable() {
        assert!(convert(&png_bytes(8, 8), ImageFormat::Png).is_none());
        assert!(convert(b"not an image", ImageFormat::Png).is_none());
    }

    #[test]
    fn a_declared_bomb_is_not_decoded() {
        // A valid PNG header declaring 100000x100000 pixels, with no pixel data behind it.
        let mut bomb = png_bytes(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = png_crc(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(convert(&bomb, ImageFormat::Jpeg).is_none());
    }

    fn png_crc(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}

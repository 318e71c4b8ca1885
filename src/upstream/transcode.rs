//! Converts a downloaded result between PNG and JPEG when the upstream made a different format
//! than the client asked for (OpenAI's default is PNG; some models only make JPEG). Runs on the
//! blocking pool: decoding and encoding a 4K image is CPU work, not I/O.
//!
//! WEBP is neither decoded nor encoded here: a WEBP request answered with PNG/JPEG (or the reverse)
//! is returned as made, and the answer's `output_format` says what the bytes are.

use bytes::Bytes;

use crate::model::ImageFormat;

/// `bytes` in `wanted`, or `None` when no conversion applies or the image could not be read.
pub fn convert(bytes: &[u8], wanted: ImageFormat) -> Option<Bytes> {
    let have = ImageFormat::sniff(bytes)?;
    match (have, wanted) {
        (ImageFormat::Jpeg, ImageFormat::Png) => jpeg_to_png(bytes),
        (ImageFormat::Png, ImageFormat::Jpeg) => png_to_jpeg(bytes),
        _ => None,
    }
}

fn jpeg_to_png(bytes: &[u8]) -> Option<Bytes> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let color = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => png::ColorType::Rgb,
        jpeg_decoder::PixelFormat::L8 => png::ColorType::Grayscale,
        _ => return None,
    };
    let mut out = Vec::with_capacity(pixels.len() / 2);
    {
        let mut enc = png::Encoder::new(&mut out, u32::from(info.width), u32::from(info.height));
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().ok()?;
        writer.write_image_data(&pixels).ok()?;
    }
    Some(Bytes::from(out))
}

fn png_to_jpeg(bytes: &[u8]) -> Option<Bytes> {
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().ok()?;
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).ok()?;
    let color = match frame.color_type {
        png::ColorType::Rgb => jpeg_encoder::ColorType::Rgb,
        png::ColorType::Rgba => jpeg_encoder::ColorType::Rgba,
        png::ColorType::Grayscale => jpeg_encoder::ColorType::Luma,
        _ => return None,
    };
    let (w, h) = (
        u16::try_from(frame.width).ok()?,
        u16::try_from(frame.height).ok()?,
    );
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&pixels[..frame.buffer_size()], w, h, color)
        .ok()?;
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image_dimensions;

    fn png_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 48, 32);
        enc.set_color(png::ColorType::Rgb);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[90u8; 48 * 32 * 3]).unwrap();
        drop(w);
        out
    }

    #[test]
    fn round_trips_png_and_jpeg() {
        let jpeg = convert(&png_bytes(), ImageFormat::Jpeg).unwrap();
        assert_eq!(ImageFormat::sniff(&jpeg), Some(ImageFormat::Jpeg));
        let png = convert(&jpeg, ImageFormat::Png).unwrap();
        assert_eq!(ImageFormat::sniff(&png), Some(ImageFormat::Png));
        let size = image_dimensions(&png).unwrap();
        assert_eq!((size.width, size.height), (48, 32));
    }

    #[test]
    fn no_conversion_when_formats_match_or_webp() {
        assert!(convert(&png_bytes(), ImageFormat::Png).is_none());
        assert!(convert(&png_bytes(), ImageFormat::Webp).is_none());
        assert!(convert(b"not an image", ImageFormat::Png).is_none());
    }
}

//! Image sizes read from the first bytes of untrusted files (uploads, platform results), without
//! decoding them. Every index and every sum is checked: a short or hostile header is `None`,
//! never a panic.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::{ImageFormat, Size};

/// Reads the pixel size from a PNG IHDR, a JPEG SOF marker or a WEBP frame header without
/// decoding the image.
pub fn image_dimensions(bytes: &[u8]) -> Option<Size> {
    match ImageFormat::sniff(bytes)? {
        ImageFormat::Png => {
            let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
            let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
            Some(Size {
                width: w,
                height: h,
            })
        }
        ImageFormat::Jpeg => jpeg_dimensions(bytes),
        ImageFormat::Webp => webp_dimensions(bytes),
    }
}

/// The canvas of a `VP8X` file, or the frame of a simple lossy (`VP8 `) or lossless (`VP8L`) one.
fn webp_dimensions(bytes: &[u8]) -> Option<Size> {
    let b = |i: usize| bytes.get(i).copied().map(u32::from);
    // Little-endian, 24 bits.
    let le24 = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes([
            *bytes.get(i)?,
            *bytes.get(i.checked_add(1)?)?,
            *bytes.get(i.checked_add(2)?)?,
            0,
        ]))
    };
    let le14 = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes([*bytes.get(i)?, *bytes.get(i.checked_add(1)?)?, 0, 0]) & 0x3fff)
    };
    let (width, height) = match bytes.get(12..16)? {
        b"VP8X" => (le24(24)?.checked_add(1)?, le24(27)?.checked_add(1)?),
        b"VP8 " if bytes.get(23..26)? == [0x9d, 0x01, 0x2a] => (le14(26)?, le14(28)?),
        b"VP8L" if b(20)? == 0x2f => {
            let bits = u32::from_le_bytes(bytes.get(21..25)?.try_into().ok()?);
            (
                (bits & 0x3fff).checked_add(1)?,
                (bits.checked_shr(14)? & 0x3fff).checked_add(1)?,
            )
        }
        _ => return None,
    };
    Some(Size { width, height })
}

/// The frame size of the first SOF marker, walking the segments from the start.
fn jpeg_dimensions(bytes: &[u8]) -> Option<Size> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(
            bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
        ))
    };
    let mut i: usize = 2;
    loop {
        let (&lead, &marker) = (bytes.get(i)?, bytes.get(i.checked_add(1)?)?);
        if lead != 0xFF {
            i = i.checked_add(1)?;
            continue;
        }
        // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = be16(i.checked_add(5)?)?;
            let w = be16(i.checked_add(7)?)?;
            return Some(Size {
                width: u32::from(w),
                height: u32::from(h),
            });
        }
        let len = usize::from(be16(i.checked_add(2)?)?);
        i = i.checked_add(2)?.checked_add(len)?;
    }
}

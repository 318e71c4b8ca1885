//! Image size rules and the sizes the platform picks when the request gives a ratio instead.
//!
//! gpt-image-2 custom `WxH` (seed 001): both sides multiples of 16, longest side ≤ 3840, aspect
//! ratio ≤ 3:1, total pixels 655,360..=8,294,400.

/// Minimum total pixels of a gpt-image-2 size.
pub(crate) const MIN_PIXELS: u64 = 655_360;
/// Maximum total pixels of a gpt-image-2 size (3840x2160).
pub(crate) const MAX_PIXELS: u64 = 8_294_400;
/// Longest side of a gpt-image-2 size.
pub(crate) const MAX_SIDE: u32 = 3840;

/// The fixed ratios of `gpt-image-2-beta` and SparkPix.
pub(crate) const FIXED_RATIOS: [&str; 7] = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"];

/// Parses `"1024x1536"` (an `X` is accepted too).
pub(crate) fn parse_wxh(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.trim().split_once(['x', 'X'])?;
    let w: u32 = w.trim().parse().ok()?;
    let h: u32 = h.trim().parse().ok()?;
    (w > 0 && h > 0).then_some((w, h))
}

/// Checks the gpt-image-2 size rules.
pub(crate) fn check_gpt_size(w: u32, h: u32) -> Result<(), String> {
    let (long, short) = (w.max(h), w.min(h));
    let pixels = u64::from(w) * u64::from(h);
    if !w.is_multiple_of(16) || !h.is_multiple_of(16) {
        return Err(format!(
            "invalid size {w}x{h}: both sides must be multiples of 16"
        ));
    }
    if long > MAX_SIDE {
        return Err(format!(
            "invalid size {w}x{h}: longest side must be <= {MAX_SIDE}"
        ));
    }
    if u64::from(long) > 3 * u64::from(short) {
        return Err(format!("invalid size {w}x{h}: aspect ratio must be <= 3:1"));
    }
    if !(MIN_PIXELS..=MAX_PIXELS).contains(&pixels) {
        return Err(format!(
            "invalid size {w}x{h}: total pixels must be between {MIN_PIXELS} and {MAX_PIXELS}"
        ));
    }
    Ok(())
}

/// Parses `"16:9"` into positive integer parts.
pub(crate) fn parse_ratio(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.trim().split_once(':')?;
    let w: u32 = w.trim().parse().ok()?;
    let h: u32 = h.trim().parse().ok()?;
    (w > 0 && h > 0 && w <= 10_000 && h <= 10_000).then_some((w, h))
}

/// Longest side for a `gpt-image-2-all` resolution tier (`1K`, `2K`, `4K`, case-insensitive).
pub(crate) fn tier_side(resolution: &str) -> Option<u32> {
    match resolution.trim().to_ascii_uppercase().as_str() {
        "1K" => Some(1024),
        "2K" => Some(2048),
        "4K" => Some(3840),
        _ => None,
    }
}

fn round16(x: f64) -> u32 {
    ((x / 16.0).round() * 16.0).max(16.0) as u32
}

fn floor16(x: f64) -> u32 {
    ((x / 16.0).floor() * 16.0).max(16.0) as u32
}

fn ceil16(x: f64) -> u32 {
    ((x / 16.0).ceil() * 16.0).max(16.0) as u32
}

/// The size for an aspect ratio with the given longest side, following the gpt-image-2 rules.
///
/// The longest side is `longest`, the other follows the ratio; both are rounded to multiples of
/// 16. When that falls outside the pixel range (e.g. 4K 1:1 would be 3840x3840, 1K 16:9 only
/// 1024x576), the size is scaled into it: 4K 1:1 gives 2880x2880, 1K 16:9 gives 1088x608.
/// The ratio must already be ≤ 3:1.
pub(crate) fn size_for_ratio((rw, rh): (u32, u32), longest: u32) -> (u32, u32) {
    let r = f64::from(rw) / f64::from(rh);
    let l = f64::from(longest);
    let (w, h) = if r >= 1.0 { (l, l / r) } else { (l * r, l) };
    let px = w * h;
    let (w, h) = if px > MAX_PIXELS as f64 {
        let f = (MAX_PIXELS as f64 / px).sqrt();
        (floor16(w * f), floor16(h * f))
    } else if px < MIN_PIXELS as f64 {
        let f = (MIN_PIXELS as f64 / px).sqrt();
        (ceil16(w * f), ceil16(h * f))
    } else {
        (round16(w), round16(h))
    };
    if check_gpt_size(w, h).is_ok() {
        (w, h)
    } else {
        (1024, 1024)
    }
}

/// `gpt-image-2-beta` output size: 1024x1024 for 1:1, otherwise a 1536 longest side (so 3:2 is
/// the familiar 1536x1024 and 16:9 is 1536x864).
pub(crate) fn beta_size(ratio: (u32, u32)) -> (u32, u32) {
    if ratio.0 == ratio.1 {
        (1024, 1024)
    } else {
        size_for_ratio(ratio, 1536)
    }
}

/// SparkPix output size for a fixed ratio: about one megapixel, sides multiples of 16
/// (1:1 → 1024x1024, 16:9 → 1360x768, 3:2 → 1248x832).
pub(crate) fn sparkpix_size((rw, rh): (u32, u32)) -> (u32, u32) {
    let r = f64::from(rw) / f64::from(rh);
    let w = (1_048_576.0 * r).sqrt();
    (round16(w), round16(w / r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rules() {
        assert!(check_gpt_size(1024, 1024).is_ok());
        assert!(check_gpt_size(3840, 2160).is_ok());
        assert!(check_gpt_size(1000, 1000).is_err());
        assert!(check_gpt_size(3856, 2160).is_err());
        assert!(check_gpt_size(2880, 896).is_err());
        assert!(check_gpt_size(768, 768).is_err());
        assert!(check_gpt_size(3840, 3840).is_err());
    }

    #[test]
    fn ratio_sizes_obey_rules() {
        for ratio in [
            "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "3:1", "1:3",
        ] {
            for side in [1024, 2048, 3840] {
                let Some(r) = parse_ratio(ratio) else {
                    panic!("{ratio}")
                };
                let (w, h) = size_for_ratio(r, side);
                assert!(check_gpt_size(w, h).is_ok(), "{ratio} {side}: {w}x{h}");
            }
        }
        assert_eq!(size_for_ratio((16, 9), 2048), (2048, 1152));
        assert_eq!(size_for_ratio((9, 16), 3840), (2160, 3840));
        assert_eq!(size_for_ratio((1, 1), 3840), (2880, 2880));
        assert_eq!(beta_size((3, 2)), (1536, 1024));
        assert_eq!(sparkpix_size((16, 9)), (1360, 768));
    }
}

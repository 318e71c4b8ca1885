//! The image domain shared by the front and the adapters: public model ids, sizes, qualities,
//! formats and image bytes recognised by their magic numbers (never by a declared Content-Type),
//! money ([`Usd`]) and public names ([`Route`]). Layer 0: it imports nothing from the crate.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

pub mod capabilities;
mod image;
pub mod json_text;
mod money;
pub mod registry;
mod route;
mod text;

pub use image::image_dimensions;
pub use json_text::{JsonText, JsonWriter, Text};

pub use money::Usd;
pub use route::Route;
pub use text::TextRoute;

macro_rules! declare_model_ids {
    ($($variant:ident = $id:literal => $adapter:ident),+ $(,)?) => {
        /// A public model id. Each pins one upstream model (SparkPix pins two endpoints:
        /// generate and edit). Generated from the registry's one list ([`for_each_model!`](crate::for_each_model)).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub enum ModelId {
            $($variant),+
        }

        impl ModelId {
            /// Every model, in registry order.
            pub const ALL: [ModelId; [$(stringify!($variant)),+].len()] = [$(Self::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            /// The public id, as clients and the config name it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $id),+
                }
            }
        }
    };
}

crate::for_each_model!(declare_model_ids);

impl ModelId {
    /// The model's place in [`registry::MODELS`] and in per-model tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Everything the registry says about this model.
    pub fn def(self) -> &'static registry::ModelDef {
        &registry::MODELS[self.index()]
    }
}

impl FromStr for ModelId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown model `{s}`"))
    }
}

impl TryFrom<String> for ModelId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl serde::Serialize for ModelId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pixel dimensions, `WxH` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub fn parse(s: &str) -> Option<Self> {
        let (w, h) = s.trim().split_once(['x', 'X'])?;
        let (width, height) = (w.parse().ok()?, h.parse().ok()?);
        (width > 0 && height > 0).then_some(Self { width, height })
    }

    pub fn longest(self) -> u32 {
        self.width.max(self.height)
    }

    pub fn pixels(self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Picks the ratio in `supported` (`"W:H"` strings) closest to this size on a log scale.
    pub fn nearest_ratio<'a>(self, supported: &[&'a str]) -> Option<&'a str> {
        let want = (f64::from(self.width) / f64::from(self.height)).ln();
        supported
            .iter()
            .filter_map(|r| {
                let (a, b) = r.split_once(':')?;
                let v = (a.parse::<f64>().ok()? / b.parse::<f64>().ok()?).ln();
                Some((*r, (v - want).abs()))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(r, _)| r)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Low,
    Medium,
    High,
    Auto,
}

impl Quality {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    /// Recognises PNG, JPEG and WEBP by their magic bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.get(..4) == Some(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
            Some(Self::Webp)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "png" => Some(Self::Png),
            "jpeg" | "jpg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_reduce() {
        assert_eq!(
            Size::parse("1536x1024"),
            Some(Size {
                width: 1536,
                height: 1024
            })
        );
        assert_eq!(Size::parse("0x10"), None);
        assert_eq!(Size::parse("abc"), None);
        assert_eq!(Size::parse("1024"), None);
    }

    #[test]
    fn nearest_ratio_picks_closest_on_log_scale() {
        let supported = ["1:1", "16:9", "9:16", "4:3", "3:4"];
        let near = |s| Size::parse(s).and_then(|s| s.nearest_ratio(&supported));
        assert_eq!(near("1024x1024"), Some("1:1"));
        assert_eq!(near("1536x1024"), Some("4:3"));
        assert_eq!(near("3840x2160"), Some("16:9"));
        assert_eq!(near("1024x1536"), Some("3:4"));
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(
            ImageFormat::sniff(b"\x89PNG\r\n\x1a\nrest"),
            Some(ImageFormat::Png)
        );
        assert_eq!(
            ImageFormat::sniff(b"\xFF\xD8\xFF\xE0"),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            ImageFormat::sniff(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFormat::Webp)
        );
        assert_eq!(ImageFormat::sniff(b"GIF89a"), None);
    }

    #[test]
    fn reads_webp_dimensions_from_each_header_kind() {
        let head = b"RIFF\0\0\0\0WEBP".to_vec();
        let with = |chunk: &[u8], rest: &[u8]| {
            let mut v = head.clone();
            v.extend_from_slice(chunk);
            v.extend_from_slice(&[0; 4]);
            v.extend_from_slice(rest);
            image_dimensions(&v).map(|s| (s.width, s.height))
        };
        // VP8X: 24-bit canvas width-1 and height-1.
        let vp8x = [0u8, 0, 0, 0, 0xff, 0x05, 0, 0x1f, 0x03, 0];
        assert_eq!(with(b"VP8X", &vp8x), Some((1536, 800)));
        // VP8 (lossy): frame tag, start code, 14-bit sides.
        let vp8 = [0u8, 0, 0, 0x9d, 0x01, 0x2a, 0x00, 0x04, 0x00, 0x03];
        assert_eq!(with(b"VP8 ", &vp8), Some((1024, 768)));
        // VP8L (lossless): signature, then width-1 and height-1 in 14 bits each.
        let bits: u32 = 1023 | (511 << 14);
        let mut vp8l = vec![0x2f];
        vp8l.extend_from_slice(&bits.to_le_bytes());
        assert_eq!(with(b"VP8L", &vp8l), Some((1024, 512)));
        assert_eq!(with(b"VP8Z", &vp8l), None);
    }
}

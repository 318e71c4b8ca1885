//! What each upstream model can do, checked against a request. The rows themselves are data in
//! the model registry ([`crate::model::registry`]): the routing filter reads them,
//! `GET /admin/upstreams` shows them, and a test keeps them in step with the adapters' own checks
//! (`upstream::plan` must accept exactly what [`Capabilities::check`] accepts).

use std::time::Duration;

pub use crate::model::capabilities::{Capabilities, MaskSupport, Mode, SizePolicy, SizeRule};
use crate::model::{ModelId, Quality, Size};
use crate::request::{ImageRef, ImageRequest, Operation, ResponseFormat};

/// The catalog entry of `model`.
pub fn capabilities(model: ModelId) -> &'static Capabilities {
    &model.def().catalog
}

impl Capabilities {
    /// Whether this model can serve `req` as asked; `Err` says why not, in a few words.
    pub fn check(&self, req: &ImageRequest) -> Result<(), String> {
        let uploads = req.images.iter().filter(|r| r.is_bytes()).count();
        let urls = req.images.len() - uploads;
        if uploads > self.max_uploads {
            return Err(if self.max_uploads == 0 {
                "takes reference images as URLs only".to_owned()
            } else {
                format!("takes at most {} uploaded image(s)", self.max_uploads)
            });
        }
        if urls > 0 && !self.urls {
            return Err("does not take reference URLs".to_owned());
        }
        // gpt-image-2-all's async (task envelope) mode takes one upload beside URLs.
        let task_mode = self.mode == Mode::SyncOrAsync && self.async_mode(req);
        if task_mode && uploads > 1 {
            return Err("takes one uploaded image in aspect_ratio mode".to_owned());
        }
        if uploads > 0 && urls > 0 && !self.mix_uploads_and_urls && !task_mode {
            return Err("cannot mix uploaded images with image URLs".to_owned());
        }
        if req.images.len() > self.max_references {
            return Err(format!(
                "takes at most {} reference images",
                self.max_references
            ));
        }
        match (&req.mask, self.mask) {
            (None, _) => {}
            (Some(_), MaskSupport::None) => return Err("does not support masks".to_owned()),
            (Some(ImageRef::Url(_)), MaskSupport::Upload) => {
                return Err("takes the mask as an upload only".to_owned())
            }
            (Some(ImageRef::Url(_)), MaskSupport::UploadOrUrl) if uploads > 0 && !task_mode => {
                return Err("takes a mask URL only without uploads".to_owned())
            }
            (Some(_), _) => {}
        }
        if req.transparent() && !self.transparent_background {
            return Err("cannot make transparent backgrounds".to_owned());
        }
        if let Some(size) = req.size {
            self.check_size(size)?;
        }
        self.check_output_format(req)
    }

    /// A `url` answer is the model's own file: it can only be in a format the model makes.
    pub fn check_output_format(&self, req: &ImageRequest) -> Result<(), String> {
        match req.output_format {
            Some(f)
                if req.response_format == ResponseFormat::Url
                    && !req.stream
                    && !self.output_formats.contains(&f) =>
            {
                let made: Vec<&str> = self.output_formats.iter().map(|f| f.as_str()).collect();
                Err(format!(
                    "makes {} files only, and a `url` answer cannot be converted to {}",
                    made.join("/"),
                    f.as_str()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Whether this model delivers exactly what `req` asks, beyond being able to take it: an
    /// explicit `WxH` size is made as asked unless the caller accepts the nearest aspect ratio.
    /// Groups route only to models that do; a pinned model keeps its documented behaviour.
    pub fn delivers(&self, req: &ImageRequest, policy: SizePolicy) -> Result<(), String> {
        let Some(size) = req.size else {
            return Ok(());
        };
        let edit = req.op == Operation::Edit || !req.images.is_empty();
        let nearest = self.sizes == SizeRule::NearestRatio || (edit && self.nearest_ratio_on_edit);
        if nearest && policy == SizePolicy::Exact {
            return Err(format!(
                "makes the nearest aspect ratio, not {size} exactly (send `x-imagegate-size-policy: nearest` to allow it)"
            ));
        }
        Ok(())
    }

    /// gpt-image-2-all's async mode: no `WxH` size, but `aspect_ratio` or `resolution`.
    fn async_mode(&self, req: &ImageRequest) -> bool {
        req.size.is_none()
            && (req.extras.contains_key("aspect_ratio") || req.extras.contains_key("resolution"))
    }

    fn check_size(&self, s: Size) -> Result<(), String> {
        match self.sizes {
            SizeRule::NearestRatio => Ok(()),
            SizeRule::Sides { min, max } => {
                let in_range = |v: u32| (min..=max).contains(&v);
                if !in_range(s.width) || !in_range(s.height) {
                    Err(format!("makes {min}–{max} px sides only, not {s}"))
                } else if !s.width.is_multiple_of(16) || !s.height.is_multiple_of(16) {
                    Err(format!("makes sides in steps of 16 px only, not {s}"))
                } else {
                    Ok(())
                }
            }
            SizeRule::GptImage2 => {
                let (long, short) = (s.longest(), s.width.min(s.height));
                let ok = s.width.is_multiple_of(16)
                    && s.height.is_multiple_of(16)
                    && long <= 3840
                    && long <= short.saturating_mul(3)
                    && (655_360..=8_294_400).contains(&s.pixels());
                if ok {
                    Ok(())
                } else {
                    Err(format!("cannot make {s}"))
                }
            }
        }
    }

    /// The catalog's typical latency for `quality` (`auto` counts as medium).
    pub fn typical_latency(&self, quality: Quality) -> Duration {
        let i = match quality {
            Quality::Low => 0,
            Quality::Medium | Quality::Auto => 1,
            Quality::High => 2,
        };
        Duration::from_secs_f64(self.typical_latency_s[i])
    }
}

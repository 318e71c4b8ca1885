//! The exact price of a request on one upstream model, from the platform's tables
//! (`models.<id>` in the config, whose defaults are the documented prices).
//!
//! Each model's [`PriceRule`] (in the registry) says which keys apply:
//!
//! | rule | price per image | models |
//! |---|---|---|
//! | flat | `price_usd` | gpt-image-2-lite ($0.04), gpt-image-2-beta ($0.03, not published: set it) |
//! | matrix | `price_matrix_usd[tier][quality]`: tier by the longest side (1K ≤ 1536 < 2K ≤ 2048 < 4K), `auto` quality priced as `medium` | gpt-image-2-all |
//! | generate/edit | `price_usd` to generate, `edit_price_usd` to edit | sparkpix ($0.010 / $0.013) |
//!
//! Every price is × `n`. Amounts are integer micro-dollars ([`Usd`]) so sums over a ledger are
//! exact.

use crate::config::{ModelConfig, ModelsConfig};
use crate::model::registry::PriceRule;
pub use crate::model::Usd;
use crate::model::{ModelId, Quality, Size};
use crate::request::{ImageRequest, Operation};

/// gpt-image-2-all's billing tier for an image of `size` (by its longest side).
pub fn tier(size: Size) -> &'static str {
    match size.longest() {
        0..=1536 => "1K",
        1537..=2048 => "2K",
        _ => "4K",
    }
}

/// What `req` costs on one model: computed once per candidate by routing, then carried by the
/// attempt, so the reservation, the settlement, the cost header, the ledger and the metrics all
/// read the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// One image.
    pub unit: Usd,
    /// The most images the upstream may make (and bill) for the request: `n`, or for a SparkPix
    /// edit with k reference URLs, `n` × k (the edit model can return one result per input).
    pub n: u8,
}

impl Price {
    /// All `n` images: what is reserved before the call.
    pub fn total(self) -> Usd {
        self.unit * u64::from(self.n)
    }

    /// What `images` images cost (at most `n`): what is settled after the call.
    pub fn of(self, images: usize) -> Usd {
        self.unit * images.min(usize::from(self.n)) as u64
    }
}

/// The price of `req` on `model`.
pub fn price(models: &ModelsConfig, model: ModelId, req: &ImageRequest) -> Price {
    let per_call = match model.def().price {
        // NOTE(upstream): "the edit model can return several images"; it is billed per image.
        PriceRule::GenerateEdit { .. } if uses_edit_endpoint(req) => req.images.len().max(1),
        _ => 1,
    };
    Price {
        unit: per_image(models.get(model), model, req),
        n: u8::try_from(usize::from(req.n).saturating_mul(per_call)).unwrap_or(u8::MAX),
    }
}

/// The SparkPix edit endpoint serves edits and generations with reference images.
fn uses_edit_endpoint(req: &ImageRequest) -> bool {
    req.op == Operation::Edit || !req.images.is_empty()
}

fn per_image(m: &ModelConfig, model: ModelId, req: &ImageRequest) -> Usd {
    let flat = |p: Option<f64>| Usd::from_dollars(p.unwrap_or_default());
    match model.def().price {
        PriceRule::Flat { .. } => flat(m.price_usd),
        PriceRule::GenerateEdit { .. } if uses_edit_endpoint(req) => flat(m.edit_price_usd),
        PriceRule::GenerateEdit { .. } => flat(m.price_usd),
        PriceRule::Matrix { .. } => {
            let Some(matrix) = &m.price_matrix_usd else {
                return Usd::ZERO;
            };
            let Some(row) = matrix.get(matrix_tier(req)) else {
                return Usd::ZERO;
            };
            Usd::from_dollars(match req.quality {
                Quality::Low => row.low,
                Quality::Medium | Quality::Auto => row.medium,
                Quality::High => row.high,
            })
        }
    }
}

/// The tier a matrix-priced model bills: the size's, or the async mode's `resolution`, or 1K
/// (its default size, 1024x1024).
fn matrix_tier(req: &ImageRequest) -> &'static str {
    if let Some(size) = req.size {
        return tier(size);
    }
    match req.extras.get("resolution").and_then(|v| v.as_str()) {
        Some("2K") => "2K",
        Some("4K") => "4K",
        _ => "1K",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::request::{Head, ImageRef};

    fn req(fields: Value) -> ImageRequest {
        let mut map = fields.as_object().cloned().unwrap_or_default();
        map.entry("prompt").or_insert(json!("a cat"));
        let head = Head::from_fields(&map).unwrap();
        ImageRequest::from_fields(Operation::Generate, head, &map, Vec::new(), None).unwrap()
    }

    fn cost(models: &ModelsConfig, model: ModelId, req: &ImageRequest) -> Usd {
        price(models, model, req).total()
    }

    fn cost_of(model: ModelId, fields: Value) -> String {
        cost(&ModelsConfig::default(), model, &req(fields)).to_string()
    }

    #[test]
    fn every_cell_of_the_all_matrix() {
        let sizes = [
            ("1K", "1024x1024"),
            ("2K", "2048x2048"),
            ("4K", "3840x2160"),
        ];
        let table = [
            ("1K", "low", "0.005"),
            ("1K", "medium", "0.025"),
            ("1K", "auto", "0.025"),
            ("1K", "high", "0.07"),
            ("2K", "low", "0.01"),
            ("2K", "medium", "0.04"),
            ("2K", "auto", "0.04"),
            ("2K", "high", "0.1"),
            ("4K", "low", "0.015"),
            ("4K", "medium", "0.06"),
            ("4K", "auto", "0.06"),
            ("4K", "high", "0.23"),
        ];
        for (tier, quality, want) in table {
            let size = sizes.iter().find(|s| s.0 == tier).unwrap().1;
            let got = cost_of(ModelId::All, json!({"size": size, "quality": quality}));
            assert_eq!(got, want, "{tier} {quality}");
            // The async mode's `resolution` bills the same tier.
            let got = cost_of(
                ModelId::All,
                json!({"resolution": tier, "aspect_ratio": "1:1", "quality": quality}),
            );
            assert_eq!(got, want, "resolution {tier} {quality}");
        }
    }

    #[test]
    fn tier_boundaries_on_the_longest_side() {
        let table = [
            ("1536x1024", "1K"),
            ("1024x1536", "1K"),
            ("1537x1024", "2K"),
            ("1024x1537", "2K"),
            ("2048x1152", "2K"),
            ("2048x2048", "2K"),
            ("2049x1024", "4K"),
            ("1024x2049", "4K"),
            ("3840x2160", "4K"),
        ];
        for (size, want) in table {
            assert_eq!(tier(Size::parse(size).unwrap()), want, "{size}");
        }
        assert_eq!(
            cost_of(
                ModelId::All,
                json!({"size": "1536x1024", "quality": "high"})
            ),
            "0.07"
        );
        assert_eq!(
            cost_of(
                ModelId::All,
                json!({"size": "1552x1024", "quality": "high"})
            ),
            "0.1"
        );
        assert_eq!(
            cost_of(
                ModelId::All,
                json!({"size": "2048x1152", "quality": "high"})
            ),
            "0.1"
        );
        assert_eq!(
            cost_of(
                ModelId::All,
                json!({"size": "2064x1152", "quality": "high"})
            ),
            "0.23"
        );
    }

    #[test]
    fn flat_prices_and_n() {
        let table = [
            (ModelId::Lite, json!({}), "0.04"),
            (
                ModelId::Lite,
                json!({"size": "3840x2160", "quality": "high"}),
                "0.04",
            ),
            (ModelId::Lite, json!({"n": 3}), "0.12"),
            (ModelId::Beta, json!({"n": 2}), "0.06"),
            (ModelId::SparkPix, json!({}), "0.01"),
            (ModelId::SparkPix, json!({"n": 10}), "0.1"),
            (ModelId::All, json!({}), "0.025"),
            (
                ModelId::All,
                json!({"n": 4, "quality": "high", "size": "2048x2048"}),
                "0.4",
            ),
        ];
        for (model, fields, want) in table {
            assert_eq!(cost_of(model, fields.clone()), want, "{model} {fields}");
        }
    }

    #[test]
    fn sparkpix_edits_use_the_edit_price() {
        let map = json!({"prompt": "x", "n": 2}).as_object().cloned().unwrap();
        let url = ImageRef::Url("https://example.com/a.png".to_owned());
        let head = Head::from_fields(&map).unwrap();
        let r = ImageRequest::from_fields(Operation::Edit, head, &map, vec![url], None).unwrap();
        assert_eq!(
            cost(&ModelsConfig::default(), ModelId::SparkPix, &r).to_string(),
            "0.026"
        );
    }

    #[test]
    fn configured_prices_win_and_usd_prints_exactly() {
        let mut models = ModelsConfig::default();
        models.get_mut(ModelId::Beta).price_usd = Some(0.0333);
        assert_eq!(
            cost(&models, ModelId::Beta, &req(json!({"n": 3}))),
            Usd(99_900)
        );
        assert_eq!(Usd(0).to_string(), "0");
        assert_eq!(Usd(1_500_000).to_string(), "1.5");
        assert_eq!(Usd(1).to_string(), "0.000001");
        assert_eq!(Usd(40_000).to_string(), "0.04");
        assert_eq!(Usd(5_000).to_string(), "0.005");
        assert_eq!(Usd(12_345_678).to_string(), "12.345678");
        assert_eq!(Usd(3_010_000).to_string(), "3.01");
        assert_eq!(Usd::from_dollars(0.07), Usd(70_000));
    }

    #[test]
    fn a_price_settles_only_the_images_made() {
        let p = price(
            &ModelsConfig::default(),
            ModelId::SparkPix,
            &req(json!({"n": 3})),
        );
        assert_eq!(
            (p.total(), p.of(2), p.of(0), p.of(9)),
            (Usd(30_000), Usd(20_000), Usd(0), Usd(30_000))
        );
    }
}

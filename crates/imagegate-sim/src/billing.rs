//! What the platform would charge, as `GET /_sim/stats` reports it (`billed_micros`,
//! `billed_by_model`, `tasks_billed`), in micro-dollars (1 USD = 1,000,000 µ$).
//!
//! Rule (UPSTREAM.md: "per image; failed generations are not charged"): a task, sync or async,
//! is billed once, when it completes successfully, at its model's price per image times the
//! images it made. A failed task (`policy`, `fail`), a `stuck` one and one still running at
//! shutdown are not billed. Faults that act after the work was done do not change that:
//! `reset`, `truncate`, `stallcreate`, `nofile`, `slowfile` and `pollfail` tasks are billed like
//! any success, even when the caller never saw the answer. HTTP-level faults and rejected
//! requests create no task and are not billed.
//!
//! Prices per image:
//! - `gpt-image-2-lite`: $0.04 flat.
//! - `gpt-image-2-all` (both endpoints, sync and async): by quality (`auto` billed as `medium`,
//!   the default) and by the tier of the output's longest side (1K ≤ 1536, 2K ≤ 2048, 4K above):
//!
//!   | tier | low | medium / auto | high |
//!   |---|---|---|---|
//!   | 1K | 0.005 | 0.025 | 0.07 |
//!   | 2K | 0.01 | 0.04 | 0.10 |
//!   | 4K | 0.015 | 0.06 | 0.23 |
//! - `gpt-image-2-beta`: the platform publishes no price; billed at $0.03, the gateway's default
//!   `price_usd` for it.
//! - SparkPix Image: $0.01; SparkPix Image Edit: $0.013 per result image.

use super::jobs::Model;
use super::params::Quality;

/// Micro-dollars per image of the gpt-image-2-all matrix: `[tier][low, medium, high]`.
const ALL_MICROS: [[u64; 3]; 3] = [
    [5_000, 25_000, 70_000],
    [10_000, 40_000, 100_000],
    [15_000, 60_000, 230_000],
];

/// The price of one image made by `model` at `width`x`height`, in micro-dollars.
///
/// `quality` is the request's (`None` when the model has no such field, or it was absent).
pub(crate) fn image_micros(model: Model, quality: Option<Quality>, width: u32, height: u32) -> u64 {
    match model {
        Model::Lite => 40_000,
        Model::Beta => 30_000,
        Model::SparkImage => 10_000,
        Model::SparkEdit => 13_000,
        Model::All => {
            let tier = match width.max(height) {
                0..=1536 => 0,
                1537..=2048 => 1,
                _ => 2,
            };
            let column = match quality {
                Some(Quality::Low) => 0,
                None | Some(Quality::Medium | Quality::Auto) => 1,
                Some(Quality::High) => 2,
            };
            ALL_MICROS[tier][column]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_follow_the_platform_pages() {
        let all = |q, w, h| image_micros(Model::All, Some(q), w, h);
        assert_eq!(all(Quality::Low, 1024, 1024), 5_000);
        assert_eq!(all(Quality::Auto, 1536, 1024), 25_000);
        assert_eq!(all(Quality::High, 1024, 1536), 70_000);
        assert_eq!(all(Quality::Medium, 2048, 1152), 40_000);
        assert_eq!(all(Quality::High, 2048, 2048), 100_000);
        assert_eq!(all(Quality::Low, 3840, 2160), 15_000);
        assert_eq!(all(Quality::High, 2160, 3840), 230_000);
        assert_eq!(image_micros(Model::All, None, 2880, 2880), 60_000);
        assert_eq!(
            image_micros(Model::Lite, Some(Quality::High), 1536, 1024),
            40_000
        );
        assert_eq!(image_micros(Model::Beta, None, 1024, 1024), 30_000);
        assert_eq!(image_micros(Model::SparkImage, None, 1024, 1024), 10_000);
        assert_eq!(image_micros(Model::SparkEdit, None, 1024, 1024), 13_000);
    }
}

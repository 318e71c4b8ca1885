//! Every upstream model in one place: its public id, its adapter, what it can do (the catalog
//! row), its price rule and its default timings.
//!
//! **Adding a model** is one entry here — a line in [`for_each_model!`](crate::for_each_model) naming its variant and
//! adapter module, and its [`ModelDef`] in [`MODELS`] (same order) — plus its adapter file
//! `src/upstream/<module>.rs` with a pure `plan` and an `execute`. Everything else (the id's
//! parsing and display, `[models.<id>]` settings, prices, routing's catalog, health, metrics,
//! `GET /v1/models`, the `auto` group) reads this table.

use super::capabilities::{Capabilities, MaskSupport, Mode, SizeRule};
use super::ImageFormat;

/// Calls `$callback!` with every model as `Variant = "public id" => adapter_module`, in
/// [`MODELS`] order. The one list of models: [`super::ModelId`] and the upstream's adapter
/// dispatch are generated from it.
#[macro_export]
macro_rules! for_each_model {
    ($callback:path) => {
        $callback! {
            Lite = "gpt-image-2-lite" => lite,
            All = "gpt-image-2-all" => all,
            Beta = "gpt-image-2-beta" => beta,
            SparkPix = "sparkpix" => sparkpix,
        }
    };
}

/// How a model bills one image. The amounts are the defaults of `[models.<id>]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriceRule {
    /// One price per image (`price_usd`).
    Flat { usd: f64 },
    /// A generation (`price_usd`) and an edit — or a generation with reference images, which
    /// goes to the edit endpoint — (`edit_price_usd`).
    GenerateEdit { generate_usd: f64, edit_usd: f64 },
    /// By tier and quality (`price_matrix_usd`): `auto` quality is billed as medium, a request
    /// with no size as 1K, the async mode's `resolution` as its tier.
    Matrix { usd: [(&'static str, [f64; 3]); 3] },
}

/// Default timings of `[models.<id>]`, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// The whole request on this model: create, polls and the sync call itself.
    pub deadline_s: u64,
    /// Before the first poll of an async task.
    pub first_poll_delay_s: u64,
    /// Between polls (at least 1 s: the platform asks for 2–3 s).
    pub poll_interval_s: u64,
}

/// One upstream model.
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// The public id, as clients and the config name it.
    pub id: &'static str,
    pub catalog: Capabilities,
    pub price: PriceRule,
    pub timings: Timings,
    /// Default cap on this model's requests in flight (`[limits.models.<id>] max_concurrent`):
    /// a sync call holds an upstream connection for its whole generation, an async one a task
    /// the account runs. It protects the upstream account from one burst.
    pub max_concurrent: u32,
}

/// Every model, in [`for_each_model!`](crate::for_each_model) order (a test checks the two agree).
pub const MODELS: [ModelDef; super::ModelId::COUNT] = [
    // Lite: `src/upstream/lite.rs`
    ModelDef {
        id: "gpt-image-2-lite",
        catalog: Capabilities {
            generate: true,
            edit: true,
            max_uploads: 1,
            urls: true,
            mix_uploads_and_urls: true,
            max_references: 16,
            mask: MaskSupport::Upload,
            transparent_background: false,
            sizes: SizeRule::GptImage2,
            nearest_ratio_on_edit: false,
            output_formats: &[ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp],
            native_n: true,
            mode: Mode::Sync,
            typical_latency_s: [10.0, 15.0, 25.0],
        },
        price: PriceRule::Flat { usd: 0.04 },
        // Synchronous task envelope: the create call already carries the result.
        timings: Timings {
            deadline_s: 180,
            first_poll_delay_s: 5,
            poll_interval_s: 3,
        },
        max_concurrent: 256,
    },
    // All: `src/upstream/all.rs`
    ModelDef {
        id: "gpt-image-2-all",
        catalog: Capabilities {
            generate: true,
            edit: true,
            max_uploads: 16,
            urls: true,
            mix_uploads_and_urls: false,
            max_references: 16,
            mask: MaskSupport::UploadOrUrl,
            transparent_background: true,
            sizes: SizeRule::GptImage2,
            nearest_ratio_on_edit: false,
            output_formats: &[ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Webp],
            native_n: true,
            mode: Mode::SyncOrAsync,
            typical_latency_s: [40.0, 90.0, 120.0],
        },
        price: PriceRule::Matrix {
            // By tier (longest side: 1K ≤ 1536 < 2K ≤ 2048 < 4K) × quality [low, medium, high].
            usd: [
                ("1K", [0.005, 0.025, 0.07]),
                ("2K", [0.01, 0.04, 0.10]),
                ("4K", [0.015, 0.06, 0.23]),
            ],
        },
        // low ≈ 40 s, medium 60–90 s, high ≈ 2 min.
        timings: Timings {
            deadline_s: 240,
            first_poll_delay_s: 10,
            poll_interval_s: 3,
        },
        max_concurrent: 256,
    },
    // Beta: `src/upstream/beta.rs`
    ModelDef {
        id: "gpt-image-2-beta",
        catalog: Capabilities {
            generate: true,
            edit: true,
            max_uploads: 0,
            urls: true,
            mix_uploads_and_urls: false,
            max_references: 16,
            mask: MaskSupport::None,
            transparent_background: false,
            sizes: SizeRule::NearestRatio,
            nearest_ratio_on_edit: false,
            output_formats: &[ImageFormat::Png],
            native_n: false,
            mode: Mode::Async,
            typical_latency_s: [40.0, 40.0, 40.0],
        },
        // Not published by the platform: set `price_usd` in the config.
        price: PriceRule::Flat { usd: 0.03 },
        // Typical 15–40 s.
        timings: Timings {
            deadline_s: 120,
            first_poll_delay_s: 5,
            poll_interval_s: 2,
        },
        max_concurrent: 2000,
    },
    // SparkPix: `src/upstream/sparkpix.rs`
    ModelDef {
        id: "sparkpix",
        catalog: Capabilities {
            generate: true,
            edit: true,
            max_uploads: 0,
            urls: true,
            mix_uploads_and_urls: false,
            max_references: 16,
            mask: MaskSupport::None,
            transparent_background: false,
            sizes: SizeRule::Sides {
                min: 256,
                max: 1440,
            },
            nearest_ratio_on_edit: true,
            output_formats: &[ImageFormat::Jpeg],
            native_n: false,
            mode: Mode::Sync,
            typical_latency_s: [1.0, 1.0, 1.0],
        },
        price: PriceRule::GenerateEdit {
            generate_usd: 0.010,
            edit_usd: 0.013,
        },
        // Sub-second sync endpoints.
        timings: Timings {
            deadline_s: 30,
            first_poll_delay_s: 5,
            poll_interval_s: 3,
        },
        max_concurrent: 256,
    },
];

/// The default groups beside `auto` (every model): name and members, in preference order for
/// equal prices.
pub const GROUPS: [(&str, &[super::ModelId]); 1] = [(
    "gpt-image-2",
    &[
        super::ModelId::All,
        super::ModelId::Lite,
        super::ModelId::Beta,
    ],
)];

#[cfg(test)]
mod tests {
    use super::super::ModelId;
    use super::MODELS;

    #[test]
    fn the_table_follows_the_list() {
        for m in ModelId::ALL {
            assert_eq!(m.def().id, m.as_str(), "{m:?}: MODELS is out of order");
            assert_eq!(m.as_str().parse::<ModelId>(), Ok(m));
        }
        assert_eq!(MODELS.len(), ModelId::COUNT);
    }
}

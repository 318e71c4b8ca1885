//! A public model name and the upstream models it stands for.

use std::sync::Arc;

use super::ModelId;

/// What a public model name stands for.
#[derive(Debug, Clone)]
pub struct Route {
    /// The name the caller used (or the default model's).
    pub public: Arc<str>,
    /// Enabled member models, in configuration order.
    pub members: Vec<ModelId>,
    /// A model id, not a group or alias: only that model, with its own error messages.
    pub pinned: bool,
}

impl Route {
    /// A route to exactly `model`.
    pub fn pinned(model: ModelId) -> Self {
        Self {
            public: Arc::from(model.as_str()),
            members: vec![model],
            pinned: true,
        }
    }
}

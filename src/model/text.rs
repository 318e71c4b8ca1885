//! The text pass-through's routes (`[passthrough]`): the OpenAI routes Codex and Cursor send
//! for every model turn.

/// A text route the gateway relays to its text upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextRoute {
    Responses,
    ChatCompletions,
}

impl TextRoute {
    /// The path under the text upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::ChatCompletions => "chat/completions",
        }
    }

    /// The `route` label of the text metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::ChatCompletions => "chat_completions",
        }
    }

    /// The request fields that cap the output tokens, in order of preference.
    pub fn output_cap_fields(self) -> &'static [&'static str] {
        match self {
            Self::Responses => &["max_output_tokens"],
            Self::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        }
    }
}

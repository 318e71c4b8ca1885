//! Integration tests: one binary, a simulator and a gateway per test on ephemeral ports.

mod binary;
mod edits;
mod errors;
mod failures;
mod generate;
mod lifecycle;
mod models;
mod support;

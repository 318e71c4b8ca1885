#!/usr/bin/env bash
# The project's test command: every Rust test, then the end-to-end tests with the OpenAI SDKs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> cargo test --locked"
cargo test --locked

scripts/e2e.sh

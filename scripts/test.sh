#!/usr/bin/env bash
# The project's test command: every test of every crate, then the doctests
# (nextest does not run doctests).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --workspace --no-fail-fast "$@"
cargo test --workspace --doc

#!/usr/bin/env bash
# The project's test command: every test of every crate, then the doctests
# (nextest does not run doctests). First it makes sure the third-party mock
# LLM servers that the provider tests start are installed (pinned versions,
# into target/test-peers; a second run takes a fraction of a second).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEPUTY_TEST_PEERS="${DEPUTY_TEST_PEERS:-$PWD/target/test-peers}"
bash scripts/install-test-peers.sh "$DEPUTY_TEST_PEERS" >/dev/null
cargo nextest run --workspace --no-fail-fast "$@"
cargo test --workspace --doc

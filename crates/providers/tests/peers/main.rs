//! deputy-providers against two third-party mock LLM servers, started on
//! 127.0.0.1 for each test: llmock 0.2.2 (Python; OpenAI, Anthropic and
//! Gemini routes, scripted faults, and a verdict on how the client
//! handled them) and @copilotkit/aimock 1.43.0 (npm; fixtures, Ollama's
//! `/api/chat`).
//!
//! The servers come from `bash scripts/install-test-peers.sh`, which puts
//! them in `target/test-peers`; `DEPUTY_TEST_PEERS` names another
//! directory. Missing servers fail the tests, they never skip them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test helpers outside #[test] functions may unwrap, and a peer that dies with a failing test prints its log"
)]

mod broken_streams;
mod retries;
mod round_trips;
mod streamed_vs_plain;
mod support;

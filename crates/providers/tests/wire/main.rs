//! Each backend against `wiremock`: request shapes and headers, parsing of
//! text, tool calls, usage and finish reasons, stream assembly, every error
//! kind, and retry sequences.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions may panic on setup errors"
)]

mod anthropic;
mod config;
mod gemini;
mod ollama;
mod openai;
mod reliability;
mod support;

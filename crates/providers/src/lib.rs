//! Provider backends for deputy agents: OpenAI-compatible, Anthropic,
//! Gemini, Ollama and the offline `scripted` backend.
//!
//! Each agent names its own provider. Providers report token usage in the
//! registry's [`Usage`] type so hooks can bill it. The backends themselves
//! arrive with the providers issue; today this crate only fixes its place in
//! the dependency graph (it depends on `deputy-registry` and nothing else in
//! the workspace).

pub use deputy_registry::Usage;

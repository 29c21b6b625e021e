//! Cross-crate end-to-end tests for deputy live in `tests/tests/`; this
//! library is empty on purpose.

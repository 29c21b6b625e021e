//! API keys that cannot leak by accident.

use std::fmt;
use std::sync::Arc;

/// An API key. Its `Debug` shows only that a key is there, it has no
/// `Display`, and [`redact`](Self::redact) cuts it out of text a server
/// sent back, so it never reaches logs, errors or hook environments.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the one place that sends it: a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the key replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        // Very short "keys" (placeholders for local servers) would mangle
        // ordinary words; they protect nothing anyway.
        if self.0.len() < 8 {
            return text.to_owned();
        }
        text.replace(&*self.0, "[redacted]")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_redact_hide_the_key() {
        let key = ApiKey::new("sk-test-1234567890");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(
            key.redact("Incorrect API key provided: sk-test-1234567890."),
            "Incorrect API key provided: [redacted]."
        );
        assert_eq!(key.expose(), "sk-test-1234567890");
    }
}

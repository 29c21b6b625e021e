//! Token usage, shared by providers (which report it) and hooks (which bill it).

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Tokens spent by one or more provider calls.
///
/// `input_tokens` counts the prompt tokens billed at the normal input rate;
/// cache reads and writes are counted apart because they are priced apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Prompt tokens billed at the input rate.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write_tokens: u64,
    /// Provider requests made (retries included).
    pub requests: u64,
}

impl Usage {
    /// Every token of every kind.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    /// What is left of `self` after `other`, field by field, never below
    /// zero (a run's own calls are its total minus its sub-agents').
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            input_tokens: self.input_tokens.saturating_sub(other.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(other.output_tokens),
            cache_read_tokens: self
                .cache_read_tokens
                .saturating_sub(other.cache_read_tokens),
            cache_write_tokens: self
                .cache_write_tokens
                .saturating_sub(other.cache_write_tokens),
            requests: self.requests.saturating_sub(other.requests),
        }
    }

    /// Whether nothing was spent.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

impl Add for Usage {
    type Output = Self;

    fn add(mut self, other: Self) -> Self {
        self += other;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_every_field_and_saturates() {
        let a = Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_tokens: 3,
            cache_write_tokens: 2,
            requests: 1,
        };
        let sum = a + a;
        assert_eq!(sum.input_tokens, 20);
        assert_eq!(sum.requests, 2);
        assert_eq!(sum.total_tokens(), 40);
        let big = Usage {
            output_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!((big + a).output_tokens, u64::MAX);
        assert_eq!(sum.saturating_sub(a), a);
        assert_eq!(a.saturating_sub(sum), Usage::default());
    }
}

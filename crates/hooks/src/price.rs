//! Model prices and the cost of a task's usage.
//!
//! The built-in table is a pinned snapshot (`data/prices.json`) of the price
//! list that the `litellm` package ships, reduced to the chat models of the
//! providers deputy speaks to and to the four prices it bills; the file names
//! its source, date and license. Config adds or overrides models.

use std::collections::HashMap;
use std::sync::OnceLock;

use deputy_registry::{TaskLabels, Usage};
use serde::{Deserialize, Serialize};

/// The snapshot compiled into the crate.
const SNAPSHOT: &str = include_str!("../data/prices.json");

/// Providers that run on the user's own machine and bill nothing.
const LOCAL_PROVIDERS: [&str; 2] = ["scripted", "ollama"];

/// Prices of one model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Prompt tokens at the normal rate.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Prompt tokens read from the provider's cache; the input price when
    /// the table has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Prompt tokens written to the provider's cache; the input price when
    /// the table has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

impl ModelPrice {
    /// A price with no separate cache rates.
    pub fn new(input: f64, output: f64) -> Self {
        Self {
            input,
            output,
            cache_read: None,
            cache_write: None,
        }
    }

    /// The same price with cache read and write rates.
    pub fn with_cache(mut self, read: f64, write: f64) -> Self {
        self.cache_read = Some(read);
        self.cache_write = Some(write);
        self
    }

    /// What `usage` costs at this price, in US dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        // Token counts stay far below 2^53, so the conversion is exact.
        let tokens = |count: u64| count as f64;
        let per_million = tokens(usage.input_tokens) * self.input
            + tokens(usage.output_tokens) * self.output
            + tokens(usage.cache_read_tokens) * self.cache_read.unwrap_or(self.input)
            + tokens(usage.cache_write_tokens) * self.cache_write.unwrap_or(self.input);
        per_million / 1_000_000.0
    }

    /// Which field is negative or not finite, if any.
    pub(crate) fn invalid_field(&self) -> Option<(&'static str, f64)> {
        let fields = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ];
        fields.into_iter().find_map(|(name, value)| {
            value
                .filter(|value| !value.is_finite() || *value < 0.0)
                .map(|value| (name, value))
        })
    }
}

/// What a lookup found for a task's provider and model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriceLookup<'a> {
    /// A local provider (`scripted`, `ollama`): it costs nothing.
    Free,
    /// The model's price.
    Known(&'a ModelPrice),
    /// No price for this model; its cost is unknown, not zero.
    Unknown,
}

/// Prices by model name.
///
/// ```
/// use deputy_hooks::{ModelPrice, PriceTable};
/// use deputy_registry::{TaskLabels, Usage};
///
/// let prices = PriceTable::builtin().with_price("house-model", ModelPrice::new(1.0, 2.0));
/// let labels = TaskLabels {
///     provider: Some("openai".into()),
///     model: Some("house-model".into()),
///     ..TaskLabels::default()
/// };
/// let usage = Usage { input_tokens: 1_000_000, output_tokens: 500_000, ..Usage::default() };
/// assert_eq!(prices.cost(&labels, &usage), Some(2.0));
/// ```
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

/// The snapshot file's shape.
#[derive(Deserialize)]
struct Snapshot {
    models: HashMap<String, SnapshotPrice>,
}

/// A snapshot entry; `provider` says where the price came from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotPrice {
    #[expect(
        dead_code,
        reason = "kept in the file for readers, not used for lookup"
    )]
    provider: String,
    #[serde(flatten)]
    price: ModelPrice,
}

impl PriceTable {
    /// A table with no prices.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The built-in snapshot (see the module docs).
    pub fn builtin() -> Self {
        static BUILTIN: OnceLock<PriceTable> = OnceLock::new();
        BUILTIN
            .get_or_init(|| match serde_json::from_str::<Snapshot>(SNAPSHOT) {
                Ok(snapshot) => PriceTable {
                    models: snapshot
                        .models
                        .into_iter()
                        .map(|(model, entry)| (model, entry.price))
                        .collect(),
                },
                // A test checks the snapshot parses, so this never runs.
                Err(error) => {
                    tracing::error!(%error, "the built-in price snapshot does not parse");
                    PriceTable::empty()
                }
            })
            .clone()
    }

    /// The table with `model` priced at `price`, replacing any earlier price.
    pub fn with_price(mut self, model: impl Into<String>, price: ModelPrice) -> Self {
        self.insert(model, price);
        self
    }

    /// Sets `model`'s price, replacing any earlier price.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into(), price);
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The price of `model` on `provider`.
    ///
    /// Local providers are free. Otherwise the model name is looked up as
    /// given, then without a `provider/` prefix (`openai/gpt-4o`).
    pub fn lookup(&self, provider: Option<&str>, model: Option<&str>) -> PriceLookup<'_> {
        if provider.is_some_and(is_local) {
            return PriceLookup::Free;
        }
        self.lookup_model(model)
    }

    /// The price of `model` as given, then without a `provider/` prefix,
    /// whoever serves it.
    fn lookup_model(&self, model: Option<&str>) -> PriceLookup<'_> {
        let Some(model) = model else {
            return PriceLookup::Unknown;
        };
        let unprefixed = model.split_once('/').map(|(_, rest)| rest);
        [Some(model), unprefixed]
            .into_iter()
            .flatten()
            .find_map(|name| self.models.get(name))
            .map_or(PriceLookup::Unknown, PriceLookup::Known)
    }

    /// The price for a task with these labels: free when its provider's
    /// kind (or, without a kind, its name) is a local one, else the model's
    /// price.
    pub fn lookup_labels(&self, labels: &TaskLabels) -> PriceLookup<'_> {
        match labels.provider_kind.as_deref() {
            // A name is only a label: a hosted backend called `ollama` bills.
            Some(kind) if is_local(kind) => PriceLookup::Free,
            Some(_) => self.lookup_model(labels.model.as_deref()),
            None => self.lookup(labels.provider.as_deref(), labels.model.as_deref()),
        }
    }

    /// What `usage` costs for a task with these labels, in US dollars;
    /// `None` when the model has no price.
    pub fn cost(&self, labels: &TaskLabels, usage: &Usage) -> Option<f64> {
        match self.lookup_labels(labels) {
            PriceLookup::Free => Some(0.0),
            PriceLookup::Known(price) => Some(price.cost(usage)),
            PriceLookup::Unknown => None,
        }
    }
}

/// Whether a provider kind (or name) runs locally and bills nothing.
fn is_local(provider: &str) -> bool {
    LOCAL_PROVIDERS.contains(&provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(provider: &str, model: &str) -> TaskLabels {
        TaskLabels {
            provider: Some(provider.into()),
            model: Some(model.into()),
            ..TaskLabels::default()
        }
    }

    #[test]
    fn a_local_kind_is_free_whatever_the_provider_is_called() {
        let labels = TaskLabels {
            provider: Some("offline".into()),
            provider_kind: Some("scripted".into()),
            model: Some("scripted".into()),
        };
        let table = PriceTable::builtin();
        assert_eq!(table.lookup_labels(&labels), PriceLookup::Free);
        assert_eq!(table.cost(&labels, &Usage::default()), Some(0.0));
        let hosted = TaskLabels {
            provider_kind: Some("openai".into()),
            ..labels
        };
        assert_eq!(table.lookup_labels(&hosted), PriceLookup::Unknown);
    }

    #[test]
    fn a_hosted_kind_bills_even_when_named_like_a_local_provider() {
        let table = PriceTable::empty().with_price("gpt-x", ModelPrice::new(1.0, 2.0));
        let named_ollama = |model: &str| TaskLabels {
            provider: Some("ollama".into()),
            provider_kind: Some("openai".into()),
            model: Some(model.into()),
        };
        assert_eq!(
            table.lookup_labels(&named_ollama("mystery")),
            PriceLookup::Unknown
        );
        assert_eq!(
            table.cost(&named_ollama("mystery"), &Usage::default()),
            None
        );
        let usage = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(table.cost(&named_ollama("gpt-x"), &usage), Some(1.0));
        // Without a kind the name is all there is to go on.
        assert_eq!(
            table.lookup_labels(&labels("ollama", "mystery")),
            PriceLookup::Free
        );
    }

    #[test]
    fn the_snapshot_parses_and_holds_the_main_models() {
        let parsed: Snapshot = serde_json::from_str(SNAPSHOT).unwrap();
        assert!(parsed.models.len() > 100, "{} models", parsed.models.len());
        let table = PriceTable::builtin();
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "claude-sonnet-4-5",
            "gemini-2.5-pro",
        ] {
            assert!(
                matches!(table.lookup(None, Some(model)), PriceLookup::Known(_)),
                "{model} has no price"
            );
        }
        for (model, price) in &table.models {
            assert_eq!(price.invalid_field(), None, "{model}");
        }
    }

    #[test]
    fn cost_bills_every_token_kind_at_its_rate() {
        // claude-sonnet-4-5 in the snapshot: $3 in, $15 out, $0.30 cache
        // read, $3.75 cache write per million tokens.
        let table = PriceTable::builtin();
        let usage = Usage {
            input_tokens: 200_000,
            output_tokens: 10_000,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 100_000,
            requests: 3,
        };
        let cost = table
            .cost(&labels("anthropic", "claude-sonnet-4-5"), &usage)
            .unwrap();
        let expected = 0.6 + 0.15 + 0.3 + 0.375;
        assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");
    }

    #[test]
    fn missing_cache_rates_fall_back_to_the_input_rate() {
        let price = ModelPrice::new(2.0, 8.0);
        let usage = Usage {
            cache_read_tokens: 500_000,
            cache_write_tokens: 500_000,
            ..Usage::default()
        };
        assert!((price.cost(&usage) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn lookups_strip_a_provider_prefix_and_know_local_providers() {
        let table = PriceTable::empty().with_price("gpt-x", ModelPrice::new(1.0, 1.0));
        assert!(matches!(
            table.lookup(Some("openai"), Some("openai/gpt-x")),
            PriceLookup::Known(_)
        ));
        assert_eq!(
            table.lookup(Some("scripted"), Some("anything")),
            PriceLookup::Free
        );
        assert_eq!(
            table.lookup(Some("ollama"), Some("llama3.2")),
            PriceLookup::Free
        );
        assert_eq!(
            table.lookup(Some("openai"), Some("mystery")),
            PriceLookup::Unknown
        );
        assert_eq!(table.lookup(Some("openai"), None), PriceLookup::Unknown);
        assert_eq!(
            table.cost(&labels("openai", "mystery"), &Usage::default()),
            None
        );
    }

    #[test]
    fn overrides_replace_snapshot_prices() {
        let table = PriceTable::builtin().with_price("gpt-4o", ModelPrice::new(1.0, 1.0));
        let usage = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        assert_eq!(table.cost(&labels("openai", "gpt-4o"), &usage), Some(1.0));
    }
}

//! The `[agent.subagents]` settings: a raw serde form and the validated type.
//!
//! Settings arrive as [`RawSubagentSettings`] (every key optional, unknown
//! keys rejected) and become [`SubagentSettings`] only through validation,
//! which names the field, the bad value and the rule for every problem it
//! finds. The registry only ever sees validated settings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the selector ranks agents when a task does not name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Fewest running tasks first.
    LeastLoaded,
    /// Each eligible agent in turn, by name.
    RoundRobin,
    /// Power of two choices: two random candidates, the one with the lower
    /// expected wait (in-flight count times latency EWMA) wins.
    P2c,
    /// Capability match and priority minus penalties for in-flight work,
    /// recent selections and recent failures.
    Adaptive,
}

impl Strategy {
    /// Every strategy, for messages and docs.
    pub const ALL: [Strategy; 4] = [
        Self::LeastLoaded,
        Self::RoundRobin,
        Self::P2c,
        Self::Adaptive,
    ];

    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastLoaded => "least_loaded",
            Self::RoundRobin => "round_robin",
            Self::P2c => "p2c",
            Self::Adaptive => "adaptive",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = SettingError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == input)
            .ok_or_else(|| SettingError {
                field: "strategy",
                message: format!(
                    "strategy must be one of least_loaded, round_robin, p2c, adaptive, got {input:?}"
                ),
            })
    }
}

/// Defaults for every key, in one place.
pub mod defaults {
    /// `enabled`
    pub const ENABLED: bool = true;
    /// `max_concurrent`
    pub const MAX_CONCURRENT: usize = 10;
    /// `queue_wait_ms`
    pub const QUEUE_WAIT_MS: u64 = 30_000;
    /// `queue_poll_ms`
    pub const QUEUE_POLL_MS: u64 = 200;
    /// `max_queue`
    pub const MAX_QUEUE: usize = 256;
    /// `strategy`
    pub const STRATEGY: super::Strategy = super::Strategy::Adaptive;
    /// `load_window_secs`
    pub const LOAD_WINDOW_SECS: u64 = 180;
    /// `inflight_penalty`
    pub const INFLIGHT_PENALTY: u32 = 10;
    /// `recent_selection_penalty`
    pub const RECENT_SELECTION_PENALTY: u32 = 3;
    /// `recent_failure_penalty`
    pub const RECENT_FAILURE_PENALTY: u32 = 16;
    /// `result_ttl_secs`
    pub const RESULT_TTL_SECS: u64 = 3_600;
    /// `max_finished`
    pub const MAX_FINISHED: usize = 1_024;
}

/// Upper bounds that keep values meaningful (and arithmetic far from overflow).
mod limits {
    pub(super) const MAX_CONCURRENT: i64 = 1_000_000;
    pub(super) const QUEUE_WAIT_MS: i64 = 86_400_000;
    pub(super) const QUEUE_POLL_MS: i64 = 60_000;
    pub(super) const MAX_QUEUE: i64 = 10_000_000;
    pub(super) const LOAD_WINDOW_SECS: i64 = 86_400;
    pub(super) const PENALTY: i64 = 1_000_000;
    pub(super) const RESULT_TTL_SECS: i64 = 30 * 86_400;
    pub(super) const MAX_FINISHED: i64 = 10_000_000;
}

/// `[agent.subagents]` as written: every key optional, unknown keys rejected.
///
/// Numbers are read as signed integers so that a negative value gets the same
/// clear range message as any other out-of-range value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubagentSettings {
    /// Whether new sub-agents may start at all.
    pub enabled: Option<bool>,
    /// How many sub-agents may hold a slot at once.
    pub max_concurrent: Option<i64>,
    /// How long a spawn may wait for a slot; 0 refuses at once when full.
    pub queue_wait_ms: Option<i64>,
    /// Period of the registry's re-check of queued work (see [`SubagentSettings::queue_poll`]).
    pub queue_poll_ms: Option<i64>,
    /// How many spawns may wait at once.
    pub max_queue: Option<i64>,
    /// The selector's strategy name.
    pub strategy: Option<String>,
    /// How far back recent selections and failures count.
    pub load_window_secs: Option<i64>,
    /// Adaptive: points subtracted per running task.
    pub inflight_penalty: Option<i64>,
    /// Adaptive: points subtracted per recent selection.
    pub recent_selection_penalty: Option<i64>,
    /// Adaptive: points subtracted per recent failure.
    pub recent_failure_penalty: Option<i64>,
    /// How long a delivered result is kept.
    pub result_ttl_secs: Option<i64>,
    /// How many finished tasks are kept at most.
    pub max_finished: Option<i64>,
}

/// The selector's tuning, part of the live settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SelectorTuning {
    /// Ranking strategy.
    pub strategy: Strategy,
    /// Window for recent selections and failures.
    pub load_window: Duration,
    /// Adaptive: points per running task.
    pub inflight_penalty: u32,
    /// Adaptive: points per selection within the window.
    pub recent_selection_penalty: u32,
    /// Adaptive: points per failure within the window.
    pub recent_failure_penalty: u32,
}

/// Validated `[agent.subagents]` settings.
///
/// Built only through [`SubagentSettings::from_raw`] (or `TryFrom`, or serde),
/// so every value the registry reads has passed its rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSubagentSettings", into = "RawSubagentSettings")]
pub struct SubagentSettings {
    enabled: bool,
    max_concurrent: usize,
    queue_wait: Duration,
    queue_poll: Duration,
    max_queue: usize,
    selector: SelectorTuning,
    result_ttl: Duration,
    max_finished: usize,
}

impl Default for SubagentSettings {
    fn default() -> Self {
        Self {
            enabled: defaults::ENABLED,
            max_concurrent: defaults::MAX_CONCURRENT,
            queue_wait: Duration::from_millis(defaults::QUEUE_WAIT_MS),
            queue_poll: Duration::from_millis(defaults::QUEUE_POLL_MS),
            max_queue: defaults::MAX_QUEUE,
            selector: SelectorTuning {
                strategy: defaults::STRATEGY,
                load_window: Duration::from_secs(defaults::LOAD_WINDOW_SECS),
                inflight_penalty: defaults::INFLIGHT_PENALTY,
                recent_selection_penalty: defaults::RECENT_SELECTION_PENALTY,
                recent_failure_penalty: defaults::RECENT_FAILURE_PENALTY,
            },
            result_ttl: Duration::from_secs(defaults::RESULT_TTL_SECS),
            max_finished: defaults::MAX_FINISHED,
        }
    }
}

impl SubagentSettings {
    /// Validates raw settings; keys left out take their defaults.
    ///
    /// # Errors
    /// Every rule that a value breaks, each naming the field, the value and
    /// the rule.
    pub fn from_raw(raw: RawSubagentSettings) -> Result<Self, SettingsError> {
        let mut errors = Vec::new();
        let mut check =
            |field: &'static str, value: Option<i64>, min: i64, max: i64, default: i64| {
                let Some(value) = value else {
                    return default;
                };
                if value < min {
                    errors.push(SettingError {
                        field,
                        message: format!("{field} must be at least {min}, got {value}"),
                    });
                    default
                } else if value > max {
                    errors.push(SettingError {
                        field,
                        message: format!("{field} must be at most {max}, got {value}"),
                    });
                    default
                } else {
                    value
                }
            };
        // Each bound above fits the target type, so the casts below are exact.
        let max_concurrent = check(
            "max_concurrent",
            raw.max_concurrent,
            1,
            limits::MAX_CONCURRENT,
            defaults::MAX_CONCURRENT as i64,
        );
        let queue_wait_ms = check(
            "queue_wait_ms",
            raw.queue_wait_ms,
            0,
            limits::QUEUE_WAIT_MS,
            defaults::QUEUE_WAIT_MS as i64,
        );
        let queue_poll_ms = check(
            "queue_poll_ms",
            raw.queue_poll_ms,
            1,
            limits::QUEUE_POLL_MS,
            defaults::QUEUE_POLL_MS as i64,
        );
        let max_queue = check(
            "max_queue",
            raw.max_queue,
            1,
            limits::MAX_QUEUE,
            defaults::MAX_QUEUE as i64,
        );
        let load_window_secs = check(
            "load_window_secs",
            raw.load_window_secs,
            1,
            limits::LOAD_WINDOW_SECS,
            defaults::LOAD_WINDOW_SECS as i64,
        );
        let inflight_penalty = check(
            "inflight_penalty",
            raw.inflight_penalty,
            0,
            limits::PENALTY,
            i64::from(defaults::INFLIGHT_PENALTY),
        );
        let recent_selection_penalty = check(
            "recent_selection_penalty",
            raw.recent_selection_penalty,
            0,
            limits::PENALTY,
            i64::from(defaults::RECENT_SELECTION_PENALTY),
        );
        let recent_failure_penalty = check(
            "recent_failure_penalty",
            raw.recent_failure_penalty,
            0,
            limits::PENALTY,
            i64::from(defaults::RECENT_FAILURE_PENALTY),
        );
        let result_ttl_secs = check(
            "result_ttl_secs",
            raw.result_ttl_secs,
            0,
            limits::RESULT_TTL_SECS,
            defaults::RESULT_TTL_SECS as i64,
        );
        let max_finished = check(
            "max_finished",
            raw.max_finished,
            1,
            limits::MAX_FINISHED,
            defaults::MAX_FINISHED as i64,
        );
        let strategy = match raw.strategy.as_deref().map(str::parse::<Strategy>) {
            None => defaults::STRATEGY,
            Some(Ok(strategy)) => strategy,
            Some(Err(error)) => {
                errors.push(error);
                defaults::STRATEGY
            }
        };
        if !errors.is_empty() {
            return Err(SettingsError { errors });
        }
        let to_u64 = |value: i64| u64::try_from(value).unwrap_or_default();
        let to_usize = |value: i64| usize::try_from(value).unwrap_or_default();
        let to_u32 = |value: i64| u32::try_from(value).unwrap_or_default();
        Ok(Self {
            enabled: raw.enabled.unwrap_or(defaults::ENABLED),
            max_concurrent: to_usize(max_concurrent),
            queue_wait: Duration::from_millis(to_u64(queue_wait_ms)),
            queue_poll: Duration::from_millis(to_u64(queue_poll_ms)),
            max_queue: to_usize(max_queue),
            selector: SelectorTuning {
                strategy,
                load_window: Duration::from_secs(to_u64(load_window_secs)),
                inflight_penalty: to_u32(inflight_penalty),
                recent_selection_penalty: to_u32(recent_selection_penalty),
                recent_failure_penalty: to_u32(recent_failure_penalty),
            },
            result_ttl: Duration::from_secs(to_u64(result_ttl_secs)),
            max_finished: to_usize(max_finished),
        })
    }

    /// Whether new sub-agents may start.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How many sub-agents may hold a slot at once.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// How long a spawn waits for a slot; zero means refuse at once when full.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// The period of the registry's housekeeping sweep while tasks are queued.
    ///
    /// A freed slot is handed to the next waiter by the release itself, so
    /// this interval never adds latency to an in-process hand-off. The sweep
    /// re-runs admission for capacity that can change without a push (a
    /// future shared backend, a clock-driven limit) and expires delivered
    /// results; it is a safety net, not the mechanism.
    pub fn queue_poll(&self) -> Duration {
        self.queue_poll
    }

    /// How many spawns may wait for a slot at once.
    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// The selector's strategy and tuning.
    pub fn selector(&self) -> &SelectorTuning {
        &self.selector
    }

    /// How long a delivered result is kept before it is evicted.
    pub fn result_ttl(&self) -> Duration {
        self.result_ttl
    }

    /// How many finished tasks are kept at most.
    pub fn max_finished(&self) -> usize {
        self.max_finished
    }

    /// A copy with `max_concurrent` replaced, validated like any other value.
    ///
    /// # Errors
    /// When `max_concurrent` is outside `1..=1000000`.
    pub fn with_max_concurrent(&self, max_concurrent: usize) -> Result<Self, SettingsError> {
        let mut raw = RawSubagentSettings::from(self.clone());
        raw.max_concurrent = Some(i64::try_from(max_concurrent).unwrap_or(i64::MAX));
        Self::from_raw(raw)
    }
}

impl TryFrom<RawSubagentSettings> for SubagentSettings {
    type Error = SettingsError;

    fn try_from(raw: RawSubagentSettings) -> Result<Self, Self::Error> {
        Self::from_raw(raw)
    }
}

impl From<SubagentSettings> for RawSubagentSettings {
    fn from(settings: SubagentSettings) -> Self {
        let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let secs = |duration: Duration| i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        let count = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        Self {
            enabled: Some(settings.enabled),
            max_concurrent: Some(count(settings.max_concurrent)),
            queue_wait_ms: Some(millis(settings.queue_wait)),
            queue_poll_ms: Some(millis(settings.queue_poll)),
            max_queue: Some(count(settings.max_queue)),
            strategy: Some(settings.selector.strategy.as_str().to_owned()),
            load_window_secs: Some(secs(settings.selector.load_window)),
            inflight_penalty: Some(i64::from(settings.selector.inflight_penalty)),
            recent_selection_penalty: Some(i64::from(settings.selector.recent_selection_penalty)),
            recent_failure_penalty: Some(i64::from(settings.selector.recent_failure_penalty)),
            result_ttl_secs: Some(secs(settings.result_ttl)),
            max_finished: Some(count(settings.max_finished)),
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SettingError {
    field: &'static str,
    message: String,
}

impl SettingError {
    /// The key that holds the bad value.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

/// Everything wrong with a set of `[agent.subagents]` settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [agent.subagents] settings: {}", join(.errors))]
pub struct SettingsError {
    errors: Vec<SettingError>,
}

impl SettingsError {
    /// Each broken rule, in key order.
    pub fn errors(&self) -> &[SettingError] {
        &self.errors
    }
}

fn join(errors: &[SettingError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SubagentSettings, String> {
        let raw: RawSubagentSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        SubagentSettings::from_raw(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_section_gives_the_documented_defaults() {
        let settings = parse("").unwrap();
        assert_eq!(settings, SubagentSettings::default());
        assert!(settings.enabled());
        assert_eq!(settings.max_concurrent(), 10);
        assert_eq!(settings.queue_wait(), Duration::from_millis(30_000));
        assert_eq!(settings.queue_poll(), Duration::from_millis(200));
        assert_eq!(settings.max_queue(), 256);
        assert_eq!(settings.selector().strategy, Strategy::Adaptive);
    }

    #[test]
    fn every_key_is_read() {
        let settings = parse(
            r#"
            enabled = false
            max_concurrent = 3
            queue_wait_ms = 0
            queue_poll_ms = 50
            max_queue = 7
            strategy = "p2c"
            load_window_secs = 60
            inflight_penalty = 1
            recent_selection_penalty = 2
            recent_failure_penalty = 4
            result_ttl_secs = 5
            max_finished = 9
            "#,
        )
        .unwrap();
        assert!(!settings.enabled());
        assert_eq!(settings.max_concurrent(), 3);
        assert_eq!(settings.queue_wait(), Duration::ZERO);
        assert_eq!(settings.queue_poll(), Duration::from_millis(50));
        assert_eq!(settings.max_queue(), 7);
        assert_eq!(
            *settings.selector(),
            SelectorTuning {
                strategy: Strategy::P2c,
                load_window: Duration::from_secs(60),
                inflight_penalty: 1,
                recent_selection_penalty: 2,
                recent_failure_penalty: 4,
            }
        );
        assert_eq!(settings.result_ttl(), Duration::from_secs(5));
        assert_eq!(settings.max_finished(), 9);
    }

    #[test]
    fn errors_name_the_field_the_value_and_the_rule() {
        let message = parse("max_concurrent = 0").unwrap_err();
        assert_eq!(
            message,
            "invalid [agent.subagents] settings: max_concurrent must be at least 1, got 0"
        );
        let message = parse("queue_poll_ms = -5\nmax_queue = 99999999999").unwrap_err();
        assert!(
            message.contains("queue_poll_ms must be at least 1, got -5"),
            "{message}"
        );
        assert!(
            message.contains("max_queue must be at most 10000000, got 99999999999"),
            "{message}"
        );
        let message = parse(r#"strategy = "fastest""#).unwrap_err();
        assert!(
            message.contains(
                r#"strategy must be one of least_loaded, round_robin, p2c, adaptive, got "fastest""#
            ),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let message = parse("max_concurent = 4").unwrap_err();
        assert!(
            message.contains("unknown field `max_concurent`"),
            "{message}"
        );
    }

    #[test]
    fn validated_settings_round_trip_through_serde() {
        let settings = parse("max_concurrent = 4\nstrategy = \"round_robin\"").unwrap();
        let text = toml::to_string(&settings).unwrap();
        let back: SubagentSettings = toml::from_str(&text).unwrap();
        assert_eq!(back, settings);
    }

    #[test]
    fn with_max_concurrent_validates() {
        let settings = SubagentSettings::default();
        assert_eq!(settings.with_max_concurrent(2).unwrap().max_concurrent(), 2);
        assert!(settings.with_max_concurrent(0).is_err());
    }
}

//! Provider settings from config, checked, and the factory that turns them
//! into an `Arc<dyn Provider>`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::anthropic::{self, AnthropicWire};
use crate::gemini::{self, GeminiWire};
use crate::http::{HttpProvider, Timeouts, Transport, TransportSettings, parse_header};
use crate::ollama::{self, OllamaWire};
use crate::openai::{self, MaxTokensField, OpenAiWire};
use crate::provider::{Provider, ProviderKind};
use crate::retry::RetryPolicy;
use crate::scripted::{Script, ScriptTurn, ScriptedProvider};
use crate::secret::ApiKey;

/// `[providers.<name>]` as written. Every key is optional except `kind`;
/// unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProviderConfig {
    /// `openai`, `anthropic`, `gemini`, `ollama` or `scripted`.
    pub kind: Option<String>,
    /// The API root, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// The environment variable that holds the key.
    pub api_key_env: Option<String>,
    /// The key itself (discouraged: config files get shared).
    pub api_key: Option<String>,
    /// The model used when the agent names none.
    pub model: Option<String>,
    /// Extra request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Connect timeout.
    pub connect_timeout_ms: Option<i64>,
    /// Longest silence between stream chunks.
    pub idle_timeout_ms: Option<i64>,
    /// Longest time for one whole request.
    pub request_timeout_ms: Option<i64>,
    /// Retries after the first attempt.
    pub max_retries: Option<i64>,
    /// First backoff.
    pub initial_backoff_ms: Option<i64>,
    /// Longest backoff.
    pub max_backoff_ms: Option<i64>,
    /// Longest server-requested wait to honour.
    pub max_retry_wait_ms: Option<i64>,
    /// Requests in flight at once to this provider.
    pub max_concurrent_requests: Option<i64>,
    /// `openai` only: `max_tokens` or `max_completion_tokens`.
    pub max_tokens_field: Option<MaxTokensField>,
    /// `anthropic` only: the `anthropic-version` header.
    pub anthropic_version: Option<String>,
    /// `anthropic` only: `max_tokens` when the request sets none.
    pub max_output_tokens: Option<i64>,
    /// `scripted` only: a JSON or TOML script file.
    pub script_file: Option<PathBuf>,
    /// `scripted` only: the script, inline.
    pub turns: Option<Vec<ScriptTurn>>,
    /// `scripted` only: the wait before each reply.
    pub latency_ms: Option<i64>,
}

/// Where the key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// No key is sent.
    None,
    /// Read from this environment variable when the provider is built.
    Env(String),
    /// Given inline.
    Inline(ApiKey),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::Inline(_) => f.write_str("Inline([redacted])"),
        }
    }
}

/// A checked `[providers.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    name: String,
    kind: ProviderKind,
    base_url: String,
    key: KeySource,
    model: String,
    headers: ExtraHeaders,
    timeouts: Timeouts,
    retry: RetryPolicy,
    max_concurrent_requests: Option<usize>,
    max_tokens_field: MaxTokensField,
    anthropic_version: String,
    max_output_tokens: u32,
    script_file: Option<PathBuf>,
    turns: Option<Vec<ScriptTurn>>,
    latency: Duration,
}

/// Extra request headers. They often carry credentials (a gateway key, an
/// organization token), so `Debug` shows their names only.
#[derive(Clone, Default, PartialEq, Eq)]
struct ExtraHeaders(Vec<(String, String)>);

impl fmt::Debug for ExtraHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| format!("{name}: [redacted]")))
            .finish()
    }
}

/// What is wrong with a provider's config: every problem, each naming the
/// key, the value and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [providers.{provider}]: {}", problems.join("; "))]
pub struct ProviderConfigError {
    /// The provider's name.
    pub provider: String,
    /// One sentence per problem.
    pub problems: Vec<String>,
}

impl ProviderConfig {
    /// Checks `raw` for the provider called `name`.
    ///
    /// # Errors
    /// Every problem found, not just the first.
    pub fn from_raw(name: &str, raw: RawProviderConfig) -> Result<Self, ProviderConfigError> {
        let mut problems = Vec::new();
        let kind = match raw.kind.as_deref() {
            None => {
                problems.push(
                    "kind is missing; set it to one of openai, anthropic, gemini, ollama, scripted"
                        .to_owned(),
                );
                ProviderKind::Scripted
            }
            Some(kind) => kind.parse().unwrap_or_else(|error| {
                problems.push(format!("kind: {error}"));
                ProviderKind::Scripted
            }),
        };
        let http = kind != ProviderKind::Scripted;

        let mut only_for = |present: bool, key: &str, kinds: &str| {
            if present {
                problems.push(format!(
                    "{key} applies only to kind = {kinds}, not to kind = \"{kind}\"; remove it"
                ));
            }
        };
        only_for(
            raw.max_tokens_field.is_some() && kind != ProviderKind::Openai,
            "max_tokens_field",
            "\"openai\"",
        );
        only_for(
            raw.anthropic_version.is_some() && kind != ProviderKind::Anthropic,
            "anthropic_version",
            "\"anthropic\"",
        );
        only_for(
            raw.max_output_tokens.is_some() && kind != ProviderKind::Anthropic,
            "max_output_tokens",
            "\"anthropic\"",
        );
        for (present, key) in [
            (raw.script_file.is_some(), "script_file"),
            (raw.turns.is_some(), "turns"),
            (raw.latency_ms.is_some(), "latency_ms"),
        ] {
            only_for(present && http, key, "\"scripted\"");
        }
        for (present, key) in [
            (raw.base_url.is_some(), "base_url"),
            (raw.api_key_env.is_some(), "api_key_env"),
            (raw.api_key.is_some(), "api_key"),
            (raw.headers.is_some(), "headers"),
            (raw.connect_timeout_ms.is_some(), "connect_timeout_ms"),
            (raw.idle_timeout_ms.is_some(), "idle_timeout_ms"),
            (raw.request_timeout_ms.is_some(), "request_timeout_ms"),
            (raw.max_retries.is_some(), "max_retries"),
            (raw.initial_backoff_ms.is_some(), "initial_backoff_ms"),
            (raw.max_backoff_ms.is_some(), "max_backoff_ms"),
            (raw.max_retry_wait_ms.is_some(), "max_retry_wait_ms"),
            (
                raw.max_concurrent_requests.is_some(),
                "max_concurrent_requests",
            ),
        ] {
            only_for(
                present && !http,
                key,
                "\"openai\", \"anthropic\", \"gemini\" or \"ollama\"",
            );
        }
        if raw.script_file.is_some() && raw.turns.is_some() {
            problems.push("set one of script_file or turns, not both".to_owned());
        }

        let default_base = match kind {
            ProviderKind::Openai => openai::DEFAULT_BASE_URL,
            ProviderKind::Anthropic => anthropic::DEFAULT_BASE_URL,
            ProviderKind::Gemini => gemini::DEFAULT_BASE_URL,
            ProviderKind::Ollama => ollama::DEFAULT_BASE_URL,
            ProviderKind::Scripted => "",
        };
        let base_url = raw
            .base_url
            .clone()
            .unwrap_or_else(|| default_base.to_owned());
        if http {
            match reqwest::Url::parse(&base_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => problems.push(format!(
                    "base_url `{base_url}` uses scheme `{}`; use http or https",
                    url.scheme()
                )),
                Err(error) => problems.push(format!(
                    "base_url `{base_url}` is not a URL ({error}); write it like https://api.example.com/v1"
                )),
            }
        }

        let key = match (raw.api_key_env, raw.api_key) {
            (Some(_), Some(_)) => {
                problems.push("set one of api_key_env or api_key, not both".to_owned());
                KeySource::None
            }
            (Some(variable), None) if variable.trim().is_empty() => {
                problems.push(
                    "api_key_env is empty; name the environment variable that holds the key"
                        .to_owned(),
                );
                KeySource::None
            }
            (Some(variable), None) => KeySource::Env(variable),
            (None, Some(key)) if key.is_empty() => {
                problems.push("api_key is empty; remove it or set api_key_env instead".to_owned());
                KeySource::None
            }
            (None, Some(key)) => KeySource::Inline(ApiKey::new(key)),
            // The vendors' own endpoints need a key, from the variable their
            // SDKs read; other servers (vLLM, llama.cpp, a local Ollama) get
            // none unless asked.
            (None, None) if raw.base_url.is_none() => match kind {
                ProviderKind::Openai => KeySource::Env("OPENAI_API_KEY".to_owned()),
                ProviderKind::Anthropic => KeySource::Env("ANTHROPIC_API_KEY".to_owned()),
                ProviderKind::Gemini => KeySource::Env("GEMINI_API_KEY".to_owned()),
                ProviderKind::Ollama | ProviderKind::Scripted => KeySource::None,
            },
            (None, None) => KeySource::None,
        };

        let mut millis = |key: &str, value: Option<i64>, default: Duration, min: u64| {
            let Some(value) = value else {
                return default;
            };
            const DAY_MS: i64 = 86_400_000;
            match u64::try_from(value) {
                Ok(ms) if ms >= min && value <= DAY_MS => Duration::from_millis(ms),
                _ => {
                    problems.push(format!(
                        "{key} must be between {min} and {DAY_MS} (one day), got {value}"
                    ));
                    default
                }
            }
        };
        let timeouts = Timeouts {
            connect: millis(
                "connect_timeout_ms",
                raw.connect_timeout_ms,
                Timeouts::default().connect,
                1,
            ),
            idle: millis(
                "idle_timeout_ms",
                raw.idle_timeout_ms,
                Timeouts::default().idle,
                1,
            ),
            request: millis(
                "request_timeout_ms",
                raw.request_timeout_ms,
                Timeouts::default().request,
                1,
            ),
        };
        let defaults = RetryPolicy::default();
        let initial_backoff = millis(
            "initial_backoff_ms",
            raw.initial_backoff_ms,
            defaults.initial_backoff,
            0,
        );
        let max_backoff = millis(
            "max_backoff_ms",
            raw.max_backoff_ms,
            defaults.max_backoff,
            0,
        );
        let max_retry_wait = millis(
            "max_retry_wait_ms",
            raw.max_retry_wait_ms,
            defaults.max_retry_wait,
            0,
        );
        let latency = millis("latency_ms", raw.latency_ms, Duration::ZERO, 0);
        if initial_backoff > max_backoff {
            problems.push(format!(
                "initial_backoff_ms ({}) is larger than max_backoff_ms ({}); lower it or raise max_backoff_ms",
                initial_backoff.as_millis(),
                max_backoff.as_millis()
            ));
        }
        let max_retries = match raw.max_retries {
            None => defaults.max_retries,
            Some(value) => match u32::try_from(value) {
                Ok(retries) if retries <= 10 => retries,
                _ => {
                    problems.push(format!("max_retries must be between 0 and 10, got {value}"));
                    defaults.max_retries
                }
            },
        };
        let max_concurrent_requests = match raw.max_concurrent_requests {
            None => None,
            Some(value) => match usize::try_from(value) {
                Ok(max) if max >= 1 => Some(max),
                _ => {
                    problems.push(format!(
                        "max_concurrent_requests must be at least 1, got {value}; leave it out for no cap"
                    ));
                    None
                }
            },
        };
        let max_output_tokens = match raw.max_output_tokens {
            None => anthropic::DEFAULT_MAX_TOKENS,
            Some(value) => u32::try_from(value)
                .ok()
                .filter(|max| *max >= 1)
                .unwrap_or_else(|| {
                    problems.push(format!("max_output_tokens must be at least 1, got {value}"));
                    anthropic::DEFAULT_MAX_TOKENS
                }),
        };
        let anthropic_version = raw
            .anthropic_version
            .unwrap_or_else(|| anthropic::DEFAULT_VERSION.to_owned());
        if !is_date(&anthropic_version) {
            problems.push(format!(
                "anthropic_version `{anthropic_version}` is not a date like 2023-06-01"
            ));
        }
        if let Some(turns) = &raw.turns
            && let Err(problem) = Script::new(turns.clone())
        {
            problems.push(problem);
        }
        if let Some(model) = &raw.model
            && model.trim().is_empty()
        {
            problems.push("model is empty; name a model or leave the key out".to_owned());
        }
        let headers: Vec<(String, String)> = raw.headers.unwrap_or_default().into_iter().collect();
        for (header, value) in &headers {
            if let Err(problem) = parse_header(header, value) {
                problems.push(problem);
            }
        }

        if !problems.is_empty() {
            return Err(ProviderConfigError {
                provider: name.to_owned(),
                problems,
            });
        }
        let model = raw.model.unwrap_or_else(|| {
            if kind == ProviderKind::Scripted {
                ScriptedProvider::DEFAULT_MODEL.to_owned()
            } else {
                String::new()
            }
        });
        Ok(Self {
            name: name.to_owned(),
            kind,
            base_url,
            key,
            model,
            headers: ExtraHeaders(headers),
            timeouts,
            retry: RetryPolicy {
                max_retries,
                initial_backoff,
                max_backoff,
                max_retry_wait,
            },
            max_concurrent_requests,
            max_tokens_field: raw.max_tokens_field.unwrap_or_default(),
            anthropic_version,
            max_output_tokens,
            script_file: raw.script_file,
            turns: raw.turns,
            latency,
        })
    }

    /// A scripted provider with the demo behaviour: what deputy runs when
    /// no provider is configured.
    pub fn scripted(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ProviderKind::Scripted,
            base_url: String::new(),
            key: KeySource::None,
            model: ScriptedProvider::DEFAULT_MODEL.to_owned(),
            headers: ExtraHeaders::default(),
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            max_concurrent_requests: None,
            max_tokens_field: MaxTokensField::default(),
            anthropic_version: anthropic::DEFAULT_VERSION.to_owned(),
            max_output_tokens: anthropic::DEFAULT_MAX_TOKENS,
            script_file: None,
            turns: None,
            latency: Duration::ZERO,
        }
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// Its base URL (empty for `scripted`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where its key comes from.
    pub fn key_source(&self) -> &KeySource {
        &self.key
    }

    /// Its default model (may be empty: then agents must name one).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Its retry policy.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }

    /// Its timeouts.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Its cap on requests in flight.
    pub fn max_concurrent_requests(&self) -> Option<usize> {
        self.max_concurrent_requests
    }

    /// The same config with `script_file` resolved against `dir` when it is
    /// relative (the CLI passes the config file's directory).
    #[must_use]
    pub fn resolve_paths(mut self, dir: &std::path::Path) -> Self {
        if let Some(path) = &self.script_file
            && path.is_relative()
        {
            self.script_file = Some(dir.join(path));
        }
        self
    }

    /// Builds the provider, reading its key from the environment through
    /// `env` (pass `|name| std::env::var(name).ok()`).
    ///
    /// # Errors
    /// When the key's variable is unset or empty (naming the variable), the
    /// key cannot be sent in a header (naming the setting it came from), or
    /// the script file cannot be used.
    pub fn build(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Arc<dyn Provider>, ProviderConfigError> {
        let fail = |problem: String| ProviderConfigError {
            provider: self.name.clone(),
            problems: vec![problem],
        };
        let key = match &self.key {
            KeySource::None => None,
            KeySource::Inline(key) => {
                tracing::warn!(
                    provider = %self.name,
                    "the API key is written in the config file; prefer api_key_env"
                );
                Some(key.clone())
            }
            KeySource::Env(variable) => match env(variable) {
                Some(value) if !value.trim().is_empty() => Some(ApiKey::new(value.trim())),
                Some(_) => {
                    return Err(fail(format!(
                        "environment variable {variable} is empty; put the {} API key in it",
                        self.kind
                    )));
                }
                None => {
                    return Err(fail(format!(
                        "environment variable {variable} is not set; export it with the {} API key, or set api_key_env to the variable that holds it",
                        self.kind
                    )));
                }
            },
        };
        if self.kind == ProviderKind::Scripted {
            let mut provider = ScriptedProvider::demo(self.name.as_str())
                .with_model(self.model.clone())
                .with_latency(self.latency);
            if let Some(turns) = &self.turns {
                provider = provider.with_script(Script::new(turns.clone()).map_err(fail)?);
            } else if let Some(path) = &self.script_file {
                provider = provider.with_script(Script::from_file(path).map_err(fail)?);
            }
            return Ok(Arc::new(provider));
        }
        // Checked here, where it is known which setting the key came from,
        // so the error names that setting.
        if let Some(key) = &key
            && reqwest::header::HeaderValue::from_str(key.expose()).is_err()
        {
            let setting = match &self.key {
                KeySource::Env(variable) => format!("environment variable {variable}"),
                KeySource::Inline(_) | KeySource::None => "api_key".to_owned(),
            };
            return Err(fail(format!(
                "{setting} holds characters an HTTP header cannot carry, such as a line break or another control character; set it to the {} API key alone",
                self.kind
            )));
        }
        let transport = Transport::new(
            &self.name,
            TransportSettings {
                key,
                extra_headers: self.headers.0.clone(),
                retry: self.retry,
                timeouts: self.timeouts,
                max_concurrent_requests: self.max_concurrent_requests,
            },
        )
        .map_err(fail)?;
        let base_url = self.base_url.clone();
        let wire: Arc<dyn crate::http::WireFormat> = match self.kind {
            ProviderKind::Openai => Arc::new(OpenAiWire {
                base_url,
                max_tokens_field: self.max_tokens_field,
            }),
            ProviderKind::Anthropic => Arc::new(AnthropicWire {
                base_url,
                version: self.anthropic_version.clone(),
                default_max_tokens: self.max_output_tokens,
            }),
            ProviderKind::Gemini => Arc::new(GeminiWire { base_url }),
            ProviderKind::Ollama | ProviderKind::Scripted => Arc::new(OllamaWire { base_url }),
        };
        let provider = HttpProvider::new(transport, wire, self.model.clone()).map_err(fail)?;
        Ok(Arc::new(provider))
    }
}

fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        })
}

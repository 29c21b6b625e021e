//! What a command hook prints or a blocking webhook answers.
//!
//! The JSON shape is Claude Code's hook output, the part deputy can act on:
//! `{"decision": "deny" | "block", "reason": "..."}` denies a start,
//! `{"continue": false, "stopReason": "..."}` too, and `additionalContext`
//! (top level or inside `hookSpecificOutput`) is added to the sub-agent's
//! context. Other fields are ignored, so richer replies stay valid.

use deputy_registry::StartDecision;
use serde::Deserialize;

/// Longest reason or context taken from a hook; longer text is cut (Claude
/// Code caps hook output strings at 10,000 characters too).
pub(crate) const MAX_REPLY_CHARS: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReply {
    decision: Option<String>,
    reason: Option<String>,
    #[serde(rename = "continue")]
    proceed: Option<bool>,
    stop_reason: Option<String>,
    additional_context: Option<String>,
    hook_specific_output: Option<SpecificOutput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecificOutput {
    additional_context: Option<String>,
}

/// The reply is not the JSON a hook may answer with.
#[derive(Debug, thiserror::Error)]
#[error("hook output is not a JSON object ({problem}): {excerpt:?}")]
pub(crate) struct BadReply {
    problem: String,
    excerpt: String,
}

/// Reads a reply; empty text allows.
pub(crate) fn parse_reply(text: &str, hook: &str) -> Result<StartDecision, BadReply> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(StartDecision::Allow);
    }
    let reply: RawReply = serde_json::from_str(text).map_err(|error| BadReply {
        problem: error.to_string(),
        excerpt: cut(text, 200),
    })?;
    let denied =
        matches!(reply.decision.as_deref(), Some("deny" | "block")) || reply.proceed == Some(false);
    if denied {
        let reason = [reply.reason, reply.stop_reason]
            .into_iter()
            .flatten()
            .find(|reason| !reason.trim().is_empty())
            .map_or_else(
                || format!("denied by hook {hook}"),
                |reason| cut(reason.trim(), MAX_REPLY_CHARS),
            );
        return Ok(StartDecision::Deny { reason });
    }
    let context = reply
        .additional_context
        .or(reply
            .hook_specific_output
            .and_then(|output| output.additional_context))
        .filter(|context| !context.trim().is_empty());
    Ok(context.map_or(StartDecision::Allow, |context| {
        StartDecision::AddContext(cut(&context, MAX_REPLY_CHARS))
    }))
}

/// At most `max` characters of `text`, with a marker when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_output_allows() {
        assert_eq!(parse_reply("  \n", "h").unwrap(), StartDecision::Allow);
        assert_eq!(parse_reply("{}", "h").unwrap(), StartDecision::Allow);
    }

    #[test]
    fn deny_block_and_continue_false_deny_with_their_reason() {
        assert_eq!(
            parse_reply(r#"{"decision":"deny","reason":"over quota"}"#, "h").unwrap(),
            StartDecision::Deny {
                reason: "over quota".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"decision":"block"}"#, "gate").unwrap(),
            StartDecision::Deny {
                reason: "denied by hook gate".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"continue":false,"stopReason":"frozen"}"#, "h").unwrap(),
            StartDecision::Deny {
                reason: "frozen".into()
            }
        );
    }

    #[test]
    fn context_comes_from_the_top_level_or_hook_specific_output() {
        assert_eq!(
            parse_reply(r#"{"additionalContext":"team: search"}"#, "h").unwrap(),
            StartDecision::AddContext("team: search".into())
        );
        assert_eq!(
            parse_reply(
                r#"{"hookSpecificOutput":{"hookEventName":"SubagentStart","additionalContext":"x"}}"#,
                "h"
            )
            .unwrap(),
            StartDecision::AddContext("x".into())
        );
        assert_eq!(
            parse_reply(r#"{"decision":"approve","suppressOutput":true}"#, "h").unwrap(),
            StartDecision::Allow
        );
    }

    #[test]
    fn garbage_is_an_error_that_quotes_it() {
        let error = parse_reply("hello there", "h").unwrap_err().to_string();
        assert!(error.contains("not a JSON object"), "{error}");
        assert!(error.contains("hello there"), "{error}");
        assert!(parse_reply("[1, 2]", "h").is_err());
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(cut("hé", 2), "hé");
    }
}

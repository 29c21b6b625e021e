//! TOML errors told the way a person fixing the file needs them: the line
//! and column, the key's full path, the line itself with a marker, and the
//! nearest known key or value when the given one looks like a typo.

use crate::config::closest;

/// One problem sentence (plus the marked line) for a TOML or shape error.
pub(crate) fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().to_owned();
    let Some(span) = error.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_number = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");

    let path = key_path(text, line_start, line_text);
    // A value under a key that may hold a secret (a key, a token, a URL
    // with a token in it) is never echoed, in the message or the line; nor
    // is a value that names such a key itself, as an inline table does
    // (`openai = { api_key = "...", modle = "x" }`). Hiding a harmless
    // value costs only the echo.
    let hidden = path.as_deref().is_some_and(is_sensitive)
        || line_text
            .split_once('=')
            .is_some_and(|(_, value)| is_sensitive(value));
    let (message, line_text) = if hidden {
        let (key, value) = line_text.split_once('=').unwrap_or((line_text, ""));
        let value = value.trim();
        let mut message = message;
        for form in [value, value.trim_matches('"'), value.trim_matches('\'')] {
            if form.len() >= 2 {
                message = message.replace(form, "<hidden>");
            }
        }
        // The line may say more than the value (a trailing comment), so
        // the forms above may miss: anything quoted in the message goes
        // too. Key names are quoted with backticks, so a did-you-mean
        // still works.
        (
            hide_quoted(&message),
            format!("{} = <hidden>", key.trim_end()),
        )
    } else {
        (message, line_text.to_owned())
    };

    let mut sentence = format!("line {line_number}, column {column}");
    if let Some(path) = &path {
        sentence.push_str(&format!(", at {path}"));
    }
    sentence.push_str(": ");
    sentence.push_str(&message);
    if let Some(suggestion) = suggestion(&message) {
        sentence.push_str(&format!("; did you mean `{suggestion}`?"));
    }

    let gutter = " ".repeat(line_number.to_string().len());
    let width = text[start..span.end.clamp(start, text.len())]
        .lines()
        .next()
        .map_or(1, |marked| marked.chars().count().max(1));
    let (column, width) = if hidden {
        (1, line_text.chars().count().max(1))
    } else {
        (column, width)
    };
    format!(
        "{sentence}\n{gutter} |\n{line_number} | {line_text}\n{gutter} | {}{}",
        " ".repeat(column - 1),
        "^".repeat(width)
    )
}

/// `message` with every run between double or single quotes replaced by
/// `<hidden>`.
fn hide_quoted(message: &str) -> String {
    let mut hidden = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '\'']) {
        let quote = rest[open..].chars().next().unwrap_or('"');
        let Some(length) = rest[open + 1..].find(quote) else {
            break;
        };
        hidden.push_str(&rest[..open]);
        hidden.push(quote);
        hidden.push_str("<hidden>");
        hidden.push(quote);
        rest = &rest[open + 1 + length + 1..];
    }
    hidden.push_str(rest);
    hidden
}

/// Whether a key path names something that may hold a secret.
fn is_sensitive(path: &str) -> bool {
    const WORDS: [&str; 8] = [
        "key", "token", "secret", "password", "url", "header", "env", "auth",
    ];
    let path = path.to_ascii_lowercase();
    WORDS.iter().any(|word| path.contains(word))
}

/// `table.key` for an error on a `key = value` line: the last `[table]`
/// or `[[table]]` header before the line, then the line's key.
fn key_path(text: &str, line_start: usize, line_text: &str) -> Option<String> {
    let (key, _) = line_text.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('['))
        .map(|line| {
            let line = line.split('#').next().unwrap_or(line).trim();
            line.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned()
        });
    Some(match header {
        Some(header) if !header.is_empty() => format!("{header}.{key}"),
        _ => key.to_owned(),
    })
}

/// The known name nearest to an unknown field or variant, from serde's
/// "unknown field `x`, expected `a`, `b`" message.
fn suggestion(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (given, expected) = rest.split_once('`')?;
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    closest(given, known.into_iter()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_come_from_the_expected_list() {
        assert_eq!(
            suggestion(
                "unknown field `max_concurent`, expected `max_concurrent` or `queue_wait_ms`"
            )
            .as_deref(),
            Some("max_concurrent")
        );
        assert_eq!(
            suggestion("unknown variant `wiat`, expected one of `wait`, `cancel`, `detach`")
                .as_deref(),
            Some("wait")
        );
        assert_eq!(suggestion("invalid type: string \"x\", expected i64"), None);
    }

    #[test]
    fn paths_come_from_the_header_and_the_line_key() {
        let text = "[agent.subagents] # limits\nmax_concurrent = \"five\"\n";
        assert_eq!(
            key_path(text, text.find("max").unwrap(), "max_concurrent = \"five\"").as_deref(),
            Some("agent.subagents.max_concurrent")
        );
        assert_eq!(key_path(text, 0, "[agent.subagents] # limits"), None);
    }

    #[test]
    fn values_of_secret_keys_are_never_echoed() {
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only parsed, to get the error")]
        struct Provider {
            api_key: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only parsed, to get the error")]
        struct File {
            providers: std::collections::BTreeMap<String, Provider>,
        }
        let text = "[providers.openai]\napi_key = \"sk-live-abcdef123456\"\n";
        let error = toml::from_str::<File>(text).unwrap_err();
        let described = describe_toml_error(text, &error);
        assert!(!described.contains("sk-live"), "{described}");
        assert!(
            described.contains("at providers.openai.api_key"),
            "{described}"
        );
        assert!(described.contains("api_key = <hidden>"), "{described}");

        // A trailing comment makes the line say more than the value.
        let text = "[providers.openai]\napi_key = \"sk-live-abcdef123456\" # prod\n";
        let error = toml::from_str::<File>(text).unwrap_err();
        assert!(error.message().contains("sk-live"), "the case this covers");
        let described = describe_toml_error(text, &error);
        assert!(!described.contains("sk-live"), "{described}");
    }

    #[test]
    fn an_inline_table_holding_a_secret_is_never_echoed() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "only parsed, to get the error")]
        struct Provider {
            kind: String,
            api_key: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only parsed, to get the error")]
        struct File {
            providers: std::collections::BTreeMap<String, Provider>,
        }
        let text = "[providers]\nopenai = { kind = \"openai\", api_key = \"sk-live-abcdef123456\", modle = \"x\" }\n";
        let error = toml::from_str::<File>(text).unwrap_err();
        let described = describe_toml_error(text, &error);
        assert!(!described.contains("sk-live"), "{described}");
        assert!(described.contains("unknown field `modle`"), "{described}");
        assert!(described.contains("openai = <hidden>"), "{described}");
    }

    #[test]
    fn a_syntax_error_is_marked_on_its_line() {
        let text = "[agent]\nname = \n";
        let error = toml::from_str::<toml::Table>(text).unwrap_err();
        let described = describe_toml_error(text, &error);
        assert!(described.starts_with("line 2, column"), "{described}");
        assert!(described.contains("2 | name = "), "{described}");
    }
}

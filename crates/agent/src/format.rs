//! Text that models read: cuts, windows and durations.

use std::time::Duration;

use serde::Serializer;

/// A part of a text, counted in characters (not bytes), so the offsets a
/// model is told to ask for line up with what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<'a> {
    /// The part shown.
    pub text: &'a str,
    /// Its first character.
    pub start: usize,
    /// One past its last character.
    pub end: usize,
    /// Characters in the whole text.
    pub total: usize,
}

impl Window<'_> {
    /// Whether characters follow the part shown.
    pub fn has_more(&self) -> bool {
        self.end < self.total
    }
}

/// At most `max_chars` characters of `text`, starting at character
/// `offset`: how a host cuts a result it hands to a model the way the
/// runtime does.
///
/// ```
/// let shown = deputy_agent::window("héllo wörld", 0, 5);
/// assert_eq!((shown.text, shown.total, shown.has_more()), ("héllo", 11, true));
/// ```
pub fn window(text: &str, offset: usize, max_chars: usize) -> Window<'_> {
    let total = text.chars().count();
    let start = offset.min(total);
    let end = start.saturating_add(max_chars).min(total);
    let byte_at = |chars: usize| {
        text.char_indices()
            .nth(chars)
            .map_or(text.len(), |(byte, _)| byte)
    };
    Window {
        text: &text[byte_at(start)..byte_at(end)],
        start,
        end,
        total,
    }
}

/// `text`, cut to `max_chars` characters with a note saying so.
pub(crate) fn cut_tool_output(text: String, max_chars: usize) -> String {
    let shown = window(&text, 0, max_chars);
    if !shown.has_more() {
        return text;
    }
    format!(
        "{}\n[output cut: showing the first {} of {} characters]",
        shown.text, shown.end, shown.total
    )
}

/// "1.2 s", "350 ms", "2 min 5 s".
pub(crate) fn human_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1_000 {
        format!("{millis} ms")
    } else if millis < 60_000 {
        format!("{:.1} s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{} min {} s", secs / 60, secs % 60)
    }
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn as_millis<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(millis(*duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_characters_not_bytes() {
        let text = "héllo wörld";
        let part = window(text, 1, 4);
        assert_eq!(part.text, "éllo");
        assert_eq!((part.start, part.end, part.total), (1, 5, 11));
        assert!(part.has_more());
        let tail = window(text, 6, 100);
        assert_eq!(tail.text, "wörld");
        assert!(!tail.has_more());
        let past = window(text, 50, 10);
        assert_eq!(past.text, "");
        assert_eq!(past.start, 11);
    }

    #[test]
    fn long_output_is_cut_with_a_note() {
        assert_eq!(cut_tool_output("short".to_owned(), 10), "short");
        let cut = cut_tool_output("a".repeat(30), 10);
        assert!(cut.starts_with(&"a".repeat(10)));
        assert!(cut.ends_with("[output cut: showing the first 10 of 30 characters]"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(350)), "350 ms");
        assert_eq!(human_duration(Duration::from_millis(1_240)), "1.2 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2 min 5 s");
    }
}

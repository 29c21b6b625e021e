//! Cuts a streamed body into frames: server-sent events (OpenAI,
//! Anthropic, Gemini) or newline-delimited JSON (Ollama).
//!
//! Written here rather than taken from a crate because the stream driver
//! needs to see the end of the body itself: a stream that stops without its
//! closing frame is an error (`truncated_stream`), not a quiet end.

/// One frame of a streamed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The SSE `event:` name; `None` for unnamed events and NDJSON lines.
    pub(crate) event: Option<String>,
    /// The SSE data (lines joined with `\n`) or the NDJSON line.
    pub(crate) data: String,
}

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Sse,
    Ndjson,
}

/// Incremental framer: feed chunks as they arrive, read frames.
#[derive(Debug)]
pub(crate) struct Framer {
    framing: Framing,
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl Framer {
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            framing,
            partial: Vec::new(),
            event: None,
            data: Vec::new(),
        }
    }

    /// Frames completed by `chunk`.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.partial.extend_from_slice(chunk);
        let Some(last_newline) = self.partial.iter().rposition(|byte| *byte == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        // Without its final newline, so `split` yields no empty piece at
        // the end (for SSE, that would read as a blank line and end an
        // event early).
        let lines = complete.strip_suffix(b"\n").unwrap_or(&complete);
        let mut frames = Vec::new();
        for line in lines.split(|byte| *byte == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(&String::from_utf8_lossy(line), &mut frames);
        }
        frames
    }

    /// Frames left when the body ends. An SSE event cut off before its
    /// blank line is still passed on; the decoder judges whether the
    /// stream was complete.
    pub(crate) fn finish(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            let line = String::from_utf8_lossy(&rest).into_owned();
            self.line(line.trim_end_matches('\r'), &mut frames);
        }
        if self.framing == Framing::Sse {
            self.dispatch(&mut frames);
        }
        frames
    }

    fn line(&mut self, line: &str, frames: &mut Vec<Frame>) {
        match self.framing {
            Framing::Ndjson => {
                if !line.trim().is_empty() {
                    frames.push(Frame {
                        event: None,
                        data: line.to_owned(),
                    });
                }
            }
            Framing::Sse => {
                if line.is_empty() {
                    self.dispatch(frames);
                } else if line.starts_with(':') {
                    // A comment, sent as a keep-alive.
                } else {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => self.event = Some(value.to_owned()),
                        "data" => self.data.push(value.to_owned()),
                        // `id` and `retry` matter only to reconnecting
                        // browsers; unknown fields are ignored by the spec.
                        _ => {}
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, frames: &mut Vec<Frame>) {
        let event = self.event.take();
        if self.data.is_empty() {
            return;
        }
        frames.push(Frame {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: Option<&str>, data: &str) -> Frame {
        Frame {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn sse_events_split_across_chunks_are_joined() {
        let mut framer = Framer::new(Framing::Sse);
        assert!(framer.push(b"event: message_start\r\nda").is_empty());
        assert!(framer.push(b"ta: {\"a\":").is_empty());
        let frames = framer.push(b"1}\r\n\r\n: ping\n\ndata: [DONE]\n\n");
        assert_eq!(
            frames,
            vec![
                frame(Some("message_start"), "{\"a\":1}"),
                frame(None, "[DONE]")
            ]
        );
        assert!(framer.finish().is_empty());
    }

    #[test]
    fn sse_multi_line_data_is_joined_with_newlines() {
        let mut framer = Framer::new(Framing::Sse);
        let frames = framer.push(b"data: one\ndata:two\n\n");
        assert_eq!(frames, vec![frame(None, "one\ntwo")]);
    }

    #[test]
    fn an_sse_event_cut_before_its_blank_line_is_passed_on_at_the_end() {
        let mut framer = Framer::new(Framing::Sse);
        assert!(framer.push(b"data: {\"x\":1}").is_empty());
        assert_eq!(framer.finish(), vec![frame(None, "{\"x\":1}")]);
    }

    #[test]
    fn ndjson_lines_skip_blanks_and_keep_the_tail() {
        let mut framer = Framer::new(Framing::Ndjson);
        let frames = framer.push(b"{\"a\":1}\n\n{\"b\":");
        assert_eq!(frames, vec![frame(None, "{\"a\":1}")]);
        assert_eq!(framer.finish(), vec![frame(None, "{\"b\":")]);
    }
}

//! Streamed answers: text as it is written, tool calls as they complete.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use deputy_registry::Usage;
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, ProviderError};
use crate::framing::Frame;
use crate::message::{ChatResponse, FinishReason, ToolCall};

/// One event of a streamed answer. A stream that ends well ends with
/// exactly one [`Finished`](Self::Finished); any other ending is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// More text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// A tool call, with its arguments fully assembled.
    ToolCall {
        /// The call.
        call: ToolCall,
    },
    /// The end: why the model stopped and what it cost.
    Finished {
        /// Why it stopped.
        finish: FinishReason,
        /// Tokens spent, with `requests` counting every attempt.
        usage: Usage,
        /// The model that answered.
        model: String,
        /// An opaque signature on the text, to send back (Gemini).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
}

type BoxedEvents = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// A streamed answer. Dropping it closes the connection.
pub struct ChatStream {
    inner: BoxedEvents,
}

impl fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream").finish_non_exhaustive()
    }
}

impl ChatStream {
    /// Wraps any stream of events (backends and tests build them).
    pub fn new(
        stream: impl Stream<Item = Result<StreamEvent, ProviderError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// Reads the whole stream into the answer a non-streamed call would
    /// have given.
    ///
    /// # Cancel safety
    /// Dropping the future drops the stream and what it had read.
    ///
    /// # Errors
    /// The stream's own error, or `truncated_stream` when it ended without
    /// its `Finished` event.
    pub async fn collect_response(mut self, provider: &str) -> Result<ChatResponse, ProviderError> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            match event? {
                StreamEvent::Finished {
                    finish,
                    usage,
                    model,
                    signature,
                } => {
                    let (text, tool_calls) = text_and_calls(events);
                    return Ok(ChatResponse {
                        text,
                        tool_calls,
                        finish,
                        usage,
                        model,
                        signature,
                    });
                }
                event => events.push(event),
            }
        }
        Err(ProviderError::new(
            ErrorKind::TruncatedStream,
            provider,
            "the stream ended without its final event",
        ))
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// The text and tool calls that `events` add up to.
pub(crate) fn text_and_calls(events: Vec<StreamEvent>) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for event in events {
        match event {
            StreamEvent::TextDelta { text: delta } => text.push_str(&delta),
            StreamEvent::ToolCall { call } => tool_calls.push(call),
            StreamEvent::Finished { .. } => {}
        }
    }
    (text, tool_calls)
}

/// Turns one backend's frames into events.
pub(crate) trait StreamDecoder: Send {
    /// Handles one frame, appending the events it completes.
    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError>;

    /// The body ended: append the `Finished` event, or say why the stream
    /// is incomplete.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError>;
}

/// Parses a frame's data as JSON, or says it is malformed.
pub(crate) fn frame_json(
    provider: &str,
    frame: &Frame,
) -> Result<serde_json::Value, ProviderError> {
    serde_json::from_str(&frame.data).map_err(|error| {
        ProviderError::new(
            ErrorKind::MalformedResponse,
            provider,
            format!(
                "a stream event is not valid JSON ({error}): {}",
                excerpt(&frame.data)
            ),
        )
    })
}

/// The first 200 characters of `text`, for error messages.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

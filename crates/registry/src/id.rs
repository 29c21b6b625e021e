//! Task identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of one task: a random (v4) UUID.
///
/// `Display` prints the full hyphenated form, which is what tools and APIs
/// accept back; [`TaskId::short`] gives the first eight hex digits for humans.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh random id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The first eight hex digits, for log lines and status tables.
    pub fn short(&self) -> String {
        let mut buffer = Uuid::encode_buffer();
        let full = self.0.simple().encode_lower(&mut buffer);
        full[..8].to_owned()
    }
}

impl From<Uuid> for TaskId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0.hyphenated())
    }
}

/// The text given as a task id was not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task id `{input}`: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8")]
pub struct ParseTaskIdError {
    input: String,
}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(input.trim())
            .map(Self)
            .map_err(|_| ParseTaskIdError {
                input: input.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_through_from_str() {
        let id = TaskId::new_random();
        let parsed: TaskId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn short_form_is_the_first_eight_hex_digits() {
        let id: TaskId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        assert_eq!(id.short(), "67e55044");
    }

    #[test]
    fn garbage_is_rejected_with_the_input_named() {
        let err = "not-an-id".parse::<TaskId>().unwrap_err();
        assert!(err.to_string().contains("`not-an-id`"), "{err}");
    }
}

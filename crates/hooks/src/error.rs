//! Errors in hook configuration.

use std::fmt;

/// Hook or billing settings that cannot be used; lists every problem, each
/// naming its key, the value and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfigError {
    problems: Vec<String>,
}

impl HookConfigError {
    pub(crate) fn new(problems: Vec<String>) -> Self {
        Self { problems }
    }

    pub(crate) fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// Every problem, one sentence each.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for HookConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} problems in the hook settings:", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for HookConfigError {}

//! Exit codes: 0 success, 1 a failed run, 2 bad usage or config.

use std::process::ExitCode;

/// A command's failure and the exit code it means.
#[derive(Debug)]
pub(crate) struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    /// Bad usage or config: exit code 2.
    pub(crate) fn usage(error: anyhow::Error) -> Self {
        Self { code: 2, error }
    }

    /// The work itself failed: exit code 1.
    pub(crate) fn failed(error: anyhow::Error) -> Self {
        Self { code: 1, error }
    }

    /// Prints the error to stderr and gives the exit code.
    pub(crate) fn report(self) -> ExitCode {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {:#}", self.error);
        ExitCode::from(self.code)
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(error: crate::config::ConfigError) -> Self {
        Self::usage(error.into())
    }
}

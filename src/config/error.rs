//! What can be wrong with a config file, said so a person can fix it.
//!
//! Every problem is a [`ConfigIssue`] carrying the key path (`routes[1].upstream`), the place in
//! the file when known, and an optional hint. `backstop validate`, startup and reload all print
//! the same lines, so an SRE sees the same words wherever the problem shows up.

use std::fmt;

use serde_saphyr::Location;

use super::redact::{redact_urls, shorten_echoes};

/// Line and column (both 1-based) of a value in the YAML file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Position {
    /// The position of a serde-saphyr location, when it is known.
    pub fn from_location(location: &Location) -> Option<Self> {
        let (line, column) = (location.line() as usize, location.column() as usize);
        (line > 0).then_some(Self { line, column })
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `routes[1].upstream`.
    pub path: String,
    /// What is wrong, lower-case.
    pub message: String,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// A likely fix, e.g. `did you mean "payments"?`.
    pub hint: Option<String>,
}

/// Prints the issue with URL credentials redacted and long echoed values cut (see
/// [`super::redact`]): this is the only way issues reach `validate`, logs and the admin API.
impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let safe = |text: &str| shorten_echoes(&redact_urls(text)).into_owned();
        if self.path.is_empty() {
            write!(f, "{}", safe(&self.message))?;
        } else {
            write!(f, "{}: {}", safe(&self.path), safe(&self.message))?;
        }
        if let Some(p) = self.position {
            write!(f, " (line {}, column {})", p.line, p.column)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; {}", safe(hint))?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML; parsing stops at the first such problem, as every YAML
    /// parser must.
    #[error("{0}")]
    Syntax(ConfigIssue),
    /// The file is YAML, but keys, types or values are wrong; every problem found is listed,
    /// in file order.
    #[error("{}", issues_text(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// Every issue, one per line, as `backstop validate` prints them.
    pub fn issues(&self) -> Vec<String> {
        match self {
            ConfigError::Io { .. } => vec![self.to_string()],
            ConfigError::Syntax(issue) => vec![issue.to_string()],
            ConfigError::Invalid(issues) => issues.iter().map(ToString::to_string).collect(),
        }
    }
}

fn issues_text(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

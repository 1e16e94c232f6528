//! Errors that name the key at fault, what was expected, and where the value came from.

use std::fmt;
use std::path::PathBuf;

/// Why settings could not be loaded or a view could not be built.
///
/// Every variant renders on one line, so the binary can print it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read or is not valid TOML.
    #[error("config file `{}`: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// An environment variable under the `GROKFORGE__` prefix that cannot name a key.
    #[error("environment variable `{var}`: {message}")]
    EnvVar { var: String, message: String },

    /// A key that no section has.
    #[error("unknown key `{key}` in {origin}, expected {}", one_of(expected))]
    UnknownKey {
        key: String,
        origin: String,
        expected: Vec<String>,
    },

    /// A value of the wrong type or shape.
    #[error("invalid value for `{key}` in {origin}: {message}")]
    InvalidValue {
        key: String,
        origin: String,
        message: String,
    },

    /// Values that parse but do not make sense, alone or together; all of them at once.
    #[error("invalid settings: {}", Problems(.0))]
    Validation(Vec<ValidationProblem>),

    /// [`crate::ConfigManager::service_config`] was asked for a service it does not know.
    #[error("unknown service `{name}`, expected {}", one_of(known))]
    UnknownService { name: String, known: Vec<String> },
}

/// One thing wrong with the settings, and the key it concerns (`gateway.bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationProblem {
    pub key: String,
    pub message: String,
}

impl ValidationProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.key, self.message)
    }
}

struct Problems<'a>(&'a [ValidationProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

fn one_of(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.as_slice() {
        [] => "nothing here".to_owned(),
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_lists_every_problem_on_one_line() {
        let error = ConfigError::Validation(vec![
            ValidationProblem::new("training.max_attempts", "must be at least 1"),
            ValidationProblem::new("discovery.ttl_ms", "must be greater than 2000"),
        ]);
        assert_eq!(
            error.to_string(),
            "invalid settings: `training.max_attempts` must be at least 1; \
             `discovery.ttl_ms` must be greater than 2000"
        );
    }

    #[test]
    fn unknown_key_lists_alternatives() {
        let error = ConfigError::UnknownKey {
            key: "gateway.bnd".to_owned(),
            origin: "file `grokforge.toml`".to_owned(),
            expected: vec!["bind".to_owned(), "tokens".to_owned()],
        };
        assert_eq!(
            error.to_string(),
            "unknown key `gateway.bnd` in file `grokforge.toml`, expected one of `bind`, `tokens`"
        );
    }
}

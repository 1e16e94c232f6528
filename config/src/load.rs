//! Layering: built-in defaults, then the TOML file, then `GROKFORGE__SECTION__KEY` variables.
//!
//! The environment arrives as an argument and is turned into a figment provider here, so that
//! figment's own error tags can say which variable a bad value came from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use figment::error::Kind;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::error::ConfigError;
use crate::settings::Settings;

/// Variables starting with this (in any case) are settings; everything else is ignored, so
/// the binary's own variables such as `GROKFORGE_CONFIG` can sit beside them.
pub const ENV_PREFIX: &str = "GROKFORGE__";

/// Separates nesting levels in a variable name: `GROKFORGE__GATEWAY__BIND` is `gateway.bind`.
pub const ENV_SEPARATOR: &str = "__";

/// How the environment provider names itself in figment metadata; used to recognise it again
/// when an error comes back.
const ENV_PROVIDER_NAME: &str = "grokforge environment";

impl Settings {
    /// Layers the built-in defaults, the TOML `file` (when given; a missing file is an error)
    /// and the `GROKFORGE__` variables in `env`, then validates the result.
    ///
    /// `env` is usually `std::env::vars()`, but this function never reads the process
    /// environment itself, so tests and embedders control exactly what it sees.
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let defaults = Figment::from(Serialized::defaults(Settings::default()));
        let env = EnvOverrides::from_vars(env, &defaults)?;

        let mut figment = defaults;
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings = figment.merge(env).extract().map_err(translate)?;

        settings.validate()?;
        Ok(settings)
    }
}

/// One `GROKFORGE__` variable, split into its key path.
#[derive(Debug)]
struct EnvOverride {
    key: Vec<String>,
    var: String,
    value: Value,
}

/// The `GROKFORGE__` subset of an environment, as a figment provider.
#[derive(Debug)]
struct EnvOverrides {
    /// Keyed by the dotted key (`gateway.bind`).
    overrides: BTreeMap<String, EnvOverride>,
}

impl EnvOverrides {
    fn from_vars<I>(vars: I, defaults: &Figment) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut overrides: BTreeMap<String, EnvOverride> = BTreeMap::new();
        for (var, raw) in vars {
            let Some(rest) = strip_prefix_ignore_ascii_case(&var, ENV_PREFIX) else {
                continue;
            };
            let key: Vec<String> = rest
                .split(ENV_SEPARATOR)
                .map(str::to_ascii_lowercase)
                .collect();
            if key.iter().any(|part| !is_key_part(part)) {
                return Err(ConfigError::EnvVar {
                    var,
                    message: format!(
                        "expected {ENV_PREFIX}SECTION{ENV_SEPARATOR}KEY, with non-empty parts of \
                         letters, digits and `_` separated by `{ENV_SEPARATOR}`"
                    ),
                });
            }
            let dotted = key.join(".");
            if let Some(earlier) = overrides.get(&dotted) {
                // Variable names are case-sensitive on Unix but keys are not, so two variables
                // can spell the same key; picking one silently would depend on iteration order.
                return Err(ConfigError::EnvVar {
                    var,
                    message: format!("sets `{dotted}`, which `{}` sets too", earlier.var),
                });
            }
            let value = typed_value(defaults, &dotted, raw);
            overrides.insert(dotted, EnvOverride { key, var, value });
        }

        // `GROKFORGE__GATEWAY` (a whole table) next to `GROKFORGE__GATEWAY__BIND` would make the
        // result depend on merge order; refuse it instead.
        for (dotted, inner) in &overrides {
            let mut ancestor = dotted.as_str();
            while let Some((parent, _)) = ancestor.rsplit_once('.') {
                if let Some(outer) = overrides.get(parent) {
                    return Err(ConfigError::EnvVar {
                        var: inner.var.clone(),
                        message: format!(
                            "sets `{dotted}` inside `{parent}`, which `{}` sets as a whole",
                            outer.var
                        ),
                    });
                }
                ancestor = parent;
            }
        }

        Ok(Self { overrides })
    }
}

/// Parses a variable's text the way figment's own `Env` provider does (`2` is a number, `true`
/// a bool, `[..]` an array), except where the default is a string or unset: there the text is
/// kept verbatim, so a numeric-looking secret or node id is not turned into a number and then
/// rejected (or, worse, re-printed as a different string).
fn typed_value(defaults: &Figment, dotted: &str, raw: String) -> Value {
    match defaults.find_value(dotted) {
        Ok(Value::String(..) | Value::Empty(..)) => Value::from(raw),
        _ => match raw.parse::<Value>() {
            Ok(value) => value,
            Err(infallible) => match infallible {},
        },
    }
}

fn is_key_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

fn strip_prefix_ignore_ascii_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        let vars: Arc<BTreeMap<String, String>> = Arc::new(
            self.overrides
                .iter()
                .map(|(dotted, entry)| (dotted.clone(), entry.var.clone()))
                .collect(),
        );
        Metadata::named(ENV_PROVIDER_NAME).interpolater(move |_: &Profile, keys: &[&str]| {
            let dotted = keys.join(".");
            let below = format!("{dotted}.");
            // An error about a whole section (`gatewy`) points at the first variable inside
            // it; one about an element inside a variable's value (`gateway.tokens.0.role`)
            // points at that variable.
            vars.iter()
                .find(|(key, _)| {
                    **key == dotted
                        || key.starts_with(&below)
                        || dotted.starts_with(&format!("{key}."))
                })
                .map(|(_, var)| var.clone())
                .unwrap_or_else(|| {
                    format!("{ENV_PREFIX}{}", keys.join(ENV_SEPARATOR)).to_ascii_uppercase()
                })
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for entry in self.overrides.values() {
            insert_nested(&mut root, &entry.key, entry.value.clone());
        }
        Ok(Profile::Default.collect(root))
    }
}

/// `from_vars` has refused overlapping keys, so every step below the leaf is a table this
/// function created itself.
fn insert_nested(dict: &mut Dict, key: &[String], value: Value) {
    let Some((first, rest)) = key.split_first() else {
        return;
    };
    if rest.is_empty() {
        dict.insert(first.clone(), value);
        return;
    }
    let entry = dict
        .entry(first.clone())
        .or_insert_with(|| Value::from(Dict::new()));
    if let Value::Dict(_, inner) = entry {
        insert_nested(inner, rest, value);
    }
}

/// Turns figment's error into ours, keeping the key, the expectation and the origin.
fn translate(error: figment::Error) -> ConfigError {
    // figment chains one error per failing provider; only the file can fail to provide, and
    // extraction stops at the first bad value, so the head of the chain is the whole story.
    let key = error.path.join(".");
    let origin = origin_of(&error);

    if error.path.is_empty()
        && let Some(path) = file_of(&error)
    {
        return ConfigError::File {
            path: path.to_path_buf(),
            message: one_line(&error.kind.to_string()),
        };
    }

    let key = if key.is_empty() {
        "(top level)".to_owned()
    } else {
        key
    };
    match error.kind {
        Kind::UnknownField(_, expected) => ConfigError::UnknownKey {
            key,
            origin,
            expected: expected.iter().map(|name| (*name).to_owned()).collect(),
        },
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            ConfigError::InvalidValue {
                key,
                origin,
                message: format!("expected {}, found {actual}", describe(&expected)),
            }
        }
        Kind::UnknownVariant(actual, expected) => ConfigError::InvalidValue {
            key,
            origin,
            message: format!(
                "expected one of {}, found `{actual}`",
                expected
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        other => ConfigError::InvalidValue {
            key,
            origin,
            message: other.to_string(),
        },
    }
}

/// serde names integer types the Rust way; a person editing a file thinks in kinds of numbers.
fn describe(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
            format!("a non-negative integer ({expected})")
        }
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => format!("an integer ({expected})"),
        "f32" | "f64" => format!("a number ({expected})"),
        other => other.to_owned(),
    }
}

/// TOML parse errors arrive as several lines with a source snippet; a log line wants one.
/// The snippet repeats what the line and column already say, so it is dropped.
fn one_line(message: &str) -> String {
    let is_snippet = |line: &str| {
        let gutter = line.split_once('|').map(|(gutter, _)| gutter.trim());
        gutter.is_some_and(|gutter| gutter.bytes().all(|byte| byte.is_ascii_digit()))
    };
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !is_snippet(line))
        .collect::<Vec<_>>()
        .join(": ")
}

fn file_of(error: &figment::Error) -> Option<&Path> {
    error.metadata.as_ref()?.source.as_ref()?.file_path()
}

fn origin_of(error: &figment::Error) -> String {
    let Some(metadata) = &error.metadata else {
        return "settings".to_owned();
    };
    if let Some(path) = file_of(error) {
        return format!("file `{}`", path.display());
    }
    if metadata.name == ENV_PROVIDER_NAME {
        let profile = error.profile.clone().unwrap_or_default();
        let var = metadata.interpolate(&profile, &error.path);
        return format!("environment variable `{var}`");
    }
    "built-in defaults".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn defaults() -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        let toml_error = "TOML parse error at line 1, column 9\n  |\n1 | [gateway\n  |         ^\n\
                          invalid table header\nexpected `.`, `]`\n";
        assert_eq!(
            one_line(toml_error),
            "TOML parse error at line 1, column 9: invalid table header: expected `.`, `]`"
        );
        assert_eq!(
            one_line("No such file or directory (os error 2)"),
            "No such file or directory (os error 2)"
        );
    }

    #[test]
    fn unprefixed_variables_are_ignored() {
        let env = vars(&[
            ("PATH", "/usr/bin"),
            ("GROKFORGE_CONFIG", "grokforge.toml"),
            ("GROKFORGE", "x"),
        ]);
        let overrides = EnvOverrides::from_vars(env, &defaults()).unwrap();
        assert!(overrides.overrides.is_empty());
    }

    #[test]
    fn values_are_typed_by_their_default() {
        let env = vars(&[
            ("GROKFORGE__BROKER__CLUSTER_SECRET", "0001234567890123456"),
            ("GROKFORGE__NODE__NAME", "42"),
            ("GROKFORGE__TRAINING__MAX_ATTEMPTS", "7"),
        ]);
        let overrides = EnvOverrides::from_vars(env, &defaults()).unwrap();
        let value = |key: &str| overrides.overrides[key].value.clone();
        assert_eq!(
            value("broker.cluster_secret").into_string().as_deref(),
            Some("0001234567890123456")
        );
        assert_eq!(value("node.name").into_string().as_deref(), Some("42"));
        assert_eq!(value("training.max_attempts").to_u128(), Some(7));
    }

    #[test]
    fn empty_key_parts_are_rejected() {
        for var in [
            "GROKFORGE__",
            "GROKFORGE__GATEWAY__",
            "GROKFORGE____BIND",
            "GROKFORGE__GATEWAY.BIND",
        ] {
            let error = EnvOverrides::from_vars(vars(&[(var, "1")]), &defaults()).unwrap_err();
            assert!(error.to_string().contains(var), "{error}");
        }
    }

    #[test]
    fn the_same_key_spelled_twice_is_rejected() {
        let env = vars(&[
            ("GROKFORGE__GATEWAY__BIND", "127.0.0.1:1"),
            ("grokforge__gateway__bind", "127.0.0.1:2"),
        ]);
        let error = EnvOverrides::from_vars(env, &defaults())
            .unwrap_err()
            .to_string();
        assert!(error.contains("GROKFORGE__GATEWAY__BIND"), "{error}");
        assert!(error.contains("grokforge__gateway__bind"), "{error}");
    }

    #[test]
    fn a_table_and_a_key_inside_it_are_rejected() {
        let env = vars(&[
            ("GROKFORGE__GATEWAY", "{bind = \"127.0.0.1:1\"}"),
            ("GROKFORGE__GATEWAY__BIND", "127.0.0.1:2"),
        ]);
        let error = EnvOverrides::from_vars(env, &defaults())
            .unwrap_err()
            .to_string();
        assert!(error.contains("`GROKFORGE__GATEWAY`"), "{error}");
        assert!(error.contains("`GROKFORGE__GATEWAY__BIND`"), "{error}");
    }
}

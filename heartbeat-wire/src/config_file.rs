//! The daemons' TOML config file: every command-line flag may be set there
//! under its long name (`disk = "/dev/drbd/by-res/x/0"`, `port = 8076`,
//! `urls = ["http://a:8076", "http://b:8076"]`, `verbose = true`), and a flag
//! given on the command line wins over the file.
//!
//! The command-line parser stays the single source of truth: the file is
//! turned into `--key=value` arguments placed before the real ones, and a key
//! whose flag also appears on the command line is dropped entirely, so a
//! repeatable or list flag given on the command line replaces the file's list
//! instead of adding to it. Values are then checked by the parser exactly as
//! if they had been typed.
//!
//! The merging knows nothing of the parser: it takes the flags as
//! [`FlagSpec`]s. With the `cli` feature, [`WithConfigFile`] derives them
//! from a clap parser and gives it `parse_with_config`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The flag that names the config file.
pub const CONFIG_FLAG: &str = "config";

/// One command-line flag as the config file sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSpec {
    /// Long name without dashes; also the key in the file.
    pub long: String,
    pub short: Option<char>,
    /// Takes a value (`--port 8076`); otherwise a switch (`--verbose`) or a
    /// counter (`-vv`, an integer in the file).
    pub takes_value: bool,
}

/// Specs from `(long, short, takes_value)` triples, e.g. from clap:
/// `cmd.get_arguments().filter_map(|a| Some((a.get_long()?, a.get_short(),
/// a.get_action().takes_values())))`.
pub fn flag_specs<'a>(
    flags: impl IntoIterator<Item = (&'a str, Option<char>, bool)>,
) -> Vec<FlagSpec> {
    flags
        .into_iter()
        .map(|(long, short, takes_value)| FlagSpec {
            long: long.to_owned(),
            short,
            takes_value,
        })
        .collect()
}

/// `--config` for a clap parser: `impl WithConfigFile for Cli {}` gives it
/// both methods.
#[cfg(feature = "cli")]
pub trait WithConfigFile: clap::Parser {
    /// The arguments to parse for `argv`: with `--config PATH`, the file's
    /// settings go first, so that flags on the command line win.
    fn argv_with_config(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
        let command = Self::command();
        let flags =
            flag_specs(command.get_arguments().filter_map(|a| {
                Some((a.get_long()?, a.get_short(), a.get_action().takes_values()))
            }));
        merge_config_file(argv, &flags)
    }

    /// Parse the process's arguments and `--config` file; exit on an error
    /// (status 2, as clap does for a bad flag).
    fn parse_with_config() -> Self {
        match Self::argv_with_config(std::env::args_os().collect()) {
            Ok(argv) => Self::parse_from(argv),
            Err(e) => {
                eprintln!("{}: {e}", Self::command().get_name());
                std::process::exit(2);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config file {path}: cannot read it: {source}; check --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: unknown key `{key}`; keys are the long flag names of --help, without the dashes (e.g. `max-request-bytes`)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("config file {path}: key `{key}`: {message}")]
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("--config needs a path")]
    MissingPath,
}

/// The argument list to parse: `argv` with the config file's settings
/// inserted after the program name, when `argv` has `--config PATH`
/// (or `--config=PATH`). Without `--config`, `argv` unchanged.
pub fn merge_config_file(
    argv: Vec<OsString>,
    flags: &[FlagSpec],
) -> Result<Vec<OsString>, ConfigFileError> {
    let given = flags_on_command_line(&argv, flags)?;
    let Some(path) = given.config else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = file_args(&path, &text, flags, &given.longs)?;
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    let mut real = argv.into_iter();
    out.extend(real.next());
    out.extend(from_file);
    out.extend(real);
    Ok(out)
}

struct Given {
    longs: Vec<String>,
    config: Option<PathBuf>,
}

/// The long names of the flags present in `argv`, and the config path.
fn flags_on_command_line(argv: &[OsString], flags: &[FlagSpec]) -> Result<Given, ConfigFileError> {
    let mut given = Given {
        longs: Vec::new(),
        config: None,
    };
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let spec = flags.iter().find(|f| f.long == name);
            let takes_value = spec.is_some_and(|f| f.takes_value) || name == CONFIG_FLAG;
            let value = match (inline, takes_value) {
                (Some(v), _) => Some(OsString::from(v)),
                (None, true) => args.next().cloned(),
                (None, false) => None,
            };
            if name == CONFIG_FLAG {
                given.config = Some(value.ok_or(ConfigFileError::MissingPath)?.into());
            } else if spec.is_some() {
                given.longs.push(name.to_owned());
            }
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (i, c) in shorts.char_indices() {
                let Some(spec) = flags.iter().find(|f| f.short == Some(c)) else {
                    break;
                };
                given.longs.push(spec.long.clone());
                if spec.takes_value {
                    // The rest of the cluster, or the next argument, is its value.
                    if i + c.len_utf8() == shorts.len() {
                        args.next();
                    }
                    break;
                }
            }
        }
    }
    Ok(given)
}

/// The file's settings as `--key=value` arguments, leaving out the keys in
/// `overridden`.
fn file_args(
    path: &Path,
    text: &str,
    flags: &[FlagSpec],
    overridden: &[String],
) -> Result<Vec<OsString>, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
    let bad = |key: &str, message: String| ConfigFileError::BadValue {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        let Some(spec) = flags
            .iter()
            .find(|f| &f.long == key && f.long != CONFIG_FLAG)
        else {
            return Err(ConfigFileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
            });
        };
        if overridden.contains(key) {
            continue;
        }
        if !spec.takes_value {
            let times = match value {
                toml::Value::Boolean(b) => u32::from(*b),
                toml::Value::Integer(n) if (0..=16).contains(n) => *n as u32,
                _ => {
                    return Err(bad(
                        key,
                        "a switch: use true or false (or a count 0-16)".into(),
                    ))
                }
            };
            out.extend((0..times).map(|_| OsString::from(format!("--{key}"))));
            continue;
        }
        let items = match value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for item in items {
            let text = match item {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(
                        key,
                        format!(
                            "a {} cannot be a flag value; use a string, number or list",
                            other.type_str()
                        ),
                    ))
                }
            };
            out.push(OsString::from(format!("--{key}={text}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<FlagSpec> {
        let f = |long: &str, short, takes_value| FlagSpec {
            long: long.into(),
            short,
            takes_value,
        };
        vec![
            f("disk", None, true),
            f("port", None, true),
            f("urls", None, true),
            f("verbose", Some('v'), false),
            f("peer-url", Some('p'), true),
        ]
    }

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    fn run(file: &str, argv: &[&str]) -> Result<Vec<OsString>, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.toml");
        std::fs::write(&path, file).unwrap();
        let mut args: Vec<OsString> = vec!["prog".into(), "--config".into(), path.clone().into()];
        args.extend(argv.iter().map(OsString::from));
        merge_config_file(args, &flags())
    }

    #[test]
    fn file_values_come_before_the_real_arguments() {
        let out = run(
            "disk = \"/dev/x\"\nport = 8076\nverbose = true\n",
            &["--urls", "u"],
        )
        .unwrap();
        let out = strs(&out);
        assert_eq!(out[0], "prog");
        assert_eq!(&out[1..4], ["--disk=/dev/x", "--port=8076", "--verbose"]);
        assert_eq!(&out[4..5], ["--config"]);
        assert_eq!(&out[6..], ["--urls", "u"]);
    }

    #[test]
    fn flags_on_the_command_line_drop_the_key() {
        let out = run(
            "port = 1\nurls = [\"a\", \"b\"]\nverbose = 2\n",
            &["--port=2", "--urls", "c", "-v"],
        )
        .unwrap();
        let out = strs(&out);
        assert!(
            !out.iter()
                .any(|a| a.starts_with("--port=1") || *a == "--urls=a" || *a == "--verbose"),
            "{out:?}"
        );
    }

    #[test]
    fn lists_and_counts() {
        let out = run(
            "urls = [\"a\", \"b\"]\nverbose = 2\nfalse-is-nothing = 1\n",
            &[],
        );
        assert!(
            matches!(out, Err(ConfigFileError::UnknownKey { ref key, .. }) if key == "false-is-nothing")
        );
        let out = run("urls = [\"a\", \"b\"]\nverbose = 2\n", &[]).unwrap();
        assert_eq!(
            &strs(&out)[1..5],
            ["--urls=a", "--urls=b", "--verbose", "--verbose"]
        );
    }

    #[test]
    fn short_flag_value_is_not_taken_for_a_flag() {
        // `-p x=--disk` : the value of -p must not count as --disk given.
        let out = run("disk = \"/d\"\n", &["-p", "--disk"]).unwrap();
        assert!(strs(&out).contains(&"--disk=/d"));
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let e = run("dsik = \"/d\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`dsik`") && e.contains("vol.toml"), "{e}");
        let e = run("config = \"/other\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`config`"), "{e}");
        let e = run("port = { a = 1 }\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`port`"), "{e}");
        let e = run("verbose = \"yes\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`verbose`"), "{e}");
        let e = run("port = \n", &[]).unwrap_err().to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let e = merge_config_file(
            vec!["prog".into(), "--config=/nonexistent/x.toml".into()],
            &flags(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn without_config_argv_is_unchanged() {
        let argv: Vec<OsString> = vec!["prog".into(), "--port".into(), "1".into()];
        assert_eq!(merge_config_file(argv.clone(), &flags()).unwrap(), argv);
    }
}

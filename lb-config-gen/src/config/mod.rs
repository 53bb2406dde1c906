//! The TOML configuration file: a raw serde shape, its validation, and the typed result.
//!
//! Parsing happens in two steps so that an operator sees every mistake at once: the raw structs
//! (`deny_unknown_fields`, so a misspelt key is an error rather than silently ignored) accept
//! any strings and numbers, then [`RawConfig::validate`] checks every field and reports each
//! problem with its path (`services[1].bind: ...`). Only a [`Config`] that passed reaches the
//! model and the renderer, which is why they can format its values without quoting: every name
//! and path in it is restricted to characters HAProxy reads literally.

mod raw;
mod types;
mod validate;

use std::path::{Path, PathBuf};

pub use raw::{RawCheck, RawConfig, RawEtcd, RawHaproxy, RawPerNode, RawService, RawTimeouts};
pub use types::{
    Balance, Check, CheckKind, CheckPath, Config, EtcdDefaults, HaproxySettings, Mode, PerNode,
    SafePath, Service, ServiceName, Timeouts,
};

/// Largest accepted `capacity`; the registry's slots stop at 65,535 too.
pub const MAX_CAPACITY: u32 = 65_535;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (unknown key, wrong type).
    #[error("config file {path} is not valid: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but some values are unusable; every problem is listed.
    #[error("config file {path} has {} error(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One `field.path: what is wrong` line per problem.
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates TOML text (`path` is for messages only).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        raw.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// The service named `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&Service> {
        self.services.iter().find(|s| &s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(
            r#"
[[services]]
name = "rpc"
bind = "0.0.0.0:8080"
endpoint = "api"
"#,
        )
        .expect("valid");
        let s = &c.services[0];
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!(s.capacity, 16);
        assert_eq!(
            s.check.kind,
            CheckKind::HealthEndpoint(CheckPath::new("/readyz").expect("valid"))
        );
        assert_eq!(c.haproxy.hard_stop_after, Duration::from_secs(30));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = parse("[haproxy]\nconfg = \"/x\"\n").expect_err("typo must fail");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let e = parse(
            r#"
[haproxy]
config = "/etc/hap proxy.cfg"
hard_stop_after = "soon"

[[services]]
name = "bad name"
bind = "0.0.0.0:70000"
mode = "udp"
balance = "fastest"
endpoint = "a\nb"
capacity = 0
check = { type = "http", path = "/x\nstats enable" }
timeouts = { server = "1 fortnight" }
per_node = { bind_ip = "localhost", port_base = 65530 }

[[services]]
name = "b"
bind = "127.0.0.1:80"
endpoint = "api"

[[services]]
name = "b"
bind = "127.0.0.1:80"
endpoint = "api"
"#,
        )
        .expect_err("invalid");
        let ConfigError::Invalid { problems, .. } = e else {
            panic!("expected Invalid, got {e}");
        };
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        for want in [
            "haproxy.config",
            "haproxy.hard_stop_after",
            "services[0].name",
            "services[0].bind",
            "services[0].mode",
            "services[0].balance",
            "services[0].endpoint",
            "services[0].capacity",
            "services[0].check.path",
            "services[0].timeouts.server",
            "services[0].per_node.bind_ip",
            "services[2].name",
            "services[2].bind",
        ] {
            assert!(fields.contains(&want), "missing {want} in {problems:#?}");
        }
    }

    #[test]
    fn per_node_range_must_not_overlap_another_bind() {
        let e = parse(
            r#"
[[services]]
name = "a"
bind = "0.0.0.0:9005"
endpoint = "api"
capacity = 4

[[services]]
name = "b"
bind = "0.0.0.0:8000"
endpoint = "api"
capacity = 8
per_node = { port_base = 9000 }
"#,
        )
        .expect_err("overlap");
        assert!(e.to_string().contains("services[1].per_node"), "{e}");
    }
}

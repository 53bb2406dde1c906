//! The etcd flags shared by all three binaries (`#[command(flatten)]` an [`EtcdArgs`]).
//!
//! One definition keeps names, environment variables, defaults and help text identical across
//! `peerkeep`, `peerkeep-agent` and `lb-config-gen`, as DESIGN.md requires. Secrets never travel
//! on the command line: the password comes from a file named by `--etcd-password-file`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::connect::{Credentials, EtcdOptions, TlsFiles};
use crate::endpoint::AddressPolicy;
use crate::error::RegistryError;
use crate::keys::{DEFAULT_PREFIX, Keyspace};
use crate::names::ClusterName;

/// Where the registry is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Registry (etcd)")]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (http://host:port, or https://host:port with --etcd-ca).
    #[arg(
        long = "etcd-endpoints",
        env = "PEERKEEP_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        value_name = "URLS"
    )]
    pub etcd_endpoints: Vec<String>,

    /// Cluster name: one set of nodes under the prefix.
    #[arg(long, env = "PEERKEEP_CLUSTER", default_value = "default")]
    pub cluster: ClusterName,

    /// Key prefix under which all peerkeep data lives.
    #[arg(long, env = "PEERKEEP_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,

    /// Accept loopback addresses (127.0.0.0/8, ::1) in records; for tests and single-host demos.
    #[arg(
        long,
        env = "PEERKEEP_ALLOW_LOOPBACK",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_loopback: bool,

    /// PEM CA bundle that signed etcd's server certificate (enables TLS).
    #[arg(long, env = "PEERKEEP_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate, for etcd with --client-cert-auth (needs --etcd-key).
    #[arg(
        long,
        env = "PEERKEEP_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(
        long,
        env = "PEERKEEP_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,

    /// etcd user name, when etcd has auth enabled (needs --etcd-password-file).
    #[arg(
        long,
        env = "PEERKEEP_ETCD_USER",
        value_name = "NAME",
        requires = "etcd_password_file"
    )]
    pub etcd_user: Option<String>,

    /// File holding the etcd user's password (one line; a trailing newline is ignored).
    #[arg(
        long,
        env = "PEERKEEP_ETCD_PASSWORD_FILE",
        value_name = "FILE",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password_file: Option<PathBuf>,

    /// Time allowed to connect to one etcd endpoint (e.g. 3s, 500ms).
    #[arg(
        long,
        env = "PEERKEEP_ETCD_CONNECT_TIMEOUT",
        default_value = "3s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub etcd_connect_timeout: Duration,

    /// Time allowed for one etcd request (e.g. 5s).
    #[arg(
        long,
        env = "PEERKEEP_ETCD_REQUEST_TIMEOUT",
        default_value = "5s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub etcd_request_timeout: Duration,
}

impl EtcdArgs {
    /// Connection options; reads the password file.
    pub fn options(&self) -> Result<EtcdOptions, RegistryError> {
        let tls = (self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_key.is_some())
            .then(|| TlsFiles {
                ca: self.etcd_ca.clone(),
                cert: self.etcd_cert.clone(),
                key: self.etcd_key.clone(),
            });
        let auth = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(file)) => Some(Credentials {
                user: user.clone(),
                password: read_password(file)?,
            }),
            (None, None) => None,
            // clap's `requires` makes these unreachable from the command line; struct literals
            // built in code still get a clear message.
            (Some(_), None) => {
                return Err(RegistryError::BadOption {
                    flag: "--etcd-password-file",
                    reason: "--etcd-user needs a password file".to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(RegistryError::BadOption {
                    flag: "--etcd-user",
                    reason: "--etcd-password-file needs a user name".to_owned(),
                });
            }
        };
        Ok(EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            connect_timeout: self.etcd_connect_timeout,
            request_timeout: self.etcd_request_timeout,
            tls,
            auth,
            ..EtcdOptions::default()
        })
    }

    /// The keyspace of `--prefix` and `--cluster`.
    pub fn keyspace(&self) -> Result<Keyspace, RegistryError> {
        Ok(Keyspace::new(&self.prefix, self.cluster.clone())?)
    }

    /// The address policy (`--allow-loopback`).
    pub fn policy(&self) -> AddressPolicy {
        AddressPolicy {
            allow_loopback: self.allow_loopback,
        }
    }
}

/// Reads a password file: the first line, without its line ending.
fn read_password(path: &Path) -> Result<String, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::ReadFile {
        what: "etcd password",
        path: path.to_owned(),
        source,
    })?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        return Err(RegistryError::BadOption {
            flag: "--etcd-password-file",
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    fn parse(args: &[&str]) -> Result<EtcdArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bin").chain(args.iter().copied())).map(|c| c.etcd)
    }

    #[test]
    fn defaults_and_lists() {
        let a = parse(&[]).expect("defaults parse");
        assert_eq!(a.cluster.as_str(), "default");
        assert_eq!(a.prefix, DEFAULT_PREFIX);
        assert!(!a.policy().allow_loopback);
        let o = a.options().expect("options");
        assert_eq!(o.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(o.request_timeout, Duration::from_secs(5));
        assert!(o.tls.is_none() && o.auth.is_none());

        let a = parse(&[
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--etcd-request-timeout",
            "500ms",
            "--allow-loopback",
        ])
        .expect("parse");
        let o = a.options().expect("options");
        assert_eq!(o.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(o.request_timeout, Duration::from_millis(500));
        assert!(a.policy().allow_loopback);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse(&["--cluster", "bad name"]).is_err());
        assert!(parse(&["--etcd-connect-timeout", "soon"]).is_err());
        assert!(
            parse(&["--etcd-user", "u"]).is_err(),
            "user without password file"
        );
        assert!(
            parse(&["--etcd-cert", "c.pem"]).is_err(),
            "cert without key"
        );
        let a = parse(&["--prefix", "no-slash"]).expect("parse");
        assert!(a.keyspace().is_err());
    }

    #[test]
    fn password_file_is_read_and_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("peerkeep-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let path = file.to_str().expect("utf-8 temp path");
        let a = parse(&["--etcd-user", "u", "--etcd-password-file", path]).expect("parse");
        let creds = a.options().expect("options").auth.expect("credentials");
        assert_eq!(
            (creds.user.as_str(), creds.password.as_str()),
            ("u", "s3cret")
        );
        assert!(!format!("{creds:?}").contains("s3cret"));

        let missing = dir.join("missing");
        let a = parse(&[
            "--etcd-user",
            "u",
            "--etcd-password-file",
            missing.to_str().expect("utf-8"),
        ])
        .expect("parse");
        let err = a.options().expect_err("missing file");
        assert!(err.to_string().contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

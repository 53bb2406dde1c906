//! Choosing and building an adapter: the `--adapter`/`--node-api*` flags, the plain
//! [`AdapterConfig`] they produce, and [`build`], which checks that the combination makes sense
//! (an API URL, the credentials the adapter needs) before anything runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use url::Url;

use super::NodeAdapter;
use super::http::{Auth, CookieAuth, HttpApi, Secret, read_secret_file};

/// Environment variable holding the bearer token itself (alternative to the token file).
pub const TOKEN_ENV: &str = "PEERKEEP_NODE_API_TOKEN";
/// Environment variable holding the basic-auth password itself (alternative to the file).
pub const PASSWORD_ENV: &str = "PEERKEEP_NODE_API_PASSWORD";

/// Which API family the daemon speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterKind {
    /// Wavelet's HTTP API (also devnode).
    Wavelet,
    /// Bitcoin Core JSON-RPC (bitcoind, litecoind and other forks).
    Bitcoind,
    /// EOSIO nodeos net and chain API.
    Nodeos,
    /// geth's JSON-RPC with the admin API enabled.
    Geth,
    /// Any HTTP API described by a TOML template (`--node-api-template`).
    HttpTemplate,
    /// No node API: registration and health only.
    None,
}

impl AdapterKind {
    /// The flag value, e.g. `http-template`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterKind::Wavelet => "wavelet",
            AdapterKind::Bitcoind => "bitcoind",
            AdapterKind::Nodeos => "nodeos",
            AdapterKind::Geth => "geth",
            AdapterKind::HttpTemplate => "http-template",
            AdapterKind::None => "none",
        }
    }
}

impl std::fmt::Display for AdapterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Adapter flags, flattened into the agent's `run` command.
#[derive(Debug, Clone, clap::Args)]
pub struct AdapterArgs {
    /// Which API the node daemon speaks.
    #[arg(long, env = "PEERKEEP_ADAPTER", value_enum, default_value_t = AdapterKind::None)]
    pub adapter: AdapterKind,

    /// Root URL of the daemon's API, e.g. http://127.0.0.1:9000 (Wavelet) or
    /// http://127.0.0.1:9332 (litecoind RPC). Required unless --adapter none.
    #[arg(long, env = "PEERKEEP_NODE_API", value_name = "URL")]
    pub node_api: Option<Url>,

    /// File holding the API bearer token (wavelet, http-template). The token itself may
    /// instead be given in PEERKEEP_NODE_API_TOKEN; never on the command line.
    #[arg(long, env = "PEERKEEP_NODE_API_TOKEN_FILE", value_name = "PATH")]
    pub node_api_token_file: Option<PathBuf>,

    /// User name for HTTP basic auth (bitcoind -rpcuser, geth behind a proxy, ...).
    #[arg(long, env = "PEERKEEP_NODE_API_USER", value_name = "USER")]
    pub node_api_user: Option<String>,

    /// File holding the basic-auth password for --node-api-user. The password itself may
    /// instead be given in PEERKEEP_NODE_API_PASSWORD; never on the command line.
    #[arg(long, env = "PEERKEEP_NODE_API_PASSWORD_FILE", value_name = "PATH")]
    pub node_api_password_file: Option<PathBuf>,

    /// Bitcoin Core cookie file (DATADIR/[regtest/].cookie); re-read whenever the daemon
    /// answers 401, since it is rewritten on every daemon start.
    #[arg(long, env = "PEERKEEP_NODE_API_COOKIE_FILE", value_name = "PATH")]
    pub node_api_cookie_file: Option<PathBuf>,

    /// TOML file describing the API (--adapter http-template).
    #[arg(long, env = "PEERKEEP_NODE_API_TEMPLATE", value_name = "PATH")]
    pub node_api_template: Option<PathBuf>,

    /// Timeout for each call to the node API.
    #[arg(long, env = "PEERKEEP_NODE_API_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    pub node_api_timeout: Duration,
}

impl AdapterArgs {
    /// The plain configuration these flags describe, with the secrets-by-environment read.
    pub fn to_config(&self) -> AdapterConfig {
        AdapterConfig {
            kind: self.adapter,
            node_api: self.node_api.clone(),
            token_file: self.node_api_token_file.clone(),
            token: std::env::var(TOKEN_ENV).ok().map(Secret::new),
            user: self.node_api_user.clone(),
            password_file: self.node_api_password_file.clone(),
            password: std::env::var(PASSWORD_ENV).ok().map(Secret::new),
            cookie_file: self.node_api_cookie_file.clone(),
            template_file: self.node_api_template.clone(),
            timeout: self.node_api_timeout,
        }
    }
}

/// Everything needed to build an adapter.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    /// Which adapter.
    pub kind: AdapterKind,
    /// The API root URL (required unless `kind` is `None`).
    pub node_api: Option<Url>,
    /// Bearer token file.
    pub token_file: Option<PathBuf>,
    /// Bearer token given directly (from the environment).
    pub token: Option<Secret>,
    /// Basic-auth user.
    pub user: Option<String>,
    /// Basic-auth password file.
    pub password_file: Option<PathBuf>,
    /// Basic-auth password given directly (from the environment).
    pub password: Option<Secret>,
    /// Bitcoin Core cookie file.
    pub cookie_file: Option<PathBuf>,
    /// http-template TOML file.
    pub template_file: Option<PathBuf>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl AdapterConfig {
    /// A config for `kind` at `node_api` with no credentials and a 5 s timeout.
    pub fn new(kind: AdapterKind, node_api: Option<Url>) -> Self {
        Self {
            kind,
            node_api,
            token_file: None,
            token: None,
            user: None,
            password_file: None,
            password: None,
            cookie_file: None,
            template_file: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A configuration that cannot work. The agent exits with the "config invalid" code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--node-api` for an adapter that needs one.
    #[error("--adapter {kind} needs --node-api URL (PEERKEEP_NODE_API)")]
    MissingNodeApi {
        /// The adapter.
        kind: AdapterKind,
    },
    /// `--node-api` is not http(s).
    #[error("--node-api {url}: only http:// and https:// URLs are supported")]
    BadScheme {
        /// The URL.
        url: Url,
    },
    /// A required credential is missing.
    #[error("--adapter {kind} needs {what}")]
    MissingCredential {
        /// The adapter.
        kind: AdapterKind,
        /// Which flags provide it.
        what: &'static str,
    },
    /// Two ways of authenticating were given.
    #[error("conflicting node API credentials: {0}; give only one")]
    ConflictingAuth(&'static str),
    /// A secret file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A secret file is empty.
    #[error("{path} is empty")]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
    /// The template file is missing, unreadable or invalid.
    #[error("--node-api-template {path}: {problems}")]
    Template {
        /// The file.
        path: PathBuf,
        /// Every problem found, `; `-separated.
        problems: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Builds the adapter `config` describes.
pub fn build(config: &AdapterConfig) -> Result<Arc<dyn NodeAdapter>, ConfigError> {
    use super::{bitcoind, geth, nodeos, none, template, wavelet};
    let kind = config.kind;
    if kind == AdapterKind::None {
        return Ok(Arc::new(none::NoneAdapter));
    }
    let url = config
        .node_api
        .clone()
        .ok_or(ConfigError::MissingNodeApi { kind })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::BadScheme { url });
    }
    let auth = auth(config)?;
    if kind == AdapterKind::Wavelet && !matches!(auth, Auth::Bearer(_)) {
        // Wavelet without a secret falls back to a public constant: refuse to pretend.
        return Err(ConfigError::MissingCredential {
            kind,
            what: "--node-api-token-file or PEERKEEP_NODE_API_TOKEN (Wavelet's API secret)",
        });
    }
    let api = HttpApi::new(url, auth, config.timeout)?;
    Ok(match kind {
        AdapterKind::Wavelet => Arc::new(wavelet::WaveletAdapter::new(api)),
        AdapterKind::Bitcoind => Arc::new(bitcoind::BitcoindAdapter::new(api)),
        AdapterKind::Nodeos => Arc::new(nodeos::NodeosAdapter::new(api)),
        AdapterKind::Geth => Arc::new(geth::GethAdapter::new(api)),
        AdapterKind::HttpTemplate => {
            let path = config
                .template_file
                .as_deref()
                .ok_or(ConfigError::MissingCredential {
                    kind,
                    what: "--node-api-template FILE",
                })?;
            Arc::new(template::TemplateAdapter::new(
                api,
                template::Template::load(path)?,
            ))
        }
        AdapterKind::None => Arc::new(none::NoneAdapter),
    })
}

fn auth(config: &AdapterConfig) -> Result<Auth, ConfigError> {
    let token = match (&config.token_file, &config.token) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::ConflictingAuth(
                "--node-api-token-file and PEERKEEP_NODE_API_TOKEN",
            ));
        }
        (Some(path), None) => Some(read_secret_file(path)?),
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    };
    let password = match (&config.password_file, &config.password) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::ConflictingAuth(
                "--node-api-password-file and PEERKEEP_NODE_API_PASSWORD",
            ));
        }
        (Some(path), None) => Some(read_secret_file(path)?),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    };
    let kind = config.kind;
    match (token, &config.user, password, &config.cookie_file) {
        (None, None, None, None) => Ok(Auth::None),
        (Some(t), None, None, None) => Ok(Auth::Bearer(t)),
        (None, Some(user), Some(password), None) => Ok(Auth::Basic {
            user: user.clone(),
            password,
        }),
        (None, Some(_), None, None) => Err(ConfigError::MissingCredential {
            kind,
            what: "--node-api-password-file (or PEERKEEP_NODE_API_PASSWORD) with --node-api-user",
        }),
        (None, None, Some(_), None) => Err(ConfigError::MissingCredential {
            kind,
            what: "--node-api-user with the password",
        }),
        (None, None, None, Some(path)) => Ok(Auth::Cookie(CookieAuth::new(path.clone()))),
        _ => Err(ConfigError::ConflictingAuth(
            "a token, a user/password and a cookie file are alternatives",
        )),
    }
}

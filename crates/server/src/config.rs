//! Configuration: `config/default.toml` (embedded) < the file given by `--config` <
//! `BROADCAST_*` environment variables (`BROADCAST_STORE__URL=…`; `__` separates levels).
//!
//! Every section refuses unknown keys, and [`Settings::validate`] checks everything that can
//! be checked before anything runs (cron expressions, templates, URLs, the watchlist, the
//! email set-up), so a bad config is one clear error naming the key.

use anyhow::{Context, Result, bail};
use broadcast_collect::FeedConfig;
use broadcast_distribute::email::EmailSettings;
use broadcast_distribute::webhook::WebhookSettings;
use broadcast_triage::{Rules, Tuning, Watchlist};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default configuration, every key commented.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub store: StoreSettings,
    pub roles: Roles,
    pub api: ApiSettings,
    pub security: SecuritySettings,
    pub bulletins: BulletinSettings,
    pub email: EmailSettings,
    pub webhook: WebhookSettings,
    pub delivery: DeliverySettings,
    pub collect: CollectSettings,
    pub triage: TriageSettings,
    #[serde(default)]
    pub feeds: Vec<FeedConfig>,
    /// A seed file (organisations, contacts, endpoints, analysts) applied at start-up.
    #[serde(default)]
    pub seed_file: Option<String>,
    /// The working directory at start-up; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://PATH` (embedded) or `postgres://USER@HOST/DB`.
    pub url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub api: bool,
    pub collector: bool,
    pub worker: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: String,
    /// The address recipients use to reach this server (unsubscribe links, bulletin links).
    pub public_url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Key for signing unsubscribe links.
    pub link_secret: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulletinSettings {
    pub reference_prefix: String,
    pub templates_dir: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub batch_size: i64,
    pub concurrency: usize,
    /// Most webhook requests in flight to one host, and to one endpoint.
    pub per_host_concurrency: usize,
    pub per_endpoint_concurrency: usize,
    /// An email address is suppressed after this many hard bounces (SMTP 5xx) in 30 days.
    pub suppress_after_hard_bounces: i64,
    /// A webhook endpoint failing this many attempts in a row: its organisation is warned.
    pub warn_endpoint_after_failures: u32,
    /// A webhook endpoint failing continuously this long (and at least
    /// `warn_endpoint_after_failures` times) is disabled and its organisation told.
    pub disable_endpoint_after_secs: u64,
    /// A disable notice that reached nobody (SMTP down) is tried again after this long; it
    /// is owed in the store, so restarts do not lose it.
    pub notice_retry_secs: u64,
    pub lease_secs: u64,
    pub poll_interval_ms: u64,
    /// Delays before attempts 2, 3, …; after the last the delivery fails.
    pub retry_delays_secs: Vec<u64>,
    pub retry_jitter: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSettings {
    pub timeout_secs: u64,
    pub connect_timeout_secs: u64,
    pub max_body_bytes: usize,
    /// Up to this many seconds are added to each scheduled run.
    pub jitter_secs: u64,
    /// After a failure a feed waits at least this long, doubling per further failure…
    pub backoff_secs: u64,
    /// …up to this.
    pub max_backoff_secs: u64,
    /// A node running a feed holds a lease this long, renewed while it runs; another node
    /// takes the feed over once a dead node's lease has run out.
    pub lease_secs: u64,
}

impl CollectSettings {
    pub fn pacing(&self) -> broadcast_collect::Pacing {
        let secs = |s: u64| chrono::Duration::seconds(s as i64);
        broadcast_collect::Pacing {
            jitter: secs(self.jitter_secs),
            backoff: secs(self.backoff_secs),
            max_backoff: secs(self.max_backoff_secs),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriageSettings {
    /// The watchlist file (vendors, products, keywords); see `config/watchlist.toml`.
    pub watchlist_file: String,
    pub relevance_threshold: f64,
    pub old_after_days: i64,
    /// Storm control: this many candidates for one vendor/product within the window
    /// become one grouped candidate.
    pub storm_min_burst: usize,
    pub storm_window_minutes: i64,
}

/// The environment variables that are configuration: `BROADCAST_<SECTION>__<KEY>` and
/// `BROADCAST_SEED_FILE`. Other `BROADCAST_*` variables (`BROADCAST_CONFIG`, which names the
/// file, or a test harness's own) are not keys and must not be refused as unknown ones.
fn config_env(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(k, _)| {
        k.strip_prefix("BROADCAST_").is_some_and(|rest| rest.contains("__") || rest == "SEED_FILE")
    })
    .collect()
}

impl Settings {
    /// Loads the layered configuration. `file` is the operator's file, if any.
    pub fn load(file: Option<&Path>) -> Result<Settings> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let base_dir = std::env::current_dir().context("cannot read the current directory")?;
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BROADCAST")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(config_env(std::env::vars()))),
        );
        let raw = builder.build().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let mut s: Settings = raw.try_deserialize().map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        s.base_dir = base_dir;
        Ok(s)
    }

    /// Resolves a path from config: absolute as is, relative to the working directory.
    pub fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    /// The email settings with relative paths (`file_dir`, the DKIM key file) resolved.
    pub fn email_settings(&self) -> EmailSettings {
        let mut s = self.email.clone();
        if let Some(dir) = &s.file_dir {
            s.file_dir = Some(self.path(dir).display().to_string());
        }
        if let Some(d) = s.dkim.as_mut()
            && let Some(f) = &d.private_key_file
        {
            d.private_key_file = Some(self.path(f).display().to_string());
        }
        s
    }

    /// The store URL with a relative SQLite path made absolute.
    pub fn store_url(&self) -> String {
        let url = &self.store.url;
        if let Some(rest) = url.strip_prefix("sqlite://")
            && !rest.starts_with('/')
            && !rest.starts_with(':')
        {
            let (path, query) = rest.split_once('?').map(|(p, q)| (p, Some(q))).unwrap_or((rest, None));
            let full = self.path(path).display().to_string();
            return match query {
                Some(q) => format!("sqlite://{full}?{q}"),
                None => format!("sqlite://{full}"),
            };
        }
        url.clone()
    }

    /// Reads and compiles the watchlist named by `triage.watchlist_file`.
    pub fn triage_rules(&self) -> Result<Rules> {
        let path = self.path(&self.triage.watchlist_file);
        let w = self.watchlist()?;
        let tuning = Tuning {
            relevance_threshold: self.triage.relevance_threshold,
            old_after_days: self.triage.old_after_days,
        };
        Rules::new(&w, tuning).map_err(|e| anyhow::anyhow!("triage.watchlist_file: {}: {e}", path.display()))
    }

    /// Reads the watchlist file.
    pub fn watchlist(&self) -> Result<Watchlist> {
        let path = self.path(&self.triage.watchlist_file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("triage.watchlist_file: cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("triage.watchlist_file: {}: {e}", path.display()))
    }

    pub fn retry_policy(&self) -> broadcast_distribute::retry::RetryPolicy {
        broadcast_distribute::retry::RetryPolicy {
            delays: self
                .delivery
                .retry_delays_secs
                .iter()
                .map(|s| std::time::Duration::from_secs(*s))
                .collect(),
            jitter: self.delivery.retry_jitter,
        }
    }

    /// Checks everything that can be checked without the network or the database.
    pub fn validate(&self) -> Result<()> {
        let url = &self.store.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("store.url: `{url}` must start with sqlite:// or postgres://");
        }
        if !(self.roles.api || self.roles.collector || self.roles.worker) {
            bail!("roles: at least one of api, collector and worker must be true");
        }
        self.api
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("api.listen: `{}` is not host:port: {e}", self.api.listen))?;
        let public = url::Url::parse(&self.api.public_url)
            .map_err(|e| anyhow::anyhow!("api.public_url: `{}` is not a URL: {e}", self.api.public_url))?;
        if !matches!(public.scheme(), "http" | "https") {
            bail!("api.public_url: `{}` must be http(s)", self.api.public_url);
        }
        if self.security.link_secret.len() < 32 {
            bail!(
                "security.link_secret: set a random string of at least 32 characters (it signs unsubscribe links)"
            );
        }
        let p = &self.bulletins.reference_prefix;
        if p.is_empty() || p.len() > 10 || !p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            bail!("bulletins.reference_prefix: `{p}` must be 1–10 capital letters or digits");
        }
        let renderer =
            broadcast_distribute::render::Renderer::from_dir(self.path(&self.bulletins.templates_dir))
                .map_err(|e| anyhow::anyhow!("bulletins.templates_dir: {e}"))?;
        renderer.self_check().map_err(|e| anyhow::anyhow!("bulletins.templates_dir: {e}"))?;
        if self.delivery.batch_size < 1 || self.delivery.concurrency < 1 {
            bail!("delivery.batch_size and delivery.concurrency must be at least 1");
        }
        if let Some(d) = &self.email_settings().dkim {
            broadcast_distribute::email::check_dkim(d).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if let Some(k) = &self.webhook.signing_key {
            broadcast_distribute::sign::AsymmetricKey::parse(k)
                .map_err(|e| anyhow::anyhow!("webhook.signing_key: {e}"))?;
        }
        if self.delivery.warn_endpoint_after_failures < 1 {
            bail!("delivery.warn_endpoint_after_failures must be at least 1");
        }
        if self.delivery.suppress_after_hard_bounces < 1 {
            bail!("delivery.suppress_after_hard_bounces must be at least 1");
        }
        if self.delivery.per_host_concurrency < 1 || self.delivery.per_endpoint_concurrency < 1 {
            bail!("delivery.per_host_concurrency and delivery.per_endpoint_concurrency must be at least 1");
        }
        if self.delivery.lease_secs < 5 {
            bail!("delivery.lease_secs: must be at least 5");
        }
        if !(0.0..=1.0).contains(&self.delivery.retry_jitter) {
            bail!("delivery.retry_jitter: must be between 0 and 1");
        }
        if self.collect.max_body_bytes < 1024 {
            bail!("collect.max_body_bytes: must be at least 1024");
        }
        self.triage_rules()?;
        broadcast_distribute::ssrf::AddressPolicy::new(&self.webhook.allow_networks)
            .map_err(anyhow::Error::msg)?;
        if self.triage.storm_min_burst < 2 || self.triage.storm_window_minutes < 1 {
            bail!("triage.storm_min_burst must be at least 2 and triage.storm_window_minutes at least 1");
        }
        let mut ids = std::collections::HashSet::new();
        for f in &self.feeds {
            f.build().map_err(|e| anyhow::anyhow!("feeds: {e}"))?;
            if !ids.insert(f.id().to_owned()) {
                bail!("feeds: id `{}` is used twice", f.id());
            }
        }
        if let Some(seed) = &self.seed_file
            && !self.path(seed).is_file()
        {
            bail!("seed_file: {} does not exist", self.path(seed).display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sectioned_variables_are_configuration() {
        let vars = [
            ("BROADCAST_STORE__URL", "postgres://db/b"),
            ("BROADCAST_CONFIG", "/etc/broadcast.toml"),
            ("BROADCAST_TEST_POSTGRES_URL", "postgres://x"),
            ("BROADCAST_SEED_FILE", "seed.toml"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let got = config_env(vars.into_iter());
        let mut keys: Vec<&String> = got.keys().collect();
        keys.sort();
        assert_eq!(keys, ["BROADCAST_SEED_FILE", "BROADCAST_STORE__URL"]);
    }

    #[test]
    fn the_embedded_defaults_load_and_name_what_is_missing() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.store.url, "sqlite://broadcast.db");
        assert!(s.feeds.iter().any(|f| f.id() == "cisa-ics-medical"));
        // Shipped without a link secret on purpose: the operator must set one.
        let err = s.validate().unwrap_err().to_string();
        assert!(err.starts_with("security.link_secret"), "{err}");
    }
}

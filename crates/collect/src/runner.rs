//! The one place feeds touch the network (or the file system, for `file://` sources).

use crate::{Feed, FeedRequest, ParseError, Parsed};
use std::time::Duration;

/// Limits that apply to every feed.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Whole-request timeout, including reading the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest body accepted, after decompression.
    pub max_body_bytes: usize,
    /// Most pages followed in one run of a paged feed.
    pub max_pages: usize,
    pub user_agent: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_body_bytes: 20 * 1024 * 1024,
            max_pages: 100,
            user_agent: concat!("Broadcast/", env!("CARGO_PKG_VERSION"), " (threat-bulletin collector)")
                .into(),
        }
    }
}

/// HTTP validators from the last successful fetch, for conditional GET.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What one run of a feed produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per feed run; boxing buys nothing
pub enum FetchOutcome {
    /// The source answered 304 (or the file is unchanged): nothing new.
    NotModified,
    Fetched {
        parsed: Parsed,
        validators: Validators,
        bytes: usize,
        pages: usize,
        /// An incremental feed's new cursor (None: keep the old one).
        cursor: Option<String>,
        /// Items the feed knows are still to fetch (a backfill in steps).
        remaining: usize,
    },
}

/// Why a run failed. Every variant names the URL; nothing from a failed run is stored.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {error}")]
    Network { url: String, error: String },
    #[error("{url}: body larger than the {limit}-byte limit")]
    TooLarge { url: String, limit: usize },
    #[error("{url}: {error}")]
    Parse { url: String, error: ParseError },
    #[error("{url}: cannot read file: {error}")]
    File { url: String, error: String },
    #[error("{url}: more than {limit} pages in one run")]
    TooManyPages { url: String, limit: usize },
}

/// Runs feeds: builds one HTTP client and applies the same limits to every source.
pub struct Runner {
    client: reqwest::Client,
    cfg: RunnerConfig,
}

impl Runner {
    /// Needs a rustls crypto provider installed (the binary installs ring at start-up).
    pub fn new(cfg: RunnerConfig) -> Result<Runner, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(cfg.user_agent.clone())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(Runner { client, cfg })
    }

    /// Fetches and parses a feed, following its pages. `validators` from the previous run
    /// make the first request conditional.
    pub async fn run(&self, feed: &dyn Feed, validators: &Validators) -> Result<FetchOutcome, FetchError> {
        let mut req = feed.request();
        let mut all = Parsed::default();
        let mut new_validators = Validators::default();
        let mut bytes = 0;
        let mut pages = 0;
        loop {
            pages += 1;
            if pages > self.cfg.max_pages {
                return Err(FetchError::TooManyPages { url: req.url.to_string(), limit: self.cfg.max_pages });
            }
            let conditional = if pages == 1 { Some(validators) } else { None };
            let Some((body, v)) = self.fetch(&req, conditional).await? else {
                return Ok(FetchOutcome::NotModified);
            };
            if pages == 1 {
                new_validators = v;
            }
            bytes += body.len();
            let parsed =
                feed.parse(&body).map_err(|error| FetchError::Parse { url: req.url.to_string(), error })?;
            all.items.extend(parsed.items);
            all.refused.extend(parsed.refused);
            all.kev.extend(parsed.kev);
            match parsed.next {
                Some(next) => req = next,
                None => break,
            }
        }
        Ok(FetchOutcome::Fetched {
            parsed: all,
            validators: new_validators,
            bytes,
            pages,
            cursor: None,
            remaining: 0,
        })
    }

    /// One request with this runner's limits. `None` means not modified.
    pub async fn fetch(
        &self,
        req: &FeedRequest,
        validators: Option<&Validators>,
    ) -> Result<Option<(Vec<u8>, Validators)>, FetchError> {
        let url = req.url.to_string();
        if req.url.scheme() == "file" {
            return self.read_file(req, validators).await;
        }
        let mut builder = self.client.get(req.url.clone());
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                builder = builder.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &v.last_modified {
                builder = builder.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let mut resp = builder
            .send()
            .await
            .map_err(|e| FetchError::Network { url: url.clone(), error: describe(&e) })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(FetchError::Status { url, status: status.as_u16() });
        }
        let header = |name: reqwest::header::HeaderName| {
            resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let got = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        };
        let limit = self.cfg.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge { url, limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            resp.chunk().await.map_err(|e| FetchError::Network { url: url.clone(), error: describe(&e) })?
        {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { url, limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((body, got)))
    }

    /// `file://` sources, for offline demos and recorded data. The file's modification time
    /// stands in for Last-Modified, so an unchanged file is not re-parsed.
    async fn read_file(
        &self,
        req: &FeedRequest,
        validators: Option<&Validators>,
    ) -> Result<Option<(Vec<u8>, Validators)>, FetchError> {
        let url = req.url.to_string();
        let err = |e: String| FetchError::File { url: url.clone(), error: e };
        let path = req.url.to_file_path().map_err(|_| err("not a local path".into()))?;
        let meta = tokio::fs::metadata(&path).await.map_err(|e| err(e.to_string()))?;
        if meta.len() > self.cfg.max_body_bytes as u64 {
            return Err(FetchError::TooLarge { url, limit: self.cfg.max_body_bytes });
        }
        let stamp = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| format!("mtime:{}.{:09}:{}", d.as_secs(), d.subsec_nanos(), meta.len()));
        if stamp.is_some() && validators.is_some_and(|v| v.last_modified == stamp) {
            return Ok(None);
        }
        let body = tokio::fs::read(&path).await.map_err(|e| err(e.to_string()))?;
        Ok(Some((body, Validators { etag: None, last_modified: stamp })))
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); include it.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out: {}", broadcast_core::error_chain(e))
    } else {
        broadcast_core::error_chain(e)
    }
}

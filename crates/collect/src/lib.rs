//! # broadcast-collect
//!
//! Feeds. A [`Feed`] describes the request for a source and parses a body into advisories;
//! it never does I/O. The [`Runner`] does all the network work for every feed: timeouts, a
//! body-size cap, conditional GET with ETag / Last-Modified, paging, and `file://` sources
//! for offline use.
//!
//! Feeds are chosen by a tagged enum in config ([`FeedConfig`], `type = "rss"`) with one
//! `build()` match, so adding a feed type is one module and one match arm.
//!
//! ```
//! use broadcast_collect::{Feed, FeedConfig, Source};
//! let cfg: FeedConfig = toml::from_str(r#"
//!     type = "rss"
//!     id = "ncsc"
//!     url = "https://www.ncsc.gov.uk/api/1/services/v1/report-rss-feed.xml"
//!     schedule = "0 */15 * * * *"
//! "#).unwrap();
//! let Source::Feed(feed) = cfg.build().unwrap() else { unreachable!() };
//! let parsed = feed.parse(br#"<rss version="2.0"><channel><title>t</title>
//!     <item><title>CVE-2026-0001 in Widget</title><guid>a1</guid></item></channel></rss>"#).unwrap();
//! assert_eq!(parsed.items[0].cves, vec!["CVE-2026-0001"]);
//! ```
#![forbid(unsafe_code)]

pub mod feeds;
mod runner;
pub mod text;

use broadcast_core::AdvisoryContent;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::str::FromStr;

pub use runner::{FetchError, FetchOutcome, Runner, RunnerConfig, Validators};

/// A request a feed wants made. The runner adds conditional headers and limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedRequest {
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
}

/// What a feed made of one body.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// Items that passed validation.
    pub items: Vec<AdvisoryContent>,
    /// Items skipped, each with the reason (the rest of the body is still used).
    pub refused: Vec<String>,
    /// The next page to fetch, for paged APIs.
    pub next: Option<FeedRequest>,
    /// Known-exploited listings (the KEV catalog): applied to every advisory naming the CVE,
    /// now and when one arrives later.
    pub kev: Vec<broadcast_core::KevEntry>,
}

/// A body that could not be read as this feed's format. Nothing from it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// One source of advisories: pure request-building and parsing.
pub trait Feed: Send + Sync {
    /// The feed id from config; it becomes the `source` of every advisory.
    fn id(&self) -> &str;
    /// The first request of a collection run.
    fn request(&self) -> FeedRequest;
    /// Parses one response body.
    fn parse(&self, body: &[u8]) -> Result<Parsed, ParseError>;
}

/// A feed as configured. `type` selects the kind; unknown keys are refused.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedConfig {
    /// RSS 0.9x/1.0/2.0, Atom or JSON Feed.
    Rss(feeds::rss::RssConfig),
    /// CISA's Known Exploited Vulnerabilities catalog (JSON).
    Kev(feeds::kev::KevConfig),
    /// A CSAF 2.0 provider: provider-metadata.json, a ROLIE feed, or a directory.
    Csaf(feeds::csaf_provider::CsafConfig),
    /// The NVD CVE API 2.0, incrementally by last-modified windows.
    Nvd(feeds::nvd::NvdConfig),
}

/// A built feed: a one-request (or paged) [`Feed`], or a CSAF provider that lists and then
/// fetches documents.
pub enum Source {
    Feed(Box<dyn Feed>),
    Csaf(feeds::csaf_provider::CsafProvider),
    Nvd(feeds::nvd::NvdFeed),
}

impl Source {
    pub fn id(&self) -> &str {
        match self {
            Source::Feed(f) => f.id(),
            Source::Csaf(p) => p.id(),
            Source::Nvd(n) => n.id(),
        }
    }

    /// One run. `cursor` is where an incremental feed got to; `progress(done, total)`
    /// reports a long run's documents.
    pub async fn run(
        &self,
        runner: &Runner,
        validators: &Validators,
        cursor: Option<&str>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<FetchOutcome, FetchError> {
        match self {
            Source::Feed(f) => runner.run(f.as_ref(), validators).await,
            Source::Csaf(p) => Ok(match p.run(runner, validators, cursor, progress).await? {
                None => FetchOutcome::NotModified,
                Some(r) => FetchOutcome::Fetched {
                    parsed: r.parsed,
                    validators: r.validators,
                    bytes: r.bytes,
                    pages: 1 + r.fetched,
                    cursor: r.cursor,
                    remaining: r.remaining,
                },
            }),
            Source::Nvd(n) => {
                let r = n.run_with(runner, cursor, Utc::now(), progress).await?;
                Ok(FetchOutcome::Fetched {
                    parsed: r.parsed,
                    validators: Validators::default(),
                    bytes: r.bytes,
                    pages: r.requests,
                    cursor: r.cursor,
                    remaining: r.remaining_windows,
                })
            }
        }
    }
}

/// A feed's `url`: parsed, and of a scheme the feed may use (`file://` for recorded data
/// where `allow_file`).
pub(crate) fn feed_url(feed: &str, raw: &str, allow_file: bool) -> Result<url::Url, ConfigError> {
    let err = |why: String| ConfigError { feed: feed.to_owned(), key: "url", why };
    let url = url::Url::parse(raw).map_err(|e| err(format!("`{raw}` is not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        "file" if allow_file => Ok(url),
        _ if allow_file => Err(err(format!("`{raw}` must be http(s):// or file://"))),
        _ => Err(err(format!("`{raw}` must be http(s)://"))),
    }
}

/// serde default for `enabled`.
pub(crate) fn yes() -> bool {
    true
}

/// A configuration that cannot work, naming the feed and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feed `{feed}`: {key}: {why}")]
pub struct ConfigError {
    pub feed: String,
    pub key: &'static str,
    pub why: String,
}

impl FeedConfig {
    pub fn id(&self) -> &str {
        match self {
            FeedConfig::Rss(c) => &c.id,
            FeedConfig::Kev(c) => &c.id,
            FeedConfig::Csaf(c) => &c.id,
            FeedConfig::Nvd(c) => &c.id,
        }
    }

    pub fn schedule_expr(&self) -> &str {
        match self {
            FeedConfig::Rss(c) => &c.schedule,
            FeedConfig::Kev(c) => &c.schedule,
            FeedConfig::Csaf(c) => &c.schedule,
            FeedConfig::Nvd(c) => &c.schedule,
        }
    }

    pub fn enabled(&self) -> bool {
        match self {
            FeedConfig::Rss(c) => c.enabled,
            FeedConfig::Kev(c) => c.enabled,
            FeedConfig::Csaf(c) => c.enabled,
            FeedConfig::Nvd(c) => c.enabled,
        }
    }

    /// The source URL (`file:` URLs may be relative to the working directory).
    pub fn url_mut(&mut self) -> &mut String {
        match self {
            FeedConfig::Rss(c) => &mut c.url,
            FeedConfig::Kev(c) => &mut c.url,
            FeedConfig::Csaf(c) => &mut c.url,
            FeedConfig::Nvd(c) => &mut c.url,
        }
    }

    /// Parses the cron schedule (seconds first: `sec min hour day month weekday [year]`).
    pub fn schedule(&self) -> Result<cron::Schedule, ConfigError> {
        cron::Schedule::from_str(self.schedule_expr()).map_err(|e| ConfigError {
            feed: self.id().to_owned(),
            key: "schedule",
            why: format!(
                "`{}` is not a cron expression (sec min hour day month weekday): {e}",
                self.schedule_expr()
            ),
        })
    }

    /// Checks everything about the feed's configuration and builds it.
    pub fn build(&self) -> Result<Source, ConfigError> {
        if self.id().is_empty()
            || !self.id().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ConfigError {
                feed: self.id().to_owned(),
                key: "id",
                why: "must be non-empty and use only letters, digits, '-', '_' and '.'".into(),
            });
        }
        self.schedule()?;
        match self {
            FeedConfig::Rss(c) => Ok(Source::Feed(Box::new(feeds::rss::RssFeed::new(c)?))),
            FeedConfig::Kev(c) => Ok(Source::Feed(Box::new(feeds::kev::KevFeed::new(c)?))),
            FeedConfig::Csaf(c) => Ok(Source::Csaf(feeds::csaf_provider::CsafProvider::new(c)?)),
            FeedConfig::Nvd(c) => Ok(Source::Nvd(feeds::nvd::NvdFeed::new(c)?)),
        }
    }
}

/// The next time a schedule fires strictly after `after`. Pure: the caller supplies `now`.
pub fn next_run(schedule: &cron::Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&after).next()
}

/// How a feed is spaced: jitter on every run, and a growing wait after failures.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Up to this much is added to every scheduled time (spreads feeds and nodes).
    pub jitter: chrono::Duration,
    /// After the first failure the feed waits at least this long, doubling with each
    /// further failure…
    pub backoff: chrono::Duration,
    /// …up to this.
    pub max_backoff: chrono::Duration,
}

/// When a feed runs next: the first scheduled time after `now` (after `now` plus the
/// backoff when it has failed `failures` times in a row), plus `jitter_draw` (0.0–1.0) of
/// the jitter. Pure.
pub fn next_attempt(
    schedule: &cron::Schedule,
    now: DateTime<Utc>,
    failures: u32,
    pacing: &Pacing,
    jitter_draw: f64,
) -> Option<DateTime<Utc>> {
    let earliest = if failures == 0 {
        now
    } else {
        let factor = 2i32.saturating_pow(failures.saturating_sub(1).min(20));
        now + (pacing.backoff * factor).min(pacing.max_backoff)
    };
    let jitter_ms = (pacing.jitter.num_milliseconds() as f64 * jitter_draw.clamp(0.0, 1.0)) as i64;
    next_run(schedule, earliest).map(|t| t + chrono::Duration::milliseconds(jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cfg(extra: &str) -> Result<FeedConfig, toml::de::Error> {
        toml::from_str(&format!(
            "type = \"rss\"\nid = \"f1\"\nurl = \"https://example.org/feed.xml\"\n{extra}"
        ))
    }

    #[test]
    fn unknown_keys_and_types_are_refused() {
        let err = cfg("scheduel = \"0 * * * * *\"").unwrap_err().to_string();
        assert!(err.contains("scheduel"), "{err}");
        let err = toml::from_str::<FeedConfig>("type = \"gopher\"\nid = \"x\"").unwrap_err().to_string();
        assert!(err.contains("gopher"), "{err}");
    }

    #[test]
    fn bad_cron_names_feed_and_key() {
        let err = cfg("schedule = \"every five minutes\"").unwrap().build().err().unwrap();
        assert_eq!((err.feed.as_str(), err.key), ("f1", "schedule"));
        assert!(err.to_string().contains("every five minutes"));
    }

    #[test]
    fn schedules_fire_on_time() {
        let c = cfg("schedule = \"0 */15 * * * *\"").unwrap();
        let s = c.schedule().unwrap();
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        assert_eq!(next_run(&s, t), Some(Utc.with_ymd_and_hms(2026, 1, 1, 10, 15, 0).unwrap()));
    }

    #[test]
    fn failures_back_off_and_jitter_stays_within_bounds() {
        let s = cfg("schedule = \"0 */15 * * * *\"").unwrap().schedule().unwrap();
        let p = Pacing {
            jitter: chrono::Duration::seconds(30),
            backoff: chrono::Duration::minutes(5),
            max_backoff: chrono::Duration::hours(6),
        };
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 7, 30).unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 1, 1, h, m, 0).unwrap();
        assert_eq!(next_attempt(&s, now, 0, &p, 0.0), Some(at(10, 15)), "on schedule");
        assert_eq!(next_attempt(&s, now, 0, &p, 1.0), Some(at(10, 15) + chrono::Duration::seconds(30)));
        // 1 failure: ≥ 5 min → 10:15; 2: ≥ 10 min → 10:30; 4: ≥ 40 min → 11:00; many: capped at 6 h.
        assert_eq!(next_attempt(&s, now, 1, &p, 0.0), Some(at(10, 15)));
        assert_eq!(next_attempt(&s, now, 2, &p, 0.0), Some(at(10, 30)));
        assert_eq!(next_attempt(&s, now, 4, &p, 0.0), Some(at(11, 0)));
        assert_eq!(next_attempt(&s, now, 40, &p, 0.0), Some(at(16, 15)));
        for draw in [0.0, 0.3, 0.999, 7.0, -1.0] {
            let t = next_attempt(&s, now, 0, &p, draw).unwrap();
            assert!(t >= at(10, 15) && t <= at(10, 15) + chrono::Duration::seconds(30), "{draw}: {t}");
        }
    }

    #[test]
    fn bad_ids_are_refused() {
        let c: FeedConfig = toml::from_str("type = \"rss\"\nid = \"a b\"\nurl = \"https://e.org/\"").unwrap();
        assert_eq!(c.build().err().unwrap().key, "id");
    }
}

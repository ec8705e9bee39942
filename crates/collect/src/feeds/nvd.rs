//! NVD CVE API 2.0 records mapped to advisories.
//!
//! This module maps records and pages; the incremental feed (date windows, paging, rate
//! limits, resuming) wraps it. NVD gives no title, so the title is the CVE id and the first
//! sentence of the description. Vulnerable CPEs from `configurations` become affected
//! products (vendor and product from the CPE, so triage can match them exactly), and CISA's
//! KEV fields, which NVD carries, become the KEV listing.

use crate::ParseError;
use broadcast_core::{AdvisoryContent, Affected, Cvss, KevListing};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// NVD times have no zone (`2023-10-10T14:15:10.753`) and are UTC.
fn nvd_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    let t = t?;
    NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(t).ok().map(|d| d.with_timezone(&Utc)))
}

/// `microsoft_exchange` → `microsoft exchange`.
fn cpe_name(part: &str) -> String {
    part.replace("\\", "").replace('_', " ")
}

/// Maps one CVE record (`{"cve": {...}}` as in a page, or the bare `cve` object).
pub fn parse_cve(source: &str, record: &Value) -> Result<AdvisoryContent, ParseError> {
    let c = record.get("cve").unwrap_or(record);
    let id = s(c, "id").ok_or_else(|| ParseError("NVD record without `id`".into()))?;
    let description = arr(c, "descriptions")
        .iter()
        .find(|d| s(d, "lang") == Some("en"))
        .and_then(|d| s(d, "value"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let first_sentence: String = description.split(". ").next().unwrap_or("").chars().take(140).collect();
    let title = if first_sentence.is_empty() {
        id.to_owned()
    } else {
        format!("{id}: {}", first_sentence.trim_end_matches('.'))
    };
    let mut a = AdvisoryContent::new(source, id, title);
    a.summary = description;
    a.published = nvd_time(s(c, "published"));
    a.updated = nvd_time(s(c, "lastModified"));
    a.cves = vec![id.to_owned()];
    a.references = arr(c, "references").iter().filter_map(|r| s(r, "url")).map(str::to_owned).collect();
    if let Some(metrics) = c.get("metrics") {
        for key in ["cvssMetricV40", "cvssMetricV31", "cvssMetricV30"] {
            for m in arr(metrics, key) {
                if let Some(v) = m.get("cvssData").and_then(|d| s(d, "vectorString"))
                    && !a.cvss_vectors.iter().any(|x| x == v)
                    && v.parse::<cvss::Cvss>().is_ok()
                {
                    a.cvss_vectors.push(v.to_owned());
                }
            }
        }
    }
    a.cvss = a
        .cvss_vectors
        .iter()
        .filter_map(|v| {
            v.parse::<cvss::Cvss>().ok().map(|p| Cvss { vector: Some(v.clone()), score: p.score() })
        })
        .max_by(|x, y| x.score.total_cmp(&y.score));
    for cfg in arr(c, "configurations") {
        for node in arr(cfg, "nodes") {
            for m in arr(node, "cpeMatch") {
                if m.get("vulnerable").and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let Some(criteria) = s(m, "criteria") else { continue };
                let parts: Vec<&str> = criteria.split(':').collect();
                if parts.len() < 5 {
                    continue;
                }
                let mut version: Vec<String> = Vec::new();
                for (k, label) in [
                    ("versionStartIncluding", ">="),
                    ("versionStartExcluding", ">"),
                    ("versionEndIncluding", "<="),
                    ("versionEndExcluding", "<"),
                ] {
                    if let Some(v) = s(m, k) {
                        version.push(format!("{label}{v}"));
                    }
                }
                if version.is_empty() && parts.len() > 5 && parts[5] != "*" && parts[5] != "-" {
                    version.push(parts[5].to_owned());
                }
                let af = Affected {
                    vendor: cpe_name(parts[3]),
                    product: cpe_name(parts[4]),
                    version: (!version.is_empty()).then(|| version.join(" ")),
                    cpe: Some(criteria.to_owned()),
                    ..Affected::default()
                };
                if !a.affected.iter().any(|x| x.cpe == af.cpe && x.version == af.version) {
                    a.affected.push(af);
                }
            }
        }
    }
    if let Some(added) = s(c, "cisaExploitAdd").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) {
        a.kev = Some(KevListing {
            date_added: added,
            due_date: s(c, "cisaActionDue").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
            ransomware: false,
        });
    }
    a.validate().map_err(ParseError)?;
    Ok(a)
}

/// Maps a CVE API 2.0 response page. Records that cannot be mapped are refused with the
/// reason; the rest of the page is kept.
pub fn parse_page(source: &str, body: &[u8]) -> Result<crate::Parsed, ParseError> {
    let page: Value = serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let vulns = page
        .get("vulnerabilities")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("not an NVD CVE API 2.0 response: no `vulnerabilities`".into()))?;
    let mut out = crate::Parsed::default();
    for (n, v) in vulns.iter().enumerate() {
        match parse_cve(source, v) {
            Ok(a) => out.items.push(a),
            Err(e) => out.refused.push(format!("record {}: {e}", n + 1)),
        }
    }
    Ok(out)
}

// ----- the incremental feed ------------------------------------------------------------

fn default_url() -> String {
    "https://services.nvd.nist.gov/rest/json/cves/2.0".into()
}
fn default_schedule() -> String {
    "0 0 */2 * * *".into()
}
fn default_page() -> u32 {
    2000
}
fn default_backfill() -> u32 {
    7
}
fn default_max_requests() -> usize {
    200
}

/// `type = "nvd"`: the NVD CVE API 2.0, incrementally by last-modified time.
#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NvdConfig {
    pub id: String,
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "crate::yes")]
    pub enabled: bool,
    /// Sent as the `apiKey` header; raises NVD's limit from 5 to 50 requests per 30 s.
    /// Prefer `BROADCAST_FEEDS__N__API_KEY`-style secrets out of files where you can.
    #[serde(default)]
    pub api_key: Option<String>,
    /// `resultsPerPage` (NVD's maximum is 2000).
    #[serde(default = "default_page")]
    pub results_per_page: u32,
    /// The first run starts this many days back.
    #[serde(default = "default_backfill")]
    pub backfill_days: u32,
    /// Requests per run at most; the next run resumes from the cursor.
    #[serde(default = "default_max_requests")]
    pub max_requests_per_run: usize,
    /// Override NVD's published limit (requests per 30 s): 5 without a key, 50 with one.
    #[serde(default)]
    pub requests_per_30s: Option<usize>,
}

/// NVD allows windows of at most 120 days.
pub const MAX_WINDOW_DAYS: i64 = 120;

pub struct NvdFeed {
    id: String,
    url: url::Url,
    api_key: Option<String>,
    per_page: u32,
    backfill: chrono::Duration,
    max_requests: usize,
    limiter: RateLimiter,
}

/// A sliding-window limit: at most `max` requests in any `window`.
pub struct RateLimiter {
    max: usize,
    window: std::time::Duration,
    sent: std::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
}

impl RateLimiter {
    pub fn new(max: usize, window: std::time::Duration) -> RateLimiter {
        RateLimiter { max: max.max(1), window, sent: Default::default() }
    }

    /// Waits until one more request fits, and counts it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().expect("limiter lock");
                let now = tokio::time::Instant::now();
                while sent.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    sent.pop_front();
                }
                if sent.len() < self.max {
                    sent.push_back(now);
                    return;
                }
                self.window - now.duration_since(*sent.front().expect("full"))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// What a run of the NVD feed did.
#[derive(Debug, Default)]
pub struct NvdRun {
    pub parsed: crate::Parsed,
    pub cursor: Option<String>,
    pub bytes: usize,
    pub requests: usize,
    /// Windows still to do (request cap reached or a failure part-way).
    pub remaining_windows: usize,
}

fn nvd_param(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

impl NvdFeed {
    pub fn new(cfg: &NvdConfig) -> Result<Self, crate::ConfigError> {
        let err = |key: &'static str, why: String| crate::ConfigError { feed: cfg.id.clone(), key, why };
        let url =
            url::Url::parse(&cfg.url).map_err(|e| err("url", format!("`{}` is not a URL: {e}", cfg.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("url", format!("`{}` must be http(s)://", cfg.url)));
        }
        if !(1..=2000).contains(&cfg.results_per_page) {
            return Err(err("results_per_page", format!("{} must be 1–2000", cfg.results_per_page)));
        }
        let key = cfg.api_key.clone().filter(|k| !k.trim().is_empty());
        let per_30s = cfg.requests_per_30s.unwrap_or(if key.is_some() { 50 } else { 5 });
        Ok(NvdFeed {
            id: cfg.id.clone(),
            url,
            api_key: key,
            per_page: cfg.results_per_page,
            backfill: chrono::Duration::days(i64::from(cfg.backfill_days)),
            max_requests: cfg.max_requests_per_run.max(1),
            limiter: RateLimiter::new(per_30s, std::time::Duration::from_secs(30)),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The last-modified windows from `start` to `end`, each at most 120 days.
    pub fn windows(start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut out = Vec::new();
        let mut from = start;
        while from < end {
            let to = (from + chrono::Duration::days(MAX_WINDOW_DAYS)).min(end);
            out.push((from, to));
            from = to;
        }
        out
    }

    fn request(&self, from: DateTime<Utc>, to: DateTime<Utc>, start_index: u64) -> crate::FeedRequest {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("lastModStartDate", &nvd_param(from))
            .append_pair("lastModEndDate", &nvd_param(to))
            .append_pair("resultsPerPage", &self.per_page.to_string())
            .append_pair("startIndex", &start_index.to_string());
        let mut headers = vec![("accept".to_owned(), "application/json".to_owned())];
        if let Some(k) = &self.api_key {
            headers.push(("apiKey".to_owned(), k.clone()));
        }
        crate::FeedRequest { url, headers }
    }

    /// One run from the cursor (the end of the last finished window) to `now`. A window is
    /// finished when all its pages are in; a failure or the request cap stops the run after
    /// the last finished window, keeping its records.
    pub async fn run(
        &self,
        runner: &crate::Runner,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<NvdRun, crate::FetchError> {
        self.run_with(runner, cursor, now, &|_, _| {}).await
    }

    /// [`NvdFeed::run`], reporting windows done as it goes.
    pub async fn run_with(
        &self,
        runner: &crate::Runner,
        cursor: Option<&str>,
        now: DateTime<Utc>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<NvdRun, crate::FetchError> {
        let start = cursor
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(now - self.backfill);
        let windows = Self::windows(start, now);
        let mut run = NvdRun { cursor: cursor.map(str::to_owned), ..NvdRun::default() };
        for (w, &(from, to)) in windows.iter().enumerate() {
            let mut window = crate::Parsed::default();
            let mut index = 0u64;
            loop {
                if run.requests >= self.max_requests {
                    run.remaining_windows = windows.len() - w;
                    return Ok(run);
                }
                self.limiter.acquire().await;
                run.requests += 1;
                let req = self.request(from, to, index);
                let body = match runner.fetch(&req, None).await {
                    Ok(Some((b, _))) => b,
                    Ok(None) => Vec::new(),
                    Err(e) if w > 0 || run.parsed.items.len() + window.items.len() > 0 => {
                        run.parsed.refused.push(format!("stopped at window {}: {e}", nvd_param(from)));
                        run.remaining_windows = windows.len() - w;
                        return Ok(run);
                    }
                    Err(e) => return Err(e),
                };
                run.bytes += body.len();
                let url = req.url.to_string();
                let page = parse_page(&self.id, &body)
                    .map_err(|error| crate::FetchError::Parse { url: url.clone(), error })?;
                let meta: Value = serde_json::from_slice(&body).unwrap_or_default();
                let total = meta["totalResults"].as_u64().unwrap_or(0);
                let got = meta["vulnerabilities"].as_array().map_or(0, Vec::len) as u64;
                window.items.extend(page.items);
                window.refused.extend(page.refused);
                index += got;
                if got == 0 || index >= total {
                    break;
                }
            }
            run.parsed.items.extend(window.items);
            run.parsed.refused.extend(window.refused);
            run.cursor = Some(to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            progress(w + 1, windows.len());
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_at_most_120_days_and_cover_the_span() {
        let t = |d: &str| DateTime::parse_from_rfc3339(d).unwrap().with_timezone(&Utc);
        let w = NvdFeed::windows(t("2025-01-01T00:00:00Z"), t("2025-10-28T00:00:00Z"));
        assert_eq!(w.len(), 3);
        assert_eq!(w[0], (t("2025-01-01T00:00:00Z"), t("2025-05-01T00:00:00Z")));
        assert_eq!(w[1].0, w[0].1, "no gap");
        assert_eq!(w[2].1, t("2025-10-28T00:00:00Z"));
        assert!(w.iter().all(|(a, b)| (*b - *a).num_days() <= MAX_WINDOW_DAYS));
        assert!(NvdFeed::windows(t("2025-01-01T00:00:00Z"), t("2025-01-01T00:00:00Z")).is_empty());
        assert_eq!(nvd_param(t("2025-01-01T00:00:00Z")), "2025-01-01T00:00:00.000+00:00");
    }

    /// The limit as a property: no `max + 1` requests ever start within one window. (Sleeps
    /// never end early, so this cannot pass by luck; the window is short to keep it quick.)
    #[tokio::test]
    async fn the_rate_limit_holds_over_any_window() {
        let window = std::time::Duration::from_millis(150);
        let l = RateLimiter::new(3, window);
        let t0 = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..8 {
            l.acquire().await;
            at.push(t0.elapsed());
        }
        for i in 3..at.len() {
            assert!(at[i] - at[i - 3] >= window, "requests {} and {i} within one window: {at:?}", i - 3);
        }
        assert!(at[2] < window, "the first three go at once: {at:?}");
    }

    #[test]
    fn maps_citrix_bleed_with_cpes_and_kev() {
        let v: Value =
            serde_json::from_slice(include_bytes!("../../tests/fixtures/nvd-CVE-2023-4966.json")).unwrap();
        let a = parse_cve("nvd", &v).unwrap();
        assert_eq!(a.external_id, "CVE-2023-4966");
        assert!(a.title.starts_with("CVE-2023-4966: Sensitive information disclosure"), "{}", a.title);
        assert!(a.title.contains("NetScaler") && a.title.chars().count() <= 160, "{}", a.title);
        let k = a.kev.as_ref().unwrap();
        assert_eq!(k.date_added.to_string(), "2023-10-18");
        assert_eq!(k.due_date.unwrap().to_string(), "2023-11-08");
        assert!(
            a.affected
                .iter()
                .any(|p| p.vendor == "citrix" && p.product == "netscaler application delivery controller")
        );
        assert!(a.affected.iter().all(|p| p.cpe.as_deref().is_some_and(|c| c.starts_with("cpe:2.3:"))));
        assert!(a.cvss.as_ref().unwrap().score >= 9.0);
        assert_eq!(a.published.unwrap().to_rfc3339(), "2023-10-10T14:15:10.977+00:00");
    }

    #[test]
    fn maps_a_real_page() {
        let p = parse_page("nvd", include_bytes!("../../tests/fixtures/nvd-page.json")).unwrap();
        assert_eq!(p.items.len(), 38);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert!(p.items.iter().all(|a| a.external_id.starts_with("CVE-")));
        assert!(parse_page("nvd", b"{\"format\": \"NVD_CVE\"}").unwrap_err().0.contains("vulnerabilities"));
    }
}

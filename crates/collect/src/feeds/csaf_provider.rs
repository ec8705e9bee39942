//! A CSAF 2.0 provider: from its `provider-metadata.json`, a ROLIE feed, or a directory
//! distribution (`changes.csv`, or `index.txt`), to the documents, each checked against its
//! `.sha512` / `.sha256` file before it is parsed.
//!
//! Incremental: the feed keeps a cursor, the newest `updated` time it has processed, and the
//! next run fetches only documents updated after it (ROLIE `updated`, `changes.csv`
//! timestamps). Documents are processed oldest first and at most `max_documents_per_run` a
//! run, so a first backfill of thousands goes in steps and a failure part-way keeps what was
//! done. A document whose hash does not match, that has no hash file, or that is not valid
//! CSAF is refused with the reason and never stored; the rest of the run goes on.
//!
//! With `openpgp_key_file` set (the provider's public key, armored), every document must
//! also carry an OpenPGP signature (`.asc`, or the ROLIE `signature` link) that verifies with
//! that key (primary or a subkey); otherwise it is refused like a hash mismatch.

use crate::runner::{FetchError, Validators};
use crate::{ConfigError, FeedRequest, ParseError, Parsed, Runner};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;

fn default_schedule() -> String {
    "0 */30 * * * *".into()
}
fn default_max() -> usize {
    500
}
fn default_tlp() -> Vec<String> {
    vec!["WHITE".into(), "CLEAR".into()]
}

/// `type = "csaf"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsafConfig {
    pub id: String,
    /// `provider-metadata.json`, a ROLIE feed (`….json`), or a directory's `changes.csv` /
    /// `index.txt`.
    pub url: String,
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "crate::yes")]
    pub enabled: bool,
    /// Documents fetched per run at most (the rest follow on the next runs).
    #[serde(default = "default_max")]
    pub max_documents_per_run: usize,
    /// Which ROLIE feeds of a provider-metadata.json to follow, by TLP label.
    #[serde(default = "default_tlp")]
    pub tlp_labels: Vec<String>,
    /// The provider's OpenPGP public key (armored). When set, every document's signature
    /// must verify with it.
    #[serde(default)]
    pub openpgp_key_file: Option<String>,
}

pub struct CsafProvider {
    id: String,
    url: url::Url,
    max: usize,
    tlp_labels: Vec<String>,
    keys: Vec<pgp::composed::SignedPublicKey>,
}

/// One document a listing names.
#[derive(Clone, Debug, PartialEq)]
pub struct DocRef {
    pub url: url::Url,
    pub updated: Option<DateTime<Utc>>,
    /// Hash files to try, best first.
    pub hashes: Vec<url::Url>,
    /// The detached OpenPGP signature.
    pub signature: url::Url,
}

/// What one run did, beyond the parsed documents.
#[derive(Debug, Default)]
pub struct CsafRun {
    pub parsed: Parsed,
    pub validators: Validators,
    pub cursor: Option<String>,
    pub bytes: usize,
    pub listed: usize,
    pub fetched: usize,
    /// Documents still to fetch (more than `max_documents_per_run` were new).
    pub remaining: usize,
}

impl CsafProvider {
    pub fn new(cfg: &CsafConfig) -> Result<Self, ConfigError> {
        let err = |key: &'static str, why: String| ConfigError { feed: cfg.id.clone(), key, why };
        let url =
            url::Url::parse(&cfg.url).map_err(|e| err("url", format!("`{}` is not a URL: {e}", cfg.url)))?;
        if !matches!(url.scheme(), "http" | "https" | "file") {
            return Err(err("url", format!("`{}` must be http(s):// or file://", cfg.url)));
        }
        let keys = match &cfg.openpgp_key_file {
            None => Vec::new(),
            Some(path) => {
                use pgp::composed::Deserializable;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("openpgp_key_file", format!("cannot read {path}: {e}")))?;
                let keys: Vec<_> = pgp::composed::SignedPublicKey::from_string_many(&text)
                    .map_err(|e| {
                        err("openpgp_key_file", format!("{path}: not an armored OpenPGP public key: {e}"))
                    })?
                    .0
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        err("openpgp_key_file", format!("{path}: not an armored OpenPGP public key: {e}"))
                    })?;
                if keys.is_empty() {
                    return Err(err("openpgp_key_file", format!("{path} holds no public key")));
                }
                keys
            }
        };
        if cfg.max_documents_per_run == 0 {
            return Err(err("max_documents_per_run", "must be at least 1".into()));
        }
        Ok(CsafProvider {
            id: cfg.id.clone(),
            url,
            max: cfg.max_documents_per_run,
            tlp_labels: cfg.tlp_labels.iter().map(|t| t.to_ascii_uppercase()).collect(),
            keys,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// One run: the listing (conditionally), then every document newer than `cursor`.
    /// `progress(done, total)` is called as documents complete.
    pub async fn run(
        &self,
        runner: &Runner,
        validators: &Validators,
        cursor: Option<&str>,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<Option<CsafRun>, FetchError> {
        let top = FeedRequest { url: self.url.clone(), headers: Vec::new() };
        let Some((body, got)) = runner.fetch(&top, Some(validators)).await? else {
            return Ok(None);
        };
        let mut run = CsafRun { validators: got, bytes: body.len(), ..CsafRun::default() };
        let parse_err = |url: &url::Url, e: ParseError| FetchError::Parse { url: url.to_string(), error: e };
        let mut docs = Vec::new();
        match listing_kind(&self.url, &body) {
            Listing::ProviderMetadata => {
                for sub in self.distributions(&body).map_err(|e| parse_err(&self.url, e))? {
                    let req = FeedRequest { url: sub.clone(), headers: Vec::new() };
                    let (b, _) = runner.fetch(&req, None).await?.unwrap_or_default();
                    run.bytes += b.len();
                    docs.extend(list_documents(&sub, &b).map_err(|e| parse_err(&sub, e))?);
                }
            }
            _ => docs = list_documents(&self.url, &body).map_err(|e| parse_err(&self.url, e))?,
        }
        run.listed = docs.len();
        let since = cursor.and_then(|c| DateTime::parse_from_rfc3339(c).ok()).map(|d| d.with_timezone(&Utc));
        let mut todo: Vec<DocRef> =
            docs.into_iter().filter(|d| since.is_none_or(|s| d.updated.is_none_or(|u| u > s))).collect();
        // Oldest first, so the cursor only moves forward over finished work.
        todo.sort_by(|a, b| a.updated.cmp(&b.updated).then_with(|| a.url.as_str().cmp(b.url.as_str())));
        todo.dedup_by(|a, b| a.url == b.url);
        run.remaining = todo.len().saturating_sub(self.max);
        todo.truncate(self.max);
        let total = todo.len();
        run.cursor = cursor.map(str::to_owned);
        for (i, doc) in todo.iter().enumerate() {
            match self.fetch_document(runner, doc).await {
                Ok(Ok((item, bytes))) => {
                    run.bytes += bytes;
                    run.parsed.items.push(item);
                }
                Ok(Err(why)) => run.parsed.refused.push(format!("{}: {why}", doc.url)),
                // The network failed: keep what is done; the cursor stops before this one.
                Err(e) if i > 0 => {
                    run.parsed.refused.push(format!("stopped: {e}"));
                    run.remaining += total - i;
                    break;
                }
                Err(e) => return Err(e),
            }
            run.fetched += 1;
            if let Some(u) = doc.updated {
                run.cursor = Some(u.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            }
            progress(i + 1, total);
        }
        Ok(Some(run))
    }

    /// Fetches a document and its hash; `Ok(Err(reason))` is a refusal (not stored).
    async fn fetch_document(
        &self,
        runner: &Runner,
        doc: &DocRef,
    ) -> Result<Result<(broadcast_core::AdvisoryContent, usize), String>, FetchError> {
        let body = match runner.fetch(&FeedRequest { url: doc.url.clone(), headers: Vec::new() }, None).await
        {
            Ok(Some((b, _))) => b,
            Ok(None) => return Ok(Err("empty answer".into())),
            Err(FetchError::Status { status, .. }) => return Ok(Err(format!("HTTP {status}"))),
            Err(FetchError::TooLarge { limit, .. }) => return Ok(Err(format!("larger than {limit} bytes"))),
            Err(e) => return Err(e),
        };
        let mut checked = None;
        for h in &doc.hashes {
            match runner.fetch(&FeedRequest { url: h.clone(), headers: Vec::new() }, None).await {
                Ok(Some((hash_file, _))) => {
                    checked = Some(verify_hash(h.path(), &hash_file, &body));
                    break;
                }
                Err(FetchError::Status { status: 404, .. } | FetchError::File { .. }) => continue,
                Err(FetchError::Status { status, .. }) => {
                    return Ok(Err(format!("hash file {h}: HTTP {status}")));
                }
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
        match checked {
            None => return Ok(Err("no .sha512 or .sha256 file: not stored unverified".into())),
            Some(Err(why)) => return Ok(Err(why)),
            Some(Ok(())) => {}
        }
        if !self.keys.is_empty() {
            let sig = match runner
                .fetch(&FeedRequest { url: doc.signature.clone(), headers: Vec::new() }, None)
                .await
            {
                Ok(Some((b, _))) => b,
                Ok(None) | Err(FetchError::Status { status: 404, .. } | FetchError::File { .. }) => {
                    return Ok(Err("no OpenPGP signature (.asc): not stored unverified".into()));
                }
                Err(FetchError::Status { status, .. }) => {
                    return Ok(Err(format!("signature {}: HTTP {status}", doc.signature)));
                }
                Err(e) => return Err(e),
            };
            if let Err(why) = verify_signature(&self.keys, &sig, &body) {
                return Ok(Err(why));
            }
        }
        let len = body.len();
        Ok(super::csaf::parse_document(&self.id, &body)
            .map(|a| (a, len))
            .map_err(|e| format!("not valid CSAF: {e}")))
    }

    /// The listings a provider-metadata.json points to: ROLIE feeds with an accepted TLP
    /// label, and directory distributions (their `changes.csv`).
    fn distributions(&self, body: &[u8]) -> Result<Vec<url::Url>, ParseError> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| ParseError(format!("provider metadata: {e}")))?;
        let mut out = Vec::new();
        for d in v["distributions"].as_array().into_iter().flatten() {
            for f in d["rolie"]["feeds"].as_array().into_iter().flatten() {
                let label = f["tlp_label"].as_str().unwrap_or("").to_ascii_uppercase();
                if self.tlp_labels.contains(&label)
                    && let Some(u) = f["url"].as_str()
                {
                    out.push(join(&self.url, u)?);
                }
            }
            if let Some(dir) = d["directory_url"].as_str() {
                let dir = if dir.ends_with('/') { dir.to_owned() } else { format!("{dir}/") };
                out.push(join(&join(&self.url, &dir)?, "changes.csv")?);
            }
        }
        if out.is_empty() {
            return Err(ParseError(format!(
                "provider metadata lists no ROLIE feed labelled {} and no directory",
                self.tlp_labels.join("/")
            )));
        }
        Ok(out)
    }
}

enum Listing {
    ProviderMetadata,
    Other,
}

fn listing_kind(url: &url::Url, body: &[u8]) -> Listing {
    if url.path().ends_with(".json")
        && let Ok(v) = serde_json::from_slice::<Value>(body)
        && v.get("distributions").is_some()
    {
        return Listing::ProviderMetadata;
    }
    Listing::Other
}

fn join(base: &url::Url, rel: &str) -> Result<url::Url, ParseError> {
    base.join(rel.trim()).map_err(|e| ParseError(format!("`{rel}` is not a URL: {e}")))
}

fn time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|d| d.with_timezone(&Utc))
}

/// The documents a ROLIE feed, `changes.csv` or `index.txt` names.
pub fn list_documents(url: &url::Url, body: &[u8]) -> Result<Vec<DocRef>, ParseError> {
    let path = url.path();
    if path.ends_with("changes.csv") {
        return list_changes(url, body);
    }
    if path.ends_with("index.txt") {
        let text = std::str::from_utf8(body).map_err(|_| ParseError("index.txt is not UTF-8".into()))?;
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| doc_with_sidecars(join(url, l)?, None))
            .collect();
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ParseError(format!("not a ROLIE feed, changes.csv or index.txt (JSON: {e})")))?;
    let entries = v["feed"]["entry"]
        .as_array()
        .ok_or_else(|| ParseError("not a ROLIE feed: no feed.entry array".into()))?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let links = e["link"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let link = |rel: &'static str| {
            links.iter().filter(move |l| l["rel"] == rel).filter_map(|l| l["href"].as_str())
        };
        let Some(src) = e["content"]["src"].as_str().or_else(|| link("self").next()) else {
            return Err(ParseError(format!("ROLIE entry {i} has no content.src or self link")));
        };
        let doc = join(url, src)?;
        let mut hashes: Vec<url::Url> = link("hash").map(|h| join(url, h)).collect::<Result<_, _>>()?;
        // sha512 before sha256 when both are given.
        hashes.sort_by_key(|h| !h.path().ends_with(".sha512"));
        if hashes.is_empty() {
            hashes = sidecars(&doc)?;
        }
        let signature = match link("signature").next() {
            Some(s) => join(url, s)?,
            None => join(&doc, &format!("{}.asc", file_name(&doc)))?,
        };
        out.push(DocRef { url: doc, updated: e["updated"].as_str().and_then(time), hashes, signature });
    }
    Ok(out)
}

fn sidecars(doc: &url::Url) -> Result<Vec<url::Url>, ParseError> {
    ["sha512", "sha256"].iter().map(|ext| join(doc, &format!("{}.{ext}", file_name(doc)))).collect()
}

fn file_name(u: &url::Url) -> &str {
    u.path_segments().and_then(|mut s| s.next_back()).unwrap_or("")
}

fn doc_with_sidecars(url: url::Url, updated: Option<DateTime<Utc>>) -> Result<DocRef, ParseError> {
    let hashes = sidecars(&url)?;
    let signature = join(&url, &format!("{}.asc", file_name(&url)))?;
    Ok(DocRef { url, updated, hashes, signature })
}

/// `changes.csv`: `"path","timestamp"` per line, newest first, paths relative to the
/// directory.
fn list_changes(url: &url::Url, body: &[u8]) -> Result<Vec<DocRef>, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError("changes.csv is not UTF-8".into()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (path, ts) = line
            .split_once(',')
            .ok_or_else(|| ParseError(format!("changes.csv line {}: expected \"path\",\"time\"", n + 1)))?;
        let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
        let ts = unquote(ts);
        let updated = time(&ts).ok_or_else(|| {
            ParseError(format!("changes.csv line {}: `{ts}` is not an RFC 3339 time", n + 1))
        })?;
        out.push(doc_with_sidecars(join(url, &unquote(path))?, Some(updated))?);
    }
    Ok(out)
}

/// Checks a detached, armored OpenPGP signature over `doc` against the provider's keys
/// (each primary key and its subkeys).
pub fn verify_signature(
    keys: &[pgp::composed::SignedPublicKey],
    asc: &[u8],
    doc: &[u8],
) -> Result<(), String> {
    use pgp::composed::Deserializable;
    let text = std::str::from_utf8(asc).map_err(|_| "the .asc file is not text".to_owned())?;
    let (sig, _) = pgp::composed::DetachedSignature::from_string(text)
        .map_err(|e| format!("the .asc file is not an OpenPGP signature: {e}"))?;
    let verified = keys
        .iter()
        .any(|k| sig.verify(k, doc).is_ok() || k.public_subkeys.iter().any(|sk| sig.verify(sk, doc).is_ok()));
    if verified {
        Ok(())
    } else {
        Err("the OpenPGP signature does not verify with the provider's key (a different signer, or the document changed)".into())
    }
}

/// Checks a `.sha512` / `.sha256` file (`<hex>  <file name>`, or the hex alone) against the
/// document.
pub fn verify_hash(hash_path: &str, hash_file: &[u8], doc: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(hash_file);
    let expected = text.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
    let (alg, actual) = if hash_path.ends_with(".sha256") {
        ("SHA-256", hex::encode(sha2::Sha256::digest(doc)))
    } else {
        ("SHA-512", hex::encode(sha2::Sha512::digest(doc)))
    };
    if expected.len() != actual.len() || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{alg} file does not hold a {alg} hash"));
    }
    if expected != actual {
        return Err(format!("{alg} mismatch: the document is not what the provider published"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_checked() {
        let doc = b"{\"document\":{}}";
        let good = format!("{}  x.json\n", hex::encode(sha2::Sha512::digest(doc)));
        assert_eq!(verify_hash("/a/x.json.sha512", good.as_bytes(), doc), Ok(()));
        let err = verify_hash("/a/x.json.sha512", good.as_bytes(), b"tampered").unwrap_err();
        assert!(err.contains("SHA-512 mismatch"), "{err}");
        let short = hex::encode(sha2::Sha256::digest(doc));
        assert_eq!(verify_hash("/a/x.json.sha256", short.as_bytes(), doc), Ok(()));
        assert!(
            verify_hash("/a/x.json.sha512", b"<html>not found</html>", doc)
                .unwrap_err()
                .contains("does not hold")
        );
    }

    #[test]
    fn changes_csv_and_index_txt_list_documents() {
        let base = url::Url::parse("https://p.example/csaf/white/changes.csv").unwrap();
        let docs = list_documents(
            &base,
            b"\"2024/a.json\",\"2024-09-10T06:00:00Z\"\n2024/b.json,2024-09-11T06:00:00.000000Z\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].url.as_str(), "https://p.example/csaf/white/2024/a.json");
        assert_eq!(docs[0].hashes[0].as_str(), "https://p.example/csaf/white/2024/a.json.sha512");
        assert_eq!(docs[1].updated.unwrap().to_rfc3339(), "2024-09-11T06:00:00+00:00");
        let err = list_documents(&base, b"2024/a.json\n").unwrap_err();
        assert!(err.0.contains("line 1"), "{err}");
        let idx = url::Url::parse("https://p.example/csaf/white/index.txt").unwrap();
        let docs = list_documents(&idx, b"2024/a.json\n\n2024/b.json\n").unwrap();
        assert_eq!((docs.len(), docs[1].updated), (2, None));
    }

    #[test]
    fn a_rolie_feed_lists_documents_with_their_hash_links() {
        let base = url::Url::parse("https://p.example/feed.json").unwrap();
        let feed = br#"{"feed":{"id":"f","entry":[
          {"id":"A","updated":"2024-10-24T06:00:00.000000Z","content":{"src":"https://p.example/a.json"},
           "link":[{"rel":"self","href":"https://p.example/a.json"},{"rel":"hash","href":"https://p.example/a.json.sha256"},
                   {"rel":"hash","href":"https://p.example/a.json.sha512"}]},
          {"id":"B","updated":"2024-10-25T06:00:00Z","link":[{"rel":"self","href":"b.json"}]}]}}"#;
        let docs = list_documents(&base, feed).unwrap();
        assert_eq!(docs[0].hashes[0].as_str(), "https://p.example/a.json.sha512", "sha512 first");
        assert_eq!(docs[1].url.as_str(), "https://p.example/b.json");
        assert_eq!(docs[1].hashes.len(), 2, "conventional sidecars when the feed gives none");
        let err = list_documents(&base, br#"{"feed":{}}"#).unwrap_err();
        assert!(err.0.contains("no feed.entry"), "{err}");
    }
}

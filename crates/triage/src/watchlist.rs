//! The watchlist: what an operator's estate runs and cares about, with categories, aliases,
//! identifiers and weights. Read from `config/watchlist.toml`.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind, StartKind};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for values that are already hashes.
#[derive(Default)]
pub(crate) struct PreHashed(u64);
impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type WordSet = HashSet<u64, BuildHasherDefault<PreHashed>>;

/// Bytes that make up words: ASCII letters and digits, and any non-ASCII byte.
const WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b >= 0x80;
        i += 1;
    }
    t
};

#[inline]
pub(crate) fn is_word_byte(b: u8) -> bool {
    WORD[b as usize]
}

pub(crate) const FILTER_BITS: usize = 1 << 20;

pub(crate) fn filter_bit(hash: u64) -> usize {
    (hash >> 40) as usize & (FILTER_BITS - 1)
}

/// FNV-1a over a word's bytes, folded to ASCII lower case.
pub(crate) fn word_hash(word: &[u8]) -> u64 {
    word.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b.to_ascii_lowercase() as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What an entry is about. General IT only counts on an identifier or vendor + product match:
/// a passing mention of a common product in an industrial advisory is not a health signal.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    MedicalDevice,
    HealthIt,
    HealthcareProtocol,
    DeviceKind,
    Healthcare,
    GeneralIt,
}

impl Category {
    pub fn label(self) -> &'static str {
        match self {
            Category::MedicalDevice => "medical device",
            Category::HealthIt => "health IT",
            Category::HealthcareProtocol => "healthcare protocol",
            Category::DeviceKind => "device kind",
            Category::Healthcare => "healthcare term",
            Category::GeneralIt => "general IT",
        }
    }
}

fn one() -> f64 {
    1.0
}

/// One watched vendor, product or keyword.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub category: Category,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default = "one")]
    pub weight: f64,
    /// Products only: the vendor's name (an alias list comes from its `[[vendor]]` entry).
    #[serde(default)]
    pub vendor: Option<String>,
    /// CPE 2.3 names or prefixes (`cpe:2.3:a:philips:intellispace_cardiovascular`).
    #[serde(default)]
    pub cpe: Vec<String>,
    /// Package URL prefixes (`pkg:npm/@medplum/core`).
    #[serde(default)]
    pub purl: Vec<String>,
}

/// The watchlist file: `[[vendor]]`, `[[product]]` and `[[keyword]]` tables.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Watchlist {
    #[serde(default)]
    pub vendor: Vec<Entry>,
    #[serde(default)]
    pub product: Vec<Entry>,
    #[serde(default)]
    pub keyword: Vec<Entry>,
}

/// Which list an entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vendor,
    Product,
    Keyword,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Vendor => "vendor",
            Kind::Product => "product",
            Kind::Keyword => "keyword",
        }
    }
}

/// A watchlist entry that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watchlist {list} `{name}`: {why}")]
pub struct RulesError {
    pub list: &'static str,
    pub name: String,
    pub why: String,
}

/// Tuning knobs, from `[triage]` in config.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Relevant when the (age-adjusted) health score reaches this.
    pub relevance_threshold: f64,
    /// An advisory first published longer ago than this is an update to an old issue.
    pub old_after_days: i64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { relevance_threshold: 3.0, old_after_days: 365 }
    }
}

pub(crate) struct Compiled {
    pub kind: Kind,
    pub entry: Entry,
    /// Lower-cased vendor names a product's vendor may appear as.
    pub vendor_names: Vec<String>,
}

/// A compiled watchlist, ready to assess advisories.
pub struct Rules {
    pub(crate) entries: Vec<Compiled>,
    pub(crate) matcher: Option<AhoCorasick>,
    /// Automaton pattern index → entry index.
    pub(crate) pattern_entry: Vec<usize>,
    /// Hashes of every pattern's first word, so a scan runs the automaton only at word
    /// starts that can begin a match. `None` if some pattern does not start with a word.
    pub(crate) first_words: Option<WordSet>,
    /// A 2^20-bit filter over the same hashes, checked before the set: one bit test rejects
    /// almost every word that cannot start a match.
    pub(crate) first_word_bits: Vec<u64>,
    /// Longest pattern in bytes: the window an anchored search needs.
    pub(crate) longest: usize,
    /// `vendor:product` from a CPE → entry index.
    pub(crate) cpe: HashMap<String, usize>,
    /// Full CPE prefixes for entries that pin more than vendor and product.
    pub(crate) cpe_prefix: Vec<(String, usize)>,
    pub(crate) purl: Vec<(String, usize)>,
    pub tuning: Tuning,
}

/// `cpe:2.3:a:vendor:product:…` → `vendor:product`.
pub(crate) fn cpe_key(cpe: &str) -> Option<String> {
    let parts: Vec<&str> = cpe.split(':').collect();
    if parts.len() >= 5 && parts[0].eq_ignore_ascii_case("cpe") && parts[1] == "2.3" {
        Some(format!("{}:{}", parts[3], parts[4]).to_ascii_lowercase())
    } else {
        None
    }
}

impl Rules {
    pub fn new(w: &Watchlist, tuning: Tuning) -> Result<Rules, RulesError> {
        let mut entries: Vec<Compiled> = Vec::new();
        let vendor_aliases: HashMap<String, Vec<String>> = w
            .vendor
            .iter()
            .map(|v| {
                let mut names: Vec<String> = vec![v.name.to_lowercase()];
                names.extend(v.aliases.iter().map(|a| a.to_lowercase()));
                (v.name.to_lowercase(), names)
            })
            .collect();
        for (list, kind, items) in [
            ("vendor", Kind::Vendor, &w.vendor),
            ("product", Kind::Product, &w.product),
            ("keyword", Kind::Keyword, &w.keyword),
        ] {
            for e in items {
                let err = |why: String| RulesError { list, name: e.name.clone(), why };
                for n in std::iter::once(&e.name).chain(&e.aliases) {
                    if n.trim().chars().count() < 2 {
                        return Err(err(format!("`{n}` is too short to match on")));
                    }
                }
                if !(e.weight > 0.0 && e.weight <= 100.0) {
                    return Err(err(format!("weight {} must be above 0 and at most 100", e.weight)));
                }
                if kind != Kind::Product && e.vendor.is_some() {
                    return Err(err("only products name a vendor".into()));
                }
                for c in &e.cpe {
                    if cpe_key(c).is_none() {
                        return Err(err(format!(
                            "`{c}` is not a CPE 2.3 name (cpe:2.3:part:vendor:product…)"
                        )));
                    }
                }
                for p in &e.purl {
                    if !p.starts_with("pkg:") {
                        return Err(err(format!("`{p}` is not a package URL (pkg:type/…)")));
                    }
                }
                let vendor_names = match &e.vendor {
                    Some(v) => vendor_aliases
                        .get(&v.to_lowercase())
                        .cloned()
                        .unwrap_or_else(|| vec![v.to_lowercase()]),
                    None => Vec::new(),
                };
                entries.push(Compiled { kind, entry: e.clone(), vendor_names });
            }
        }
        let mut patterns: Vec<String> = Vec::new();
        let mut pattern_entry = Vec::new();
        let mut cpe = HashMap::new();
        let mut cpe_prefix = Vec::new();
        let mut purl = Vec::new();
        for (i, c) in entries.iter().enumerate() {
            for n in std::iter::once(&c.entry.name).chain(&c.entry.aliases) {
                patterns.push(n.trim().to_ascii_lowercase());
                pattern_entry.push(i);
            }
            for x in &c.entry.cpe {
                let key = cpe_key(x).expect("checked above");
                if x.split(':').count() > 5 {
                    cpe_prefix.push((x.to_ascii_lowercase(), i));
                } else {
                    cpe.insert(key, i);
                }
            }
            for p in &c.entry.purl {
                purl.push((p.to_ascii_lowercase(), i));
            }
        }
        let matcher = if patterns.is_empty() {
            None
        } else {
            Some(
                // Patterns and text are both folded to ASCII lower case, so the automaton
                // itself is case-sensitive: half the transitions of `ascii_case_insensitive`.
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .start_kind(StartKind::Both)
                    .build(&patterns)
                    .map_err(|e| RulesError { list: "all", name: String::new(), why: e.to_string() })?,
            )
        };
        let first_words = patterns
            .iter()
            .map(|p| {
                let b = p.as_bytes();
                let end = b.iter().position(|x| !is_word_byte(*x)).unwrap_or(b.len());
                (end > 0).then(|| word_hash(&b[..end]))
            })
            .collect::<Option<WordSet>>();
        let longest = patterns.iter().map(String::len).max().unwrap_or(0);
        let mut first_word_bits = vec![0u64; FILTER_BITS / 64];
        for h in first_words.iter().flatten() {
            let bit = filter_bit(*h);
            first_word_bits[bit / 64] |= 1 << (bit % 64);
        }
        Ok(Rules {
            entries,
            matcher,
            pattern_entry,
            first_words,
            first_word_bits,
            longest,
            cpe,
            cpe_prefix,
            purl,
            tuning,
        })
    }

    /// Number of entries (vendors + products + keywords).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

//! Storm control: a burst of advisories about one vendor/product becomes one grouped
//! candidate with a count and the worst item on top.

use broadcast_core::ThreatLevel;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// What grouping needs to know of one candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Item {
    pub id: String,
    /// Vendor/product key, e.g. `siemens/simatic s7-1500`.
    pub key: String,
    pub level: ThreatLevel,
    pub score: f64,
    pub changed_at: DateTime<Utc>,
}

/// A group of candidates (a single candidate is a group of one).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    pub count: usize,
    /// The worst item: highest threat level, then highest score.
    pub top: Item,
    /// Every member, worst first.
    pub members: Vec<Item>,
}

/// Groups items that share a key and arrived within `window` of the group's first item, when
/// there are at least `min_burst` of them; everything else stays on its own. Groups come out
/// worst first.
pub fn group(mut items: Vec<Item>, window: Duration, min_burst: usize) -> Vec<Group> {
    items.sort_by(|a, b| a.key.cmp(&b.key).then(a.changed_at.cmp(&b.changed_at)));
    let mut out: Vec<Group> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let start = items[i].changed_at;
        let mut j = i + 1;
        while j < items.len() && items[j].key == items[i].key && items[j].changed_at - start <= window {
            j += 1;
        }
        let run: Vec<Item> = items[i..j].to_vec();
        if run.len() >= min_burst.max(2) {
            out.push(make(run));
        } else {
            out.extend(run.into_iter().map(|it| make(vec![it])));
        }
        i = j;
    }
    out.sort_by(|a, b| worse(&a.top, &b.top));
    out
}

fn worse(a: &Item, b: &Item) -> std::cmp::Ordering {
    b.level.cmp(&a.level).then(b.score.total_cmp(&a.score)).then(a.id.cmp(&b.id))
}

fn make(mut members: Vec<Item>) -> Group {
    members.sort_by(worse);
    Group { key: members[0].key.clone(), count: members.len(), top: members[0].clone(), members }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn item(id: usize, key: &str, minute: i64, level: ThreatLevel, score: f64) -> Item {
        Item {
            id: format!("adv_{id}"),
            key: key.into(),
            level,
            score,
            changed_at: Utc.with_ymd_and_hms(2026, 5, 1, 9, 0, 0).unwrap() + Duration::minutes(minute),
        }
    }

    #[test]
    fn a_burst_becomes_one_group_with_the_worst_on_top() {
        let mut items: Vec<Item> = (0..300)
            .map(|i| {
                item(i, "siemens/simatic", (i % 50) as i64, ThreatLevel::Medium, 1.0 + i as f64 / 1000.0)
            })
            .collect();
        items.push(item(999, "siemens/simatic", 10, ThreatLevel::High, 0.5));
        items.push(item(1000, "philips/intellivue", 5, ThreatLevel::Medium, 9.0));
        let groups = group(items, Duration::hours(1), 5);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].key, "siemens/simatic");
        assert_eq!(groups[0].count, 301);
        assert_eq!(groups[0].top.id, "adv_999", "High outranks a higher score at Medium");
        assert_eq!(groups[1].count, 1);
    }

    #[test]
    fn small_or_spread_out_sets_stay_single() {
        let items = vec![
            item(1, "a/x", 0, ThreatLevel::Low, 1.0),
            item(2, "a/x", 10, ThreatLevel::Low, 2.0),
            item(3, "a/x", 200, ThreatLevel::Low, 3.0),
        ];
        let groups = group(items, Duration::hours(1), 3);
        assert_eq!(groups.iter().map(|g| g.count).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert_eq!(groups[0].top.id, "adv_3");
    }
}

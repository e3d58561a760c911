//! uid/gid translation between guest and host, done by the daemon (virtiofsd's
//! `--translate-uid` / `--translate-gid`, same syntax and meaning).
//!
//! A rule is `TYPE:A:B:COUNT` (or `forbid-guest:A:COUNT`); any non-alphanumeric separator other
//! than `-` and `_` may replace `:` as long as it is the same throughout.
//!
//! | type | direction | meaning |
//! |---|---|---|
//! | `guest:G:H:N` | guest → host | guest ids G..G+N are host ids H..H+N |
//! | `host:H:G:N` | host → guest | host ids H..H+N are shown as guest ids G..G+N |
//! | `map:G:H:N` | both | `guest:G:H:N` and `host:H:G:N` |
//! | `squash-guest:G:H:N` | guest → host | guest ids G..G+N all become host id H |
//! | `squash-host:H:G:N` | host → guest | host ids H..H+N are all shown as guest id G |
//! | `forbid-guest:G:N` | guest → host | guest ids G..G+N may not own anything: EPERM |
//!
//! Ids no rule covers map to themselves. Rules of one direction may not overlap.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// 1:1 onto a range starting here.
    Range(u32),
    /// n:1 onto this id.
    Squash(u32),
    /// Refused.
    Forbidden,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule {
    from: u32,
    count: u32,
    to: Target,
}

impl Rule {
    fn contains(&self, id: u32) -> bool {
        id >= self.from && u64::from(id) < u64::from(self.from) + u64::from(self.count)
    }

    fn apply(&self, id: u32) -> Option<u32> {
        match self.to {
            Target::Range(base) => base.checked_add(id - self.from),
            Target::Squash(to) => Some(to),
            Target::Forbidden => None,
        }
    }

    fn overlaps(&self, other: &Rule) -> bool {
        let end = |r: &Rule| u64::from(r.from) + u64::from(r.count);
        u64::from(self.from) < end(other) && u64::from(other.from) < end(self)
    }
}

/// One command-line rule, as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMapRule {
    text: String,
    to_host: Option<Rule>,
    to_guest: Option<Rule>,
}

impl fmt::Display for IdMapRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for IdMapRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let sep = s
            .chars()
            .find(|c| !(c.is_alphanumeric() || *c == '-' || *c == '_'))
            .ok_or_else(|| format!("invalid id map '{s}': expected TYPE:FROM:TO:COUNT"))?;
        let mut parts = s.split(sep);
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let nums: Vec<u32> = parts
            .map(|p| {
                p.parse::<u32>()
                    .map_err(|e| format!("invalid id map '{s}': '{p}' is not an id ({e})"))
            })
            .collect::<Result<_, _>>()?;
        let want = if kind == "forbid-guest" { 2 } else { 3 };
        if nums.len() != want {
            return Err(format!(
                "invalid id map '{s}': {kind} takes {want} numbers, got {}",
                nums.len()
            ));
        }
        let rule = |from, to, count| Rule { from, count, to };
        let (to_host, to_guest) = match kind.as_str() {
            "guest" => (Some(rule(nums[0], Target::Range(nums[1]), nums[2])), None),
            "host" => (None, Some(rule(nums[0], Target::Range(nums[1]), nums[2]))),
            "map" => (
                Some(rule(nums[0], Target::Range(nums[1]), nums[2])),
                Some(rule(nums[1], Target::Range(nums[0]), nums[2])),
            ),
            "squash-guest" => (Some(rule(nums[0], Target::Squash(nums[1]), nums[2])), None),
            "squash-host" => (None, Some(rule(nums[0], Target::Squash(nums[1]), nums[2]))),
            "forbid-guest" => (Some(rule(nums[0], Target::Forbidden, nums[1])), None),
            other => {
                return Err(format!(
                    "invalid id map '{s}': unknown type '{other}' \
                     (guest, host, map, squash-guest, squash-host, forbid-guest)"
                ))
            }
        };
        for r in to_host.iter().chain(to_guest.iter()) {
            if let Target::Range(base) = r.to {
                if u64::from(base) + u64::from(r.count) > u64::from(u32::MAX) + 1 {
                    return Err(format!("invalid id map '{s}': the target range overflows"));
                }
            }
        }
        Ok(IdMapRule {
            text: s.to_string(),
            to_host,
            to_guest,
        })
    }
}

/// The translation for one kind of id (uids or gids).
#[derive(Clone, Debug, Default)]
pub struct IdMap {
    to_host: Vec<Rule>,
    to_guest: Vec<Rule>,
}

impl IdMap {
    pub fn new(rules: &[IdMapRule]) -> Result<Self, String> {
        let mut map = IdMap::default();
        for r in rules {
            for (new, table) in [
                (r.to_host, &mut map.to_host),
                (r.to_guest, &mut map.to_guest),
            ] {
                let Some(new) = new else { continue };
                if table.iter().any(|old| old.overlaps(&new)) {
                    return Err(format!("id map '{r}' overlaps an earlier rule"));
                }
                table.push(new);
            }
        }
        Ok(map)
    }

    pub fn is_identity(&self) -> bool {
        self.to_host.is_empty() && self.to_guest.is_empty()
    }

    /// The host id for a guest id, or None when the guest id is forbidden.
    pub fn to_host(&self, guest: u32) -> Option<u32> {
        match self.to_host.iter().find(|r| r.contains(guest)) {
            Some(r) => r.apply(guest),
            None => Some(guest),
        }
    }

    /// The id the guest sees for a host id.
    pub fn to_guest(&self, host: u32) -> u32 {
        self.to_guest
            .iter()
            .find(|r| r.contains(host))
            .and_then(|r| r.apply(host))
            .unwrap_or(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        let parsed: Vec<IdMapRule> = rules.iter().map(|r| r.parse().unwrap()).collect();
        IdMap::new(&parsed).unwrap()
    }

    #[test]
    fn bidirectional_ranges() {
        let m = map(&["map:1000:100000:10"]);
        assert_eq!(m.to_host(1000), Some(100000));
        assert_eq!(m.to_host(1009), Some(100009));
        assert_eq!(m.to_host(1010), Some(1010), "outside: identity");
        assert_eq!(m.to_guest(100005), 1005);
        assert_eq!(m.to_guest(5), 5);
    }

    #[test]
    fn one_way_rules_and_squashes() {
        let m = map(&["squash-guest:0:1000:4294967295", "host:1000:0:1"]);
        assert_eq!(m.to_host(0), Some(1000));
        assert_eq!(m.to_host(4242), Some(1000));
        assert_eq!(m.to_guest(1000), 0);
        assert_eq!(m.to_guest(1001), 1001);
        let m = map(&["squash-host:0:65534:65536"]);
        assert_eq!(m.to_guest(12), 65534);
        assert_eq!(m.to_host(12), Some(12));
    }

    #[test]
    fn forbidden_guest_ids() {
        let m = map(&["forbid-guest:500:10"]);
        assert_eq!(m.to_host(505), None);
        assert_eq!(m.to_host(510), Some(510));
    }

    #[test]
    fn syntax() {
        assert!(
            "map/1/2/3".parse::<IdMapRule>().is_ok(),
            "any consistent separator"
        );
        assert!("MAP:1:2:3".parse::<IdMapRule>().is_ok());
        assert!("map:1:2".parse::<IdMapRule>().is_err());
        assert!("forbid-guest:1:2:3".parse::<IdMapRule>().is_err());
        assert!("maps:1:2:3".parse::<IdMapRule>().is_err());
        assert!("map:1:x:3".parse::<IdMapRule>().is_err());
        assert!(
            "guest:0:4294967295:2".parse::<IdMapRule>().is_err(),
            "overflow"
        );
        assert!("map".parse::<IdMapRule>().is_err());
    }

    #[test]
    fn overlaps_are_refused_per_direction() {
        let r = |s: &str| s.parse::<IdMapRule>().unwrap();
        assert!(IdMap::new(&[r("guest:0:100:10"), r("guest:5:200:10")]).is_err());
        assert!(IdMap::new(&[r("guest:0:100:10"), r("host:0:100:10")]).is_ok());
        assert!(IdMap::new(&[r("map:0:100:10"), r("host:105:0:1")]).is_err());
    }
}

//! `--xattrmap`: extended attribute names translated between guest and host, with virtiofsd's
//! rule syntax and meaning (its doc/xattr-mapping.md), so that existing configurations (Kata
//! Containers, SELinux guests) carry over.
//!
//! A map is a list of rules, each `<sep>type<sep>scope<sep>key<sep>prepend<sep>` where `<sep>`
//! is the rule's first character. A name from the guest (get/set/remove) is matched against
//! the `key` of each `client`/`all` rule in turn; a name from the host (a list) against the
//! `prepend` of each `server`/`all` rule. The first match decides:
//!
//! | type | guest name matching `key` | host name matching `prepend` |
//! |---|---|---|
//! | `prefix` | `prepend` is put in front of it | `prepend` is taken off it |
//! | `ok` | passed as it is | listed as it is |
//! | `bad` | EPERM | hidden |
//! | `unsupported` | ENOTSUP | hidden |
//!
//! A name no rule matches is refused (EPERM) or hidden. `map` is shorthand for the usual set:
//! `:map:KEY:PREPEND:` maps KEY-prefixed names (all names when KEY is empty) under PREPEND,
//! hides host names that would alias them, and lets the rest through; it must be last.

use std::ffi::{CStr, CString};
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Prefix,
    Ok,
    Bad,
    Unsupported,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    client: bool,
    server: bool,
    key: Vec<u8>,
    prepend: Vec<u8>,
}

/// A parsed `--xattrmap`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XattrMap {
    rules: Vec<Rule>,
}

fn rule(kind: Kind, scope: &str, key: &[u8], prepend: &[u8]) -> Rule {
    Rule {
        kind,
        client: scope != "server",
        server: scope != "client",
        key: key.to_vec(),
        prepend: prepend.to_vec(),
    }
}

/// `map`'s expansion, as virtiofsd does it.
fn expand_map(key: &[u8], prepend: &[u8]) -> Vec<Rule> {
    if key.is_empty() {
        vec![
            rule(Kind::Prefix, "all", b"", prepend),
            rule(Kind::Bad, "all", b"", b""),
        ]
    } else {
        vec![
            rule(Kind::Prefix, "all", key, prepend),
            rule(Kind::Bad, "server", b"", key),
            rule(Kind::Bad, "client", prepend, b""),
            rule(Kind::Ok, "all", b"", b""),
        ]
    }
}

impl std::str::FromStr for XattrMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |what: String| Err(format!("invalid --xattrmap: {what}"));
        let mut rules = Vec::new();
        let mut rest = s.trim_start();
        let mut mapped = false;
        while !rest.is_empty() {
            let sep = rest.chars().next().unwrap_or(':');
            let fields: Vec<&str> = rest[sep.len_utf8()..].splitn(5, sep).collect();
            if mapped {
                return bad("a `map` rule must be the last one".into());
            }
            let (kind, n) = match fields.first().copied() {
                Some("map") => ("map", 3),
                Some(k @ ("prefix" | "ok" | "bad" | "unsupported")) => (k, 4),
                Some(other) => {
                    return bad(format!(
                        "unknown rule type '{other}' (prefix, ok, bad, unsupported or map)"
                    ))
                }
                None => return bad("empty rule".into()),
            };
            // type, [scope,] key, prepend, then what follows the closing separator.
            let parts: Vec<&str> = rest[sep.len_utf8()..].splitn(n + 1, sep).collect();
            if parts.len() != n + 1 {
                return bad(format!(
                    "the rule starting '{}' needs {n} fields, each ended by '{sep}'",
                    rest.chars().take(40).collect::<String>()
                ));
            }
            if kind == "map" {
                rules.extend(expand_map(parts[1].as_bytes(), parts[2].as_bytes()));
                mapped = true;
            } else {
                let scope = parts[1];
                if !matches!(scope, "client" | "server" | "all") {
                    return bad(format!("unknown scope '{scope}' (client, server or all)"));
                }
                let k = match kind {
                    "prefix" => Kind::Prefix,
                    "ok" => Kind::Ok,
                    "bad" => Kind::Bad,
                    _ => Kind::Unsupported,
                };
                rules.push(rule(k, scope, parts[2].as_bytes(), parts[3].as_bytes()));
            }
            rest = parts[n].trim_start();
        }
        if rules.is_empty() {
            return bad("no rules".into());
        }
        Ok(Self { rules })
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl XattrMap {
    /// The host name for a name from the guest, or the errno that refuses it.
    pub fn to_host(&self, name: &CStr) -> io::Result<CString> {
        let n = name.to_bytes();
        let rule = self
            .rules
            .iter()
            .find(|r| r.client && n.starts_with(&r.key))
            .ok_or_else(|| errno(libc::EPERM))?;
        match rule.kind {
            Kind::Prefix => {
                CString::new([&rule.prepend[..], n].concat()).map_err(|_| errno(libc::EINVAL))
            }
            Kind::Ok => Ok(name.to_owned()),
            Kind::Bad => Err(errno(libc::EPERM)),
            Kind::Unsupported => Err(errno(libc::ENOTSUP)),
        }
    }

    /// The guest's name for a host name, or None when it is hidden.
    fn to_guest<'a>(&self, name: &'a [u8]) -> Option<&'a [u8]> {
        let rule = self
            .rules
            .iter()
            .find(|r| r.server && name.starts_with(&r.prepend))?;
        match rule.kind {
            Kind::Prefix => Some(&name[rule.prepend.len()..]).filter(|n| !n.is_empty()),
            Kind::Ok => Some(name),
            Kind::Bad | Kind::Unsupported => None,
        }
    }

    /// A host listxattr result (NUL-terminated names) as the guest sees it.
    pub fn list_to_guest(&self, list: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(list.len());
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if let Some(g) = self.to_guest(name) {
                out.extend_from_slice(g);
                out.push(0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> XattrMap {
        s.parse().unwrap()
    }

    fn host(m: &XattrMap, n: &CStr) -> Result<String, i32> {
        m.to_host(n)
            .map(|c| c.into_string().unwrap())
            .map_err(|e| e.raw_os_error().unwrap())
    }

    #[test]
    fn map_everything_under_a_prefix() {
        // virtiofsd's example 1, both spellings.
        for m in [
            map(":map::user.virtiofs.:"),
            map(":prefix:all::user.virtiofs.::bad:all:::"),
        ] {
            assert_eq!(host(&m, c"trusted.x"), Ok("user.virtiofs.trusted.x".into()));
            assert_eq!(host(&m, c"user.y"), Ok("user.virtiofs.user.y".into()));
            let listed =
                m.list_to_guest(b"user.virtiofs.trusted.x\0user.plain\0security.selinux\0");
            assert_eq!(listed, b"trusted.x\0");
        }
    }

    #[test]
    fn map_only_trusted_and_block_the_aliases() {
        // Example 2.
        let long = map(
            "/prefix/all/trusted./user.virtiofs./\n /bad/server//trusted./\n \
             /bad/client/user.virtiofs.//\n /ok/all///",
        );
        assert_eq!(long, map("/map/trusted./user.virtiofs./"));
        assert_eq!(
            host(&long, c"trusted.a"),
            Ok("user.virtiofs.trusted.a".into())
        );
        assert_eq!(host(&long, c"user.virtiofs.sneaky"), Err(libc::EPERM));
        assert_eq!(host(&long, c"user.ok"), Ok("user.ok".into()));
        let listed = long.list_to_guest(b"user.virtiofs.trusted.a\0trusted.host\0user.ok\0");
        assert_eq!(listed, b"trusted.a\0user.ok\0");
    }

    #[test]
    fn hide_security_and_unsupported() {
        let m = map("/bad/all/security./security./ /unsupported/client/trusted.// /ok/all///");
        assert_eq!(host(&m, c"security.selinux"), Err(libc::EPERM));
        assert_eq!(host(&m, c"trusted.x"), Err(libc::ENOTSUP));
        assert_eq!(m.list_to_guest(b"security.selinux\0user.a\0"), b"user.a\0");
        // No rule at all for a name: refused, hidden.
        let strict = map(":ok:client:user.::");
        assert_eq!(host(&strict, c"trusted.x"), Err(libc::EPERM));
        assert_eq!(strict.list_to_guest(b"user.a\0"), b"");
    }

    #[test]
    fn bad_maps_are_refused_with_what_is_wrong() {
        for (s, want) in [
            ("", "no rules"),
            (":frob:all:::", "unknown rule type 'frob'"),
            (":ok:everywhere:::", "unknown scope 'everywhere'"),
            (":ok:all::", "needs 4 fields"),
            (":map::a.::ok:all:::", "must be the last"),
        ] {
            let e = s.parse::<XattrMap>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}

//! Dependency relations (`Depends`, `Pre-Depends`, `Provides`): alternatives,
//! version constraints, architecture qualifiers.

use std::cmp::Ordering;

use crate::ParseError;
use crate::version::compare_versions;

/// A version constraint such as `>= 1.2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub op: Op,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Constraint {
    /// Whether `version` satisfies the constraint.
    pub fn matches(&self, version: &str) -> bool {
        let ord = compare_versions(version, &self.version);
        match self.op {
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Eq => ord == Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Gt => ord == Ordering::Greater,
        }
    }
}

/// One package relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub arch: Option<String>,
    pub constraint: Option<Constraint>,
}

/// Parses a relation field into a conjunction of alternatives:
/// `a (>= 1) | b, c` → `[[a>=1, b], [c]]`. Architecture restrictions
/// (`[amd64]`) and build profiles (`<!nocheck>`) are dropped.
pub fn parse_relations(field: &str) -> Result<Vec<Vec<Relation>>, ParseError> {
    let mut all = Vec::new();
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(
                parse_one(alt.trim())
                    .map_err(|msg| ParseError::Other(format!("relation {alt:?}: {msg}")))?,
            );
        }
        all.push(alts);
    }
    Ok(all)
}

fn parse_one(s: &str) -> Result<Relation, String> {
    // Drop `[arch list]` and `<profiles>`.
    let mut clean = String::with_capacity(s.len());
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '[' | '<' if !clean.contains('(') || clean.contains(')') => depth += 1,
            ']' | '>' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            _ => clean.push(c),
        }
    }
    let s = clean.trim();
    let (head, constraint) = match s.find('(') {
        Some(open) => {
            let close = open + s[open..].find(')').ok_or("missing `)`")?;
            if !s[close + 1..].trim().is_empty() {
                return Err(format!("text after the version constraint in {s:?}"));
            }
            let inner = s[open + 1..close].trim();
            let ops = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">>", Op::Gt),
                ("<<", Op::Lt),
                ("=", Op::Eq),
                (">", Op::Ge),
                ("<", Op::Le),
            ];
            let (op, rest) = ops
                .iter()
                .find_map(|(t, op)| inner.strip_prefix(t).map(|r| (*op, r)))
                .ok_or_else(|| format!("unknown operator in ({inner})"))?;
            let version = rest.trim();
            if version.is_empty() {
                return Err("empty version".into());
            }
            (
                s[..open].trim(),
                Some(Constraint {
                    op,
                    version: version.to_string(),
                }),
            )
        }
        None => (s, None),
    };
    if head.is_empty() || head.contains(char::is_whitespace) {
        return Err(format!("bad package name {head:?}"));
    }
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n, Some(a.to_string())),
        None => (head, None),
    };
    Ok(Relation {
        name: name.to_string(),
        arch,
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives_constraints_qualifiers() {
        let r = parse_relations(
            "libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any, foo [amd64] <!nocheck>",
        )
        .unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0][0].name, "libc6");
        assert_eq!(
            r[0][0].constraint,
            Some(Constraint {
                op: Op::Ge,
                version: "2.34".into()
            })
        );
        assert_eq!(r[1].len(), 2);
        assert_eq!(r[1][1].name, "debconf-2.0");
        assert_eq!(r[2][0].arch.as_deref(), Some("any"));
        assert_eq!(r[3][0].name, "foo");
        assert!(r[3][0].constraint.is_none());
        let p = parse_relations("awk (= 1:5.2.1-2)").unwrap();
        assert!(p[0][0].constraint.as_ref().unwrap().matches("1:5.2.1-2"));
        assert!(!p[0][0].constraint.as_ref().unwrap().matches("5.2.1-2"));
    }

    #[test]
    fn constraint_operators() {
        let c = |op, v: &str| Constraint {
            op,
            version: v.into(),
        };
        assert!(c(Op::Lt, "2").matches("1"));
        assert!(!c(Op::Lt, "1").matches("1"));
        assert!(c(Op::Le, "1").matches("1"));
        assert!(c(Op::Gt, "1").matches("1.1"));
        assert!(c(Op::Ge, "1.0~rc1").matches("1.0"));
        assert!(parse_relations("a (>= )").is_err());
        assert!(parse_relations("a (~ 1)").is_err());
        // Found by the fuzzer: a `)` before the `(` sliced backwards.
        assert!(parse_relations("li>k >+) <=>>>bg(:af").is_err());
        assert!(parse_relations("a (>= 1) b").is_err());
    }
}

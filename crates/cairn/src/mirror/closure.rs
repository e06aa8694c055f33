//! Package selection: everything, a list, priorities, and the dependency
//! closure apt would need to install them (Pre-Depends, Depends, optionally
//! Recommends; alternatives; Provides; version constraints; Essential and
//! required packages always in).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use anyhow::{Context, Result, bail};
use cairn_debian::relation::{Relation, parse_relations};
use cairn_debian::{Package, compare_versions};

use super::config::Selection;

/// The chosen packages (indices into the input) and the relations that no
/// mirrored package satisfies.
#[derive(Debug, Default)]
pub struct Selected {
    pub chosen: Vec<usize>,
    pub unsatisfied: Vec<String>,
}

fn priority_rank(p: Option<&str>) -> u8 {
    match p {
        Some("required") => 0,
        Some("important") => 1,
        Some("standard") => 2,
        Some("optional") => 3,
        _ => 4,
    }
}

struct Index<'a> {
    pkgs: &'a [Package],
    /// name → indices, highest version first.
    by_name: HashMap<&'a str, Vec<usize>>,
    /// provided name → (index, provided version).
    providers: HashMap<String, Vec<(usize, Option<String>)>>,
}

impl<'a> Index<'a> {
    fn new(pkgs: &'a [Package]) -> Result<Index<'a>> {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<(usize, Option<String>)>> = HashMap::new();
        for (i, p) in pkgs.iter().enumerate() {
            by_name.entry(p.name.as_str()).or_default().push(i);
            if let Some(prov) = &p.provides {
                for group in parse_relations(prov)
                    .map_err(|e| anyhow::anyhow!("Provides of {}: {e}", p.name))?
                {
                    for r in group {
                        providers
                            .entry(r.name)
                            .or_default()
                            .push((i, r.constraint.map(|c| c.version)));
                    }
                }
            }
        }
        for v in by_name.values_mut() {
            v.sort_by(|&a, &b| compare_versions(&pkgs[b].version, &pkgs[a].version));
        }
        for v in providers.values_mut() {
            v.sort_by(|a, b| {
                let (pa, pb) = (&pkgs[a.0], &pkgs[b.0]);
                priority_rank(pa.priority.as_deref())
                    .cmp(&priority_rank(pb.priority.as_deref()))
                    .then_with(|| pa.name.cmp(&pb.name))
                    .then_with(|| compare_versions(&pb.version, &pa.version))
            });
        }
        Ok(Index {
            pkgs,
            by_name,
            providers,
        })
    }

    /// Packages that satisfy `r`, in apt's order of preference: the real
    /// package's versions (highest first), then providers.
    fn satisfiers(&self, r: &Relation) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .by_name
            .get(r.name.as_str())
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| {
                        r.constraint
                            .as_ref()
                            .is_none_or(|c| c.matches(&self.pkgs[i].version))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(provs) = self.providers.get(&r.name) {
            for (i, pv) in provs {
                let ok = match (&r.constraint, pv) {
                    (None, _) => true,
                    (Some(c), Some(v)) => c.matches(v),
                    (Some(_), None) => false,
                };
                if ok {
                    out.push(*i);
                }
            }
        }
        out
    }
}

/// Chooses the packages to mirror from `pkgs` (all indices of all mirrored
/// suites). Named packages that do not exist are an error.
pub fn select(pkgs: &[Package], sel: &Selection) -> Result<Selected> {
    if sel.full {
        return Ok(Selected {
            chosen: (0..pkgs.len()).collect(),
            unsatisfied: Vec::new(),
        });
    }
    let index = Index::new(pkgs)?;
    let mut w = Walk::default();
    named(pkgs, &index, sel, &mut w)?;
    by_priority(pkgs, &index, sel, &mut w);
    let unsatisfied = if sel.closure {
        dependencies(pkgs, &index, sel, &mut w)?
    } else {
        BTreeSet::new()
    };
    let mut chosen = w.chosen;
    if sel.all_versions {
        let names: BTreeSet<&str> = chosen.iter().map(|&i| pkgs[i].name.as_str()).collect();
        for n in names {
            chosen.extend(index.by_name[n].iter().copied());
        }
    }
    let mut chosen: Vec<usize> = chosen.into_iter().collect();
    chosen.sort_by(|&a, &b| {
        pkgs[a]
            .name
            .cmp(&pkgs[b].name)
            .then_with(|| compare_versions(&pkgs[a].version, &pkgs[b].version))
            .then(Ordering::Equal)
    });
    Ok(Selected {
        chosen,
        unsatisfied: unsatisfied.into_iter().collect(),
    })
}

/// The packages chosen so far, and those whose dependencies are still to
/// be followed.
#[derive(Default)]
struct Walk {
    chosen: BTreeSet<usize>,
    queue: VecDeque<usize>,
}

impl Walk {
    fn push(&mut self, i: usize) {
        if self.chosen.insert(i) {
            self.queue.push_back(i);
        }
    }
}

/// The packages the selection names (`name` or `name=version`): the
/// highest version is what apt installs; older ones stay out.
fn named(pkgs: &[Package], index: &Index, sel: &Selection, w: &mut Walk) -> Result<()> {
    let mut missing = Vec::new();
    for name in &sel.packages {
        let (n, c) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (name.as_str(), None),
        };
        let found = index.by_name.get(n).and_then(|v| {
            v.iter()
                .copied()
                .find(|&i| c.is_none_or(|v| pkgs[i].version == v))
        });
        match found {
            Some(i) => w.push(i),
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "package(s) not found in the mirrored indices: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The newest version of every package of a wanted priority, and with the
/// closure every essential or required one.
fn by_priority(pkgs: &[Package], index: &Index, sel: &Selection, w: &mut Walk) {
    for versions in index.by_name.values() {
        let top = versions[0];
        let p = &pkgs[top];
        let wanted = p
            .priority
            .as_deref()
            .is_some_and(|x| sel.priorities.iter().any(|w| w == x));
        if wanted || (sel.closure && (p.essential || p.priority.as_deref() == Some("required"))) {
            w.push(top);
        }
    }
}

/// Follows Pre-Depends and Depends (and Recommends when asked) from every
/// chosen package; what nothing satisfies is returned, said.
fn dependencies(
    pkgs: &[Package],
    index: &Index,
    sel: &Selection,
    w: &mut Walk,
) -> Result<BTreeSet<String>> {
    let mut unsatisfied = BTreeSet::new();
    while let Some(i) = w.queue.pop_front() {
        let p = &pkgs[i];
        // Every version, and what each of them depends on: a tool that
        // reads one suite resolves against that suite's versions.
        if sel.all_versions {
            for &j in &index.by_name[p.name.as_str()] {
                w.push(j);
            }
        }
        let mut fields = vec![p.pre_depends.as_deref(), p.depends.as_deref()];
        if sel.recommends {
            fields.push(p.recommends.as_deref());
        }
        for (fi, field) in fields.into_iter().enumerate() {
            let Some(field) = field else { continue };
            let groups = parse_relations(field)
                .map_err(|e| anyhow::anyhow!("{} {}: {e}", p.name, p.version))?;
            for group in groups {
                if !alternative(index, &group, w) && fi < 2 {
                    let alts: Vec<String> = group.iter().map(fmt_relation).collect();
                    unsatisfied.insert(format!(
                        "{} {} depends on {}",
                        p.name,
                        p.version,
                        alts.join(" | ")
                    ));
                }
            }
        }
    }
    Ok(unsatisfied)
}

/// One group of alternatives: apt installs the first that can be
/// installed, unless one is already going in — mirror that first one,
/// and keep what is already chosen. False when nothing satisfies it.
fn alternative(index: &Index, group: &[Relation], w: &mut Walk) -> bool {
    let mut first: Option<usize> = None;
    let mut satisfied = false;
    for alt in group {
        let s = index.satisfiers(alt);
        if s.iter().any(|x| w.chosen.contains(x)) {
            satisfied = true;
        }
        if first.is_none() {
            first = s.first().copied();
        }
    }
    match first {
        Some(f) => {
            w.push(f);
            true
        }
        None => satisfied,
    }
}

/// `select` release by release: `family[i]` is the index into `families`
/// of the release (`bookworm`, `trixie`) package `i` comes from; `shared`
/// marks the families of vendors' repositories (NodeSource's `nodistro`),
/// which serve every release. Each release gets the selection's `packages`
/// and its own `suites` entry, resolved among its own packages and the
/// shared ones only (a bookworm profile never gets trixie's versions); a
/// release with nothing asked of it gets nothing. With no release at all
/// (a mirror of a vendor's repository alone) every family is one.
pub fn select_families(
    pkgs: &[Package],
    family: &[usize],
    families: &[String],
    shared: &[bool],
    sel: &Selection,
) -> Result<Selected> {
    let mut releases: Vec<usize> = (0..families.len()).filter(|&f| !shared[f]).collect();
    if releases.is_empty() {
        releases = (0..families.len()).collect();
    }
    if sel.full || (sel.suites.is_empty() && releases.len() <= 1) {
        return select(pkgs, sel);
    }
    for f in sel.suites.keys() {
        if !releases.iter().any(|&r| families[r] == *f) {
            bail!(
                "release {f} is not among the mirrored suites (releases: {})",
                releases
                    .iter()
                    .map(|&r| families[r].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    let mut out = Selected::default();
    let mut chosen = BTreeSet::new();
    for &fi in &releases {
        let f = &families[fi];
        let mut packages = sel.packages.clone();
        for p in sel.suites.get(f).into_iter().flatten() {
            if !packages.contains(p) {
                packages.push(p.clone());
            }
        }
        if packages.is_empty() && sel.priorities.is_empty() {
            continue;
        }
        let ix: Vec<usize> = (0..pkgs.len())
            .filter(|&i| family[i] == fi || (shared[family[i]] && !releases.contains(&family[i])))
            .collect();
        let sub: Vec<Package> = ix.iter().map(|&i| pkgs[i].clone()).collect();
        let one = Selection {
            packages,
            suites: Default::default(),
            ..sel.clone()
        };
        let got = select(&sub, &one).with_context(|| format!("release {f}"))?;
        chosen.extend(got.chosen.into_iter().map(|j| ix[j]));
        out.unsatisfied
            .extend(got.unsatisfied.into_iter().map(|u| format!("{f}: {u}")));
    }
    out.chosen = chosen.into_iter().collect();
    Ok(out)
}

fn fmt_relation(r: &Relation) -> String {
    match &r.constraint {
        Some(c) => format!("{} ({:?} {})", r.name, c.op, c.version),
        None => r.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, extra: &[(&str, &str)]) -> Package {
        let mut p = Package {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            filename: format!("pool/main/{name}_{version}.deb"),
            size: 1,
            sha256: "0".repeat(64),
            priority: Some("optional".into()),
            essential: false,
            depends: None,
            pre_depends: None,
            recommends: None,
            provides: None,
            multi_arch: None,
        };
        for (k, v) in extra {
            match *k {
                "Depends" => p.depends = Some(v.to_string()),
                "Pre-Depends" => p.pre_depends = Some(v.to_string()),
                "Recommends" => p.recommends = Some(v.to_string()),
                "Provides" => p.provides = Some(v.to_string()),
                "Priority" => p.priority = Some(v.to_string()),
                "Essential" => p.essential = true,
                _ => unreachable!(),
            }
        }
        p
    }

    fn names(pkgs: &[Package], s: &Selected) -> Vec<String> {
        s.chosen
            .iter()
            .map(|&i| format!("{}={}", pkgs[i].name, pkgs[i].version))
            .collect()
    }

    /// Two releases side by side: each profile's packages resolve among
    /// its own release's versions; the global list applies to both.
    #[test]
    fn each_release_gets_its_own_closure() {
        let pkgs = vec![
            pkg("app", "1", &[("Depends", "lib")]),
            pkg("lib", "1", &[]),
            pkg("app", "2", &[("Depends", "lib (>= 2)")]),
            pkg("lib", "2", &[]),
            pkg("tool", "2", &[]),
            pkg("less", "1", &[]),
            pkg("less", "2", &[]),
        ];
        let family = [0, 0, 1, 1, 1, 0, 1];
        let families = ["bookworm".to_string(), "trixie".to_string()];
        let shared = [false, false];
        let sel = Selection {
            packages: vec!["less".into()],
            closure: true,
            suites: [
                ("bookworm".to_string(), vec!["app".to_string()]),
                (
                    "trixie".to_string(),
                    vec!["app".to_string(), "tool".to_string()],
                ),
            ]
            .into(),
            ..Default::default()
        };
        let s = select_families(&pkgs, &family, &families, &shared, &sel).unwrap();
        let mut got = names(&pkgs, &s);
        got.sort();
        assert_eq!(
            got,
            [
                "app=1", "app=2", "less=1", "less=2", "lib=1", "lib=2", "tool=2"
            ]
        );
        // A package of one release only, asked of the other: named.
        let bad = Selection {
            suites: [("bookworm".to_string(), vec!["tool".to_string()])].into(),
            ..sel.clone()
        };
        let e = format!(
            "{:#}",
            select_families(&pkgs, &family, &families, &shared, &bad).unwrap_err()
        );
        assert!(e.contains("release bookworm") && e.contains("tool"), "{e}");
        // Nothing asked of a release: nothing of it.
        let one = Selection {
            packages: Vec::new(),
            suites: [("trixie".to_string(), vec!["tool".to_string()])].into(),
            ..sel
        };
        let s = select_families(&pkgs, &family, &families, &shared, &one).unwrap();
        assert_eq!(names(&pkgs, &s), ["tool=2"]);
        // A vendor's repository serves every release.
        let mut pkgs = pkgs;
        pkgs.push(pkg("vendortool", "1", &[("Depends", "lib")]));
        let family = [0, 0, 1, 1, 1, 0, 1, 2];
        let families = [
            "bookworm".to_string(),
            "trixie".to_string(),
            "nodistro".to_string(),
        ];
        let shared = [false, false, true];
        let v = Selection {
            packages: Vec::new(),
            closure: false,
            suites: [("bookworm".to_string(), vec!["vendortool".to_string()])].into(),
            ..Default::default()
        };
        let s = select_families(&pkgs, &family, &families, &shared, &v).unwrap();
        assert_eq!(names(&pkgs, &s), ["vendortool=1"]);
    }

    #[test]
    fn closure_follows_alternatives_provides_and_versions() {
        let pkgs = vec![
            pkg(
                "app",
                "1",
                &[
                    ("Depends", "lib (>= 2) | oldlib, mta"),
                    ("Recommends", "docs"),
                ],
            ),
            pkg("lib", "1", &[]),
            pkg("lib", "2", &[("Pre-Depends", "base")]),
            pkg("oldlib", "1", &[]),
            pkg("postfix", "3", &[("Provides", "mta")]),
            pkg("exim", "4", &[("Provides", "mta"), ("Priority", "extra")]),
            pkg(
                "base",
                "1",
                &[("Essential", "yes"), ("Priority", "required")],
            ),
            pkg(
                "req",
                "1",
                &[("Priority", "required"), ("Depends", "gone (>= 9)")],
            ),
            pkg("docs", "1", &[]),
            pkg("unrelated", "1", &[]),
        ];
        let sel = Selection {
            packages: vec!["app".into()],
            closure: true,
            ..Default::default()
        };
        let s = select(&pkgs, &sel).unwrap();
        assert_eq!(
            names(&pkgs, &s),
            ["app=1", "base=1", "lib=2", "postfix=3", "req=1"]
        );
        assert_eq!(s.unsatisfied, ["req 1 depends on gone (Ge 9)"]);

        let with_rec = Selection {
            recommends: true,
            ..sel.clone()
        };
        assert!(names(&pkgs, &select(&pkgs, &with_rec).unwrap()).contains(&"docs=1".to_string()));

        let exact = Selection {
            packages: vec!["lib=1".into()],
            closure: false,
            ..Default::default()
        };
        assert_eq!(names(&pkgs, &select(&pkgs, &exact).unwrap()), ["lib=1"]);

        let prio = Selection {
            priorities: vec!["extra".into()],
            closure: false,
            ..Default::default()
        };
        assert_eq!(names(&pkgs, &select(&pkgs, &prio).unwrap()), ["exim=4"]);

        let missing = Selection {
            packages: vec!["nope".into()],
            ..sel
        };
        assert!(
            select(&pkgs, &missing)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }
}

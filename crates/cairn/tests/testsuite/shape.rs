//! The code's shape, held by tests (read from the sources, no build): the
//! modules use each other without a cycle, the shared rooms (cmd, fsutil,
//! names, host, parallel, progress, trust) use no link of the chain, no
//! function is longer than 120 lines and no file longer than 800 lines
//! outside its tests — each exception named here, with its reason — and
//! the scripts that set pipefail never cut a pipe short.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Longest function, in lines, outside tests.
const MAX_FN: usize = 120;
/// Longest file, in lines before its `#[cfg(test)]` module.
const MAX_FILE: usize = 800;

/// Functions allowed to be longer, and why: (module path, fn name, why).
const LONG_FNS: &[(&str, &str, &str)] = &[];

/// Files allowed to be longer, and why: (path below src/, why).
const LONG_FILES: &[(&str, &str)] = &[];

/// The modules every link may use, which use no link themselves.
const SHARED_ROOMS: &[&str] = &[
    "cmd", "fsutil", "names", "host", "parallel", "progress", "trust",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every module of the library: its path (`mirror::sync::indices`, `` for
/// the crate root) and its file.
fn modules() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut todo = vec![src()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin" && n != "assets") {
                    todo.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            out.insert(parts.join("::"), p);
        }
    }
    out
}

/// A file's code before its test module.
fn code(p: &Path) -> String {
    let t = fs::read_to_string(p).unwrap();
    match t.find("#[cfg(test)]") {
        Some(i) => t[..i].to_string(),
        None => t,
    }
}

fn ident_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The lower-case `a::b::c` path that starts at byte `at` of `t`.
fn path_at(t: &str, at: usize) -> String {
    let mut end = at;
    let b = t.as_bytes();
    loop {
        let seg = t[end..].chars().take_while(|c| ident_char(*c)).count();
        if seg == 0 {
            break;
        }
        end += seg;
        if t[end..].starts_with("::") && b.get(end + 2).is_some_and(|c| ident_char(*c as char)) {
            end += 2;
        } else {
            break;
        }
    }
    t[at..end].to_string()
}

/// Whether `t[..at]` ends in the middle of an identifier or path.
fn glued(t: &str, at: usize) -> bool {
    t[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
}

/// The module paths a file's code names: `crate::…` (and `use crate::a::{…}`
/// groups), `super::…`, and its own submodules by name.
fn references(m: &str, file: &Path) -> BTreeSet<String> {
    let t = code(file);
    let me: Vec<&str> = if m.is_empty() {
        vec![]
    } else {
        m.split("::").collect()
    };
    let mut refs = BTreeSet::new();
    let mut i = 0;
    while let Some(k) = t[i..].find("crate::") {
        let at = i + k;
        i = at + 7;
        if glued(&t, at) {
            continue;
        }
        let p = path_at(&t, i);
        refs.insert(p.clone());
        // `use crate::a::{b, c::d}`
        let after = &t[i + p.len()..];
        if let Some(group) = after.strip_prefix("::{") {
            let end = group.find('}').unwrap_or(0);
            for part in group[..end].split(',') {
                let part = part.trim().split(" as ").next().unwrap_or("").trim();
                if !part.is_empty() {
                    refs.insert(format!("{p}::{part}"));
                }
            }
        }
    }
    let mut i = 0;
    while let Some(k) = t[i..].find("super::") {
        let at = i + k;
        if glued(&t, at) {
            i = at + 7;
            continue;
        }
        let mut up = 0;
        let mut j = at;
        while t[j..].starts_with("super::") {
            up += 1;
            j += 7;
        }
        i = j;
        let base = &me[..me.len().saturating_sub(up)];
        let p = path_at(&t, j);
        let mut full: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        full.push(p);
        refs.insert(full.join("::"));
    }
    // Its own submodules, by name.
    for line in t.lines() {
        let l = line.trim_start();
        let l = l
            .strip_prefix("pub ")
            .or_else(|| l.strip_prefix("pub(crate) "))
            .unwrap_or(l);
        let Some(child) = l.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else {
            continue;
        };
        let pat = format!("{child}::");
        let mut i = 0;
        while let Some(k) = t[i..].find(&pat) {
            let at = i + k;
            i = at + pat.len();
            if glued(&t, at) {
                continue;
            }
            let mut full: Vec<String> = me.iter().map(|s| s.to_string()).collect();
            full.push(path_at(&t, at));
            refs.insert(full.join("::"));
        }
    }
    refs
}

/// Module → the modules it uses (the longest module path each reference
/// names). A module's use of its ancestors is its own namespace, not an
/// arrow; a parent's use of its children is.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, file) in &mods {
        let mut to = BTreeSet::new();
        for r in references(m, file) {
            let seg: Vec<&str> = r.split("::").collect();
            if let Some(t) = (1..=seg.len())
                .rev()
                .map(|k| seg[..k].join("::"))
                .find(|c| mods.contains_key(c))
            {
                let ancestor = t.is_empty() || m.starts_with(&format!("{t}::"));
                if t != *m && !ancestor {
                    to.insert(t);
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

/// The cycles of `g` (strongly connected components of two or more).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on g, then components on the reverse graph.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_string()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, out);
        }
        out.push(v.to_string());
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut comp = Vec::new();
        visit(v, &rev, &mut seen, &mut comp);
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

/// The reader this check's own parser must see: a cycle made on purpose.
#[test]
fn the_cycle_check_sees_a_cycle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&g), [vec!["a", "b", "c"]]);
    let t = "use crate::mirror::{config::Needs, state};\nfn f() { super::x::y(); crate::trust::hash::hex(); }\n";
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("m.rs");
    fs::write(&f, t).unwrap();
    let r = references("live::apply", &f);
    for want in [
        "mirror",
        "mirror::config::Needs",
        "mirror::state",
        "live::x::y",
        "trust::hash::hex",
    ] {
        assert!(r.contains(want), "{want} not in {r:?}");
    }
}

/// No module uses another that (through others) uses it: the chain reads
/// one way (mirror → profile → rootfs → image → boot → upgrade → live →
/// fleet), and the shared rooms use no link of it.
#[test]
fn modules_use_each_other_without_a_cycle() {
    let g = graph();
    assert!(
        g.len() > 40,
        "{} modules read: the reader is broken",
        g.len()
    );
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles (each line: modules that use each other, through `use crate::…`, `super::` or a child's name):\n{}",
        found
            .iter()
            .map(|c| c.join(" ↔ "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut wrong = Vec::new();
    for (m, to) in &g {
        let room = m.split("::").next().unwrap_or("");
        if !SHARED_ROOMS.contains(&room) {
            continue;
        }
        for t in to {
            let top = t.split("::").next().unwrap_or("");
            if !SHARED_ROOMS.contains(&top) {
                wrong.push(format!("{m} uses {t}"));
            }
        }
    }
    assert!(wrong.is_empty(), "shared rooms using a link: {wrong:?}");
}

/// Every function of at most MAX_FN lines and every file of at most
/// MAX_FILE lines outside tests, but the exceptions named above.
#[test]
fn functions_and_files_stay_short() {
    let mut long = Vec::new();
    for (m, file) in modules() {
        let t = code(&file);
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        let lines = t.lines().count();
        if lines > MAX_FILE && !LONG_FILES.iter().any(|(p, _)| *p == rel) {
            long.push(format!("{rel}: {lines} lines (at most {MAX_FILE})"));
        }
        let ls: Vec<&str> = t.lines().collect();
        let mut i = 0;
        while i < ls.len() {
            let l = ls[i].trim_start();
            let l = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|p| l.strip_prefix(p))
                .unwrap_or(l);
            let l = l.strip_prefix("const ").unwrap_or(l);
            let Some(rest) = l.strip_prefix("fn ") else {
                i += 1;
                continue;
            };
            let name: String = rest.chars().take_while(|c| ident_char(*c)).collect();
            // Its body: from the line with its first `{` to the matching `}`.
            let (mut depth, mut started, mut j) = (0i32, false, i);
            'body: while j < ls.len() {
                for c in ls[j].chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            started = true;
                        }
                        '}' => depth -= 1,
                        ';' if !started => break 'body,
                        _ => {}
                    }
                }
                if started && depth <= 0 {
                    break;
                }
                j += 1;
            }
            let n = j - i + 1;
            if started && n > MAX_FN && !LONG_FNS.iter().any(|(pm, f, _)| *pm == m && *f == name) {
                long.push(format!("{rel}: fn {name}: {n} lines (at most {MAX_FN})"));
            }
            i += 1;
        }
    }
    assert!(
        long.is_empty(),
        "too long (split it, or name it in shape.rs with the reason):\n{}",
        long.join("\n")
    );
}

/// A line of a `set -o pipefail` script that pipes into a reader that may
/// stop early (`head`, `grep -q`, `grep -m`): the writer before it can then
/// die of SIGPIPE, and the pipeline fails with 141 or not, by chance. CI
/// once failed so after a green suite (`sort | head -25` in scripts/test).
fn cuts_a_pipe_short(line: &str) -> bool {
    let code = line.split(" #").next().unwrap_or(line);
    if code.trim_start().starts_with('#') {
        return false;
    }
    code.split('|').skip(1).any(|part| {
        let mut words = part.split_whitespace();
        match words.next() {
            Some("head") => true,
            Some("grep") => words
                .take_while(|w| w.starts_with('-') && !w.starts_with("--"))
                .any(|w| w.contains('q') || w.contains('m')),
            _ => false,
        }
    })
}

#[test]
fn pipefail_scripts_never_cut_a_pipe_short() {
    assert!(cuts_a_pipe_short("    sort -rn \"$holds\" | head -25"));
    assert!(cuts_a_pipe_short("if echo \"$r\" | grep -q '^E: '; then"));
    assert!(cuts_a_pipe_short("a | sort -V | grep -Eqx 1"));
    assert!(!cuts_a_pipe_short("a | awk 'NR <= 25'"));
    assert!(!cuts_a_pipe_short("a || b # then | head"));
    assert!(!cuts_a_pipe_short("grep -q x <<<\"$r\""));
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut scripts: Vec<PathBuf> = fs::read_dir(top.join("scripts"))
        .expect("scripts/")
        .map(|e| e.expect("scripts/ entry").path())
        .collect();
    scripts.push(top.join(".ci/run"));
    let lib = fs::read_to_string(top.join("scripts/lib.sh")).expect("scripts/lib.sh");
    assert!(
        lib.contains("set -euo pipefail"),
        "scripts/lib.sh sets pipefail"
    );
    let mut bad = Vec::new();
    for p in scripts.iter().filter(|p| p.is_file()) {
        let t = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if !(t.contains("pipefail") || t.contains("lib.sh")) {
            continue;
        }
        for (n, l) in t.lines().enumerate() {
            if cuts_a_pipe_short(l) {
                bad.push(format!("{}:{}: {}", p.display(), n + 1, l.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "under pipefail these can fail with SIGPIPE (read the whole input: awk 'NR <= n', or grep <<<):\n{}",
        bad.join("\n")
    );
}

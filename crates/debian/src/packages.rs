//! `Packages` indices: the binary packages of one component and architecture.

use crate::ParseError;
use crate::deb822::paragraphs;

/// One binary package stanza, reduced to what mirroring and dependency
/// resolution need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub priority: Option<String>,
    pub essential: bool,
    pub depends: Option<String>,
    pub pre_depends: Option<String>,
    pub recommends: Option<String>,
    pub provides: Option<String>,
    pub multi_arch: Option<String>,
}

/// Parses a Packages file. Every stanza must have Package, Version,
/// Architecture, Filename, Size and SHA256; errors name the stanza's line.
pub fn parse_packages(text: &str) -> Result<Vec<Package>, ParseError> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        out.push(from_paragraph(&p?)?);
    }
    Ok(out)
}

/// Streams a Packages file stanza by stanza, so a 50 MB index never sits in
/// memory whole. Errors name the line in the whole file.
pub fn read_packages<R: std::io::BufRead>(
    mut r: R,
    mut each: impl FnMut(Package),
) -> Result<(), ParseError> {
    let mut stanza = String::new();
    let mut line = String::new();
    let mut start = 1usize;
    let mut lineno = 0usize;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| ParseError::Other(format!("reading: {e}")))?;
        if n > 0 {
            lineno += 1;
        }
        if n == 0 || line.trim().is_empty() {
            if !stanza.trim().is_empty() {
                for p in paragraphs(&stanza) {
                    let p = p.map_err(|e| shift(e, start - 1))?;
                    each(from_paragraph(&p).map_err(|e| shift(e, start - 1))?);
                }
            }
            stanza.clear();
            start = lineno + 1;
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        stanza.push_str(&line);
    }
}

fn shift(e: ParseError, by: usize) -> ParseError {
    match e {
        ParseError::Line { line, msg } => ParseError::Line {
            line: line + by,
            msg,
        },
        other => other,
    }
}

/// What a stanza says of its pool file: (Filename, Size, SHA-256 in lower
/// case), checked as `read_packages` checks them (the stanza must name
/// its Package, Version and Architecture too).
fn pool_entry<'a>(p: &crate::Paragraph<'a>) -> Result<(&'a str, u64, String), ParseError> {
    // The six fields in one pass over the stanza, the first of each name
    // (as `Paragraph::get` finds it).
    const NAMES: [&str; 6] = [
        "SHA256",
        "Size",
        "Package",
        "Version",
        "Architecture",
        "Filename",
    ];
    let mut found: [Option<&'a str>; 6] = [None; 6];
    for &(k, v) in &p.fields {
        if let Some(n) = NAMES
            .iter()
            .position(|n| n.len() == k.len() && n.eq_ignore_ascii_case(k))
        {
            found[n].get_or_insert(v);
        }
    }
    let need = |f: &str| {
        let n = NAMES.iter().position(|n| *n == f);
        n.and_then(|n| found[n]).ok_or_else(|| ParseError::Line {
            line: p.line,
            msg: format!("stanza has no {f} field"),
        })
    };
    let sha256 = need("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ParseError::Line {
            line: p.line,
            msg: format!("bad SHA256 {sha256:?}"),
        });
    }
    let size = need("Size")?;
    for f in ["Package", "Version", "Architecture"] {
        need(f)?;
    }
    let filename = need("Filename")?;
    let size = size.parse().map_err(|_| ParseError::Line {
        line: p.line,
        msg: format!("bad Size {size:?}"),
    })?;
    Ok((filename, size, sha256.to_ascii_lowercase()))
}

/// The pool entries of a whole Packages text, (Filename, Size, SHA-256),
/// stanza by stanza: what checking files against it needs, read as
/// `read_packages` reads them (the same checks, the same errors) without
/// making a `Package` of each stanza. Errors name the line.
pub fn read_pool_entries(
    text: &str,
    mut each: impl FnMut(&str, u64, String),
) -> Result<(), ParseError> {
    let mut stanzas = paragraphs(text);
    let mut p = crate::Paragraph::default();
    while let Some(read) = stanzas.next_into(&mut p) {
        read?;
        let (filename, size, sha256) = pool_entry(&p)?;
        each(filename, size, sha256);
    }
    Ok(())
}

/// A pool entry: (Filename, Size, SHA-256).
pub type PoolEntry = (String, u64, String);

/// `read_pool_entries` on `parts` threads: the text is cut after blank
/// lines (`\n\n`) into parts read side by side. Returns the entries
/// `keep` keeps, in file order, or the first error in file order (its
/// line counted in the whole text), as reading it in one go would.
pub fn pool_entries_in_parts(
    text: &str,
    parts: usize,
    keep: impl Fn(&str) -> bool + Sync,
) -> Result<Vec<PoolEntry>, ParseError> {
    let bytes = text.as_bytes();
    let mut cuts = vec![0usize];
    for k in 1..parts.max(1) {
        let from = (bytes.len() * k / parts).max(*cuts.last().unwrap_or(&0));
        match bytes[from..].windows(2).position(|w| w == b"\n\n") {
            // (After two ASCII bytes: a character boundary.)
            Some(i) if from + i + 2 < bytes.len() => cuts.push(from + i + 2),
            _ => break,
        }
    }
    cuts.push(bytes.len());
    let read = |a: usize, b: usize| {
        let mut kept = Vec::new();
        let r = read_pool_entries(&text[a..b], |f, n, h| {
            if keep(f) {
                kept.push((f.to_string(), n, h));
            }
        });
        r.map(|()| kept)
    };
    let done: Vec<Result<Vec<PoolEntry>, ParseError>> = std::thread::scope(|s| {
        let running: Vec<_> = cuts
            .windows(2)
            .skip(1)
            .map(|w| s.spawn(move || read(w[0], w[1])))
            .collect();
        let mut done = vec![read(cuts[0], cuts[1])];
        for h in running {
            done.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        done
    });
    let mut out = Vec::new();
    for (k, r) in done.into_iter().enumerate() {
        // (Lines are counted only for an error: its number in the whole text.)
        let before = || bytes[..cuts[k]].iter().filter(|&&c| c == b'\n').count();
        out.extend(r.map_err(|e| shift(e, before()))?);
    }
    Ok(out)
}

fn from_paragraph(p: &crate::Paragraph<'_>) -> Result<Package, ParseError> {
    {
        let need = |f: &str| {
            p.get(f).ok_or_else(|| ParseError::Line {
                line: p.line,
                msg: format!("stanza has no {f} field"),
            })
        };
        let (filename, size, sha256) = pool_entry(p)?;
        Ok(Package {
            name: need("Package")?.to_string(),
            version: need("Version")?.to_string(),
            architecture: need("Architecture")?.to_string(),
            filename: filename.to_string(),
            size,
            sha256,
            priority: p.get("Priority").map(String::from),
            essential: p
                .get("Essential")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            depends: p.get("Depends").map(String::from),
            pre_depends: p.get("Pre-Depends").map(String::from),
            recommends: p.get("Recommends").map(String::from),
            provides: p.get("Provides").map(String::from),
            multi_arch: p.get("Multi-Arch").map(String::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_requires_fields() {
        let h = "a".repeat(64);
        let text = format!(
            "Package: base-files\nVersion: 12.4\nArchitecture: amd64\nEssential: yes\nPriority: required\n\
Pre-Depends: awk\nFilename: pool/main/b/base-files/base-files_12.4_amd64.deb\nSize: 70000\nSHA256: {h}\n\n\
Package: x\nVersion: 1\nArchitecture: all\nFilename: pool/main/x/x_1_all.deb\nSize: 1\nSHA256: {h}\n"
        );
        let ps = parse_packages(&text).unwrap();
        assert_eq!(ps.len(), 2);
        assert!(ps[0].essential);
        assert_eq!(ps[0].pre_depends.as_deref(), Some("awk"));
        assert_eq!(ps[1].size, 1);
        let err = parse_packages("Package: x\nVersion: 1\n").unwrap_err();
        assert_eq!(err.to_string(), "line 1: stanza has no SHA256 field");
        let mut streamed = Vec::new();
        read_packages(std::io::Cursor::new(text.as_bytes()), |p| streamed.push(p)).unwrap();
        assert_eq!(streamed, ps);
        let bad = format!("{text}\n\nPackage: y\nVersion: 1\n");
        let err = read_packages(std::io::Cursor::new(bad.as_bytes()), |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "line 19: stanza has no SHA256 field");
    }

    /// The pool entries are what `read_packages` reads, entry for entry
    /// and error for error, whatever the text.
    #[test]
    fn pool_entries_agree_with_read_packages() {
        let h = "Ab".repeat(32);
        let good = format!(
            "# c\nPackage: a\nVersion: 1\nArchitecture: all\nDescription: x\n y\nfilename: pool/a.deb\n\
size: 7\nsha256: {h}\nSHA256: {}\n\n \t\n\nPackage: b\r\nVersion: 2\r\nArchitecture: amd64\r\n\
Filename:  pool/b b.deb \r\nSize: 0\r\nSHA256: {h}\r\n",
            "0".repeat(64)
        );
        let variants = [
            good.clone(),
            good.replace("Size: 0", "Size: -1"),
            good.replace("size: 7", "size: 7\n 8"),
            good.replace(&format!("sha256: {h}"), "sha256: abc"),
            good.replace("Filename:  pool/b b.deb \r\n", ""),
            good.replace("Version: 2\r\n", ""),
            good.replace("Package: a", " continued"),
            good.replace("Description: x", "no colon here"),
            format!("{good}\n\nPackage: c\n"),
            String::new(),
        ];
        for text in &variants {
            let mut full = Vec::new();
            let a = read_packages(std::io::Cursor::new(text.as_bytes()), |p| {
                full.push((p.filename, p.size, p.sha256))
            });
            let mut lean = Vec::new();
            let b = read_pool_entries(text, |f, n, h| lean.push((f.to_string(), n, h)));
            assert_eq!(
                a.map_err(|e| e.to_string()),
                b.map_err(|e| e.to_string()),
                "{text:?}"
            );
            assert_eq!(full, lean, "{text:?}");
        }
        // Cut in parts read side by side: the same entries, the same
        // first error and its line, whatever the cuts.
        let many = format!("{good}\n\n{good}\n{good}\n\n\n");
        for text in variants.iter().chain([&many]) {
            let mut whole = Vec::new();
            let a = read_pool_entries(text, |f, n, h| whole.push((f.to_string(), n, h)));
            for parts in 1..=5 {
                let b = pool_entries_in_parts(text, parts, |_| true);
                match &a {
                    Ok(()) => assert_eq!(b.as_ref().ok(), Some(&whole), "{parts} {text:?}"),
                    Err(e) => assert_eq!(
                        b.map_err(|e| e.to_string()).err(),
                        Some(e.to_string()),
                        "{parts} {text:?}"
                    ),
                }
            }
        }
        let bad = format!("{good}\n\n{good}\n\nPackage: late\n");
        let e = pool_entries_in_parts(&bad, 3, |_| true).unwrap_err();
        assert_eq!(
            e.to_string(),
            read_pool_entries(&bad, |_, _, _| {})
                .unwrap_err()
                .to_string()
        );
        let kept = pool_entries_in_parts(&many, 2, |f| f.starts_with("pool/b")).unwrap();
        assert_eq!(kept.len(), 3);
        let mut lean = Vec::new();
        read_pool_entries(&good, |f, n, h| lean.push((f.to_string(), n, h))).unwrap();
        assert_eq!(lean[0], ("pool/a.deb".into(), 7, h.to_ascii_lowercase()));
        assert_eq!(lean[1].0, "pool/b b.deb");
    }
}

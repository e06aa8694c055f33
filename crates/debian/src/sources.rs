//! apt source lists: deb822 `*.sources` files and one-line `sources.list`.

use crate::ParseError;
use crate::deb822::paragraphs;

/// One apt source: a set of URIs × suites × components.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceEntry {
    /// `deb`, `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    /// Keyring paths, or an inline armored key block.
    pub signed_by: Option<String>,
    pub enabled: bool,
    /// 1-based line where the entry starts.
    pub line: usize,
}

/// Parses a deb822 `.sources` file.
pub fn parse_deb822_sources(text: &str) -> Result<Vec<SourceEntry>, ParseError> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        let p = p?;
        let words = |f: &str| -> Vec<String> {
            p.get(f)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let e = SourceEntry {
            types: words("Types"),
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            architectures: words("Architectures"),
            signed_by: p.get("Signed-By").map(String::from),
            enabled: !p
                .get("Enabled")
                .is_some_and(|v| v.eq_ignore_ascii_case("no")),
            line: p.line,
        };
        if e.types.is_empty() || e.uris.is_empty() || e.suites.is_empty() {
            return Err(ParseError::Line {
                line: p.line,
                msg: "a source needs Types, URIs and Suites".into(),
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// Parses a one-line-style `sources.list`.
pub fn parse_one_line_sources(text: &str) -> Result<Vec<SourceEntry>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |msg: &str| ParseError::Line {
            line: i + 1,
            msg: msg.to_string(),
        };
        let (ty, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| err("expected `deb URI SUITE [COMPONENT...]`"))?;
        let mut rest = rest.trim_start();
        let mut e = SourceEntry {
            types: vec![ty.to_string()],
            enabled: true,
            line: i + 1,
            ..Default::default()
        };
        if let Some(r) = rest.strip_prefix('[') {
            let (opts, after) = r
                .split_once(']')
                .ok_or_else(|| err("unclosed `[` options"))?;
            for opt in opts.split_whitespace() {
                let (k, v) = opt
                    .split_once('=')
                    .ok_or_else(|| err("option without `=`"))?;
                let vals: Vec<String> = v.split(',').map(String::from).collect();
                match k {
                    "arch" => e.architectures = vals,
                    "signed-by" => e.signed_by = Some(v.to_string()),
                    _ => {}
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or_else(|| err("missing URI"))?;
        let suite = words.next().ok_or_else(|| err("missing suite"))?;
        e.uris = vec![uri.to_string()];
        e.suites = vec![suite.to_string()];
        e.components = words.map(String::from).collect();
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://x.invalid/\nSuites: sid\n\
Components: main\nEnabled: no\n";
        let s = parse_deb822_sources(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        assert!(s[0].enabled && !s[1].enabled);
        assert!(parse_deb822_sources("Types: deb\n").is_err());
    }

    #[test]
    fn one_line_sources() {
        let text = "# x\ndeb [arch=amd64,i386 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib # c\n\
deb-src http://m.invalid/debian bookworm main\n";
        let s = parse_one_line_sources(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].architectures, ["amd64", "i386"]);
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[0].line, 2);
        assert_eq!(s[1].types, ["deb-src"]);
        assert!(parse_one_line_sources("deb\n").is_err());
    }
}

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
        let p = p?;
        let need = |f: &str| {
            p.get(f).ok_or_else(|| ParseError::Line {
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
        out.push(Package {
            name: need("Package")?.to_string(),
            version: need("Version")?.to_string(),
            architecture: need("Architecture")?.to_string(),
            filename: need("Filename")?.to_string(),
            size: size.parse().map_err(|_| ParseError::Line {
                line: p.line,
                msg: format!("bad Size {size:?}"),
            })?,
            sha256: sha256.to_ascii_lowercase(),
            priority: p.get("Priority").map(String::from),
            essential: p
                .get("Essential")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            depends: p.get("Depends").map(String::from),
            pre_depends: p.get("Pre-Depends").map(String::from),
            recommends: p.get("Recommends").map(String::from),
            provides: p.get("Provides").map(String::from),
            multi_arch: p.get("Multi-Arch").map(String::from),
        });
    }
    Ok(out)
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
    }
}

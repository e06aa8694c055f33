//! `Release` files: suite metadata, validity dates and the SHA256 list of indices.

use std::collections::BTreeMap;

use crate::ParseError;
use crate::date::parse_release_date;
use crate::deb822::paragraphs;

/// A file listed in a Release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFile {
    pub size: u64,
    /// Lower-case hex SHA256.
    pub sha256: String,
}

/// The parts of a Release file a mirror needs.
#[derive(Debug, Clone, Default)]
pub struct Release {
    pub origin: Option<String>,
    pub suite: Option<String>,
    pub codename: Option<String>,
    /// Seconds since the epoch.
    pub date: Option<i64>,
    pub valid_until: Option<i64>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    pub acquire_by_hash: bool,
    /// `No-Support-for-Architecture-all: Packages`: arch `all` packages are
    /// listed in every architecture's Packages, so binary-all is not needed.
    pub no_support_arch_all: bool,
    /// Path relative to the suite directory → size and hash.
    pub files: BTreeMap<String, ReleaseFile>,
}

impl Release {
    pub fn parse(text: &str) -> Result<Release, ParseError> {
        let para = paragraphs(text)
            .next()
            .ok_or_else(|| ParseError::Other("empty Release file".into()))??;
        let list = |f: &str| -> Vec<String> {
            para.get(f)
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default()
        };
        let mut rel = Release {
            origin: para.get("Origin").map(String::from),
            suite: para.get("Suite").map(String::from),
            codename: para.get("Codename").map(String::from),
            date: para.get("Date").map(parse_release_date).transpose()?,
            valid_until: para
                .get("Valid-Until")
                .map(parse_release_date)
                .transpose()?,
            architectures: list("Architectures"),
            components: list("Components"),
            acquire_by_hash: para
                .get("Acquire-By-Hash")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            no_support_arch_all: para
                .get("No-Support-for-Architecture-all")
                .is_some_and(|v| v.split_whitespace().any(|w| w == "Packages")),
            files: BTreeMap::new(),
        };
        let sums = para.get("SHA256").ok_or_else(|| {
            ParseError::Other("Release has no SHA256 list (apt refuses weaker hashes)".into())
        })?;
        for line in sums.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let (Some(hash), Some(size), Some(path), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(ParseError::Other(format!(
                    "bad SHA256 line in Release: {line:?}"
                )));
            };
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ParseError::Other(format!(
                    "bad SHA256 in Release: {line:?}"
                )));
            }
            let size = size
                .parse()
                .map_err(|_| ParseError::Other(format!("bad size in Release: {line:?}")))?;
            // Paths become file names under the suite directory (and by-hash
            // links): a signed Release that names one outside it is refused.
            if !plain_relative(path) {
                return Err(ParseError::Other(format!(
                    "Release lists a path outside its suite: {path:?}"
                )));
            }
            rel.files.insert(
                path.to_string(),
                ReleaseFile {
                    size,
                    sha256: hash.to_ascii_lowercase(),
                },
            );
        }
        Ok(rel)
    }
}

/// A relative path of plain components (no `/` at either end, no empty,
/// `.` or `..` component, no NUL or backslash).
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains(['\0', '\\'])
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_shape() {
        let text = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n\
Valid-Until: Sat, 18 Jul 2026 10:16:37 UTC\nAcquire-By-Hash: yes\nNo-Support-for-Architecture-all: Packages\n\
Architectures: all amd64\nComponents: main contrib\nMD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 main/x\n\
SHA256:\n 515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f 50060337 main/binary-amd64/Packages\n \
9E0B5AABB2465B3D2E7A7FE27F9913846277833F7A2826E7767ACCFF5B588C5A  8790396 main/binary-amd64/Packages.xz\n";
        let r = Release::parse(text).unwrap();
        assert_eq!(r.codename.as_deref(), Some("bookworm"));
        assert!(r.acquire_by_hash && r.no_support_arch_all);
        assert_eq!(r.components, ["main", "contrib"]);
        assert_eq!(r.valid_until.unwrap() - r.date.unwrap(), 7 * 86400);
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.files["main/binary-amd64/Packages.xz"].size, 8790396);
        assert!(
            r.files["main/binary-amd64/Packages.xz"]
                .sha256
                .starts_with("9e0b")
        );
    }

    #[test]
    fn refuses_missing_or_bad_sums() {
        assert!(Release::parse("Suite: x\nMD5Sum:\n 00 1 a\n").is_err());
        assert!(Release::parse("Suite: x\nSHA256:\n zz 1 a\n").is_err());
    }

    #[test]
    fn refuses_paths_outside_the_suite() {
        let h = "515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f";
        for p in [
            "../../etc/x",
            "/etc/x",
            "main/../../x",
            "main//x",
            "./x",
            "main/x/",
            "a\\b",
        ] {
            let e = Release::parse(&format!("Suite: x\nSHA256:\n {h} 1 {p}\n")).unwrap_err();
            assert!(e.to_string().contains("outside its suite"), "{p}: {e}");
        }
        assert!(
            Release::parse(&format!(
                "Suite: x\nSHA256:\n {h} 1 main/by-hash/SHA256/{h}\n"
            ))
            .is_ok()
        );
    }
}

//! Where a repository is: an http(s) URL or a local directory. Parsed once,
//! at the edge (a config file, a flag, the host's apt sources), into one
//! canonical form every later step uses: `file:/srv/repo`, `file:///srv/repo`
//! and `file://localhost/srv/repo` are the same directory.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RepoUrl {
    /// `http://` or `https://`, without a trailing `/`.
    Http(String),
    /// An absolute local directory.
    File(PathBuf),
}

impl RepoUrl {
    pub fn parse(s: &str) -> Result<RepoUrl> {
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("URL {s:?}: holds a space or a control character");
        }
        if let Some(rest) = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
        {
            if rest.split('/').next().is_none_or(str::is_empty) {
                bail!("URL {s:?}: no host");
            }
            return Ok(RepoUrl::Http(s.trim_end_matches('/').to_string()));
        }
        if let Some(rest) = s.strip_prefix("file:") {
            // file:/p, file:///p, file://localhost/p — never another host.
            let path = match rest.strip_prefix("//") {
                Some(r) => r.strip_prefix("localhost").unwrap_or(r),
                None => rest,
            };
            let p = Path::new(path);
            if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                bail!(
                    "URL {s:?}: a file: URL names an absolute local directory (file:///srv/repo)"
                );
            }
            let clean: PathBuf = p.components().collect();
            return Ok(RepoUrl::File(clean));
        }
        bail!("URL {s:?}: only http://, https:// and file:// are supported")
    }

    /// `rel` below this location, as a URL (`file:///…` for a directory).
    pub fn join(&self, rel: &str) -> String {
        format!("{}/{}", self.to_string().trim_end_matches('/'), rel)
    }

    pub fn is_http(&self) -> bool {
        matches!(self, RepoUrl::Http(_))
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::Http(u) => f.write_str(u),
            RepoUrl::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

impl Serialize for RepoUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for RepoUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RepoUrl, D::Error> {
        let s = String::deserialize(d)?;
        RepoUrl::parse(&s).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_form_for_each_place() {
        for s in [
            "file:/srv/repo",
            "file:///srv/repo",
            "file://localhost/srv/repo",
            "file:///srv/repo/",
        ] {
            let u = RepoUrl::parse(s).unwrap();
            assert_eq!(u, RepoUrl::File("/srv/repo".into()), "{s}");
            assert_eq!(u.to_string(), "file:///srv/repo");
            assert_eq!(
                u.join("dists/x/InRelease"),
                "file:///srv/repo/dists/x/InRelease"
            );
        }
        let h = RepoUrl::parse("http://m.invalid/debian/").unwrap();
        assert_eq!(h.to_string(), "http://m.invalid/debian");
        assert_eq!(h.join("pool/a"), "http://m.invalid/debian/pool/a");
        for bad in [
            "ftp://x/y",
            "file://other/srv",
            "file:relative",
            "file:///a/../b",
            "http:///x",
            "http://a b/",
            "",
        ] {
            assert!(RepoUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

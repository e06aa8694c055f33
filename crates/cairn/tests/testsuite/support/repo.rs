//! A Debian-shaped repository built by the test itself: tiny real .deb files
//! (dpkg-deb), Packages in three compressions, i18n, by-hash, a Release
//! signed with a test key as InRelease and Release.gpg.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::Key;

#[derive(Clone, Debug)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub depends: Option<String>,
    pub pre_depends: Option<String>,
    pub provides: Option<String>,
    pub priority: String,
    pub essential: bool,
    /// Written to the Packages index instead of the real pool path.
    pub filename_override: Option<String>,
    /// Extra payload size in bytes (to make big files for slow transfers).
    pub payload: usize,
}

pub fn deb(name: &str, version: &str) -> Deb {
    Deb {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        depends: None,
        pre_depends: None,
        provides: None,
        priority: "optional".into(),
        essential: false,
        filename_override: None,
        payload: 0,
    }
}

impl Deb {
    pub fn depends(mut self, d: &str) -> Deb {
        self.depends = Some(d.into());
        self
    }
    pub fn provides(mut self, p: &str) -> Deb {
        self.provides = Some(p.into());
        self
    }
    pub fn essential(mut self) -> Deb {
        self.essential = true;
        self.priority = "required".into();
        self
    }
    pub fn payload(mut self, n: usize) -> Deb {
        self.payload = n;
        self
    }
    pub fn pool_path(&self) -> String {
        let v = self
            .version
            .split_once(':')
            .map_or(self.version.as_str(), |x| x.1);
        format!(
            "pool/main/{}/{}/{}_{}_{}.deb",
            &self.name[..1],
            self.name,
            self.name,
            v,
            self.arch
        )
    }
}

pub struct RepoBuilder {
    pub root: PathBuf,
    pub suite: String,
    pub date: i64,
    pub valid_until: Option<i64>,
    pub debs: Vec<Deb>,
    pub inrelease: bool,
    pub release_gpg: bool,
    /// Paths listed in the signed Release besides the real indices (not served).
    pub extra_listed: Vec<String>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RepoBuilder {
    pub fn new(root: &Path, debs: Vec<Deb>) -> RepoBuilder {
        RepoBuilder {
            root: root.to_path_buf(),
            suite: "stable".into(),
            date: now() - 60,
            valid_until: None,
            debs,
            inrelease: true,
            release_gpg: true,
            extra_listed: Vec::new(),
        }
    }

    /// (Re)writes the whole repository, signed by `key`.
    pub fn build(&self, key: &Key) {
        let dists = self.root.join("dists").join(&self.suite);
        let _ = fs::remove_dir_all(&dists);
        let mut packages = String::new();
        let mut translations = String::new();
        for d in &self.debs {
            let path = self.root.join(d.pool_path());
            if !path.exists() {
                build_deb(d, &path);
            }
            let data = fs::read(&path).unwrap();
            packages.push_str(&format!("Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: cairn tests <t@cairn.invalid>\nInstalled-Size: 1\n", d.name, d.version, d.arch));
            if d.essential {
                packages.push_str("Essential: yes\n");
            }
            for (k, v) in [
                ("Pre-Depends", &d.pre_depends),
                ("Depends", &d.depends),
                ("Provides", &d.provides),
            ] {
                if let Some(v) = v {
                    packages.push_str(&format!("{k}: {v}\n"));
                }
            }
            let filename = d.filename_override.clone().unwrap_or_else(|| d.pool_path());
            packages.push_str(&format!(
                "Priority: {}\nSection: misc\nFilename: {filename}\nSize: {}\nSHA256: {}\nDescription: test package {}\n\n",
                d.priority,
                data.len(),
                sha256(&data),
                d.name
            ));
            translations.push_str(&format!("Package: {}\nDescription-md5: 0123456789abcdef0123456789abcdef\nDescription-en: test package {}\n\n", d.name, d.name));
        }
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let p = packages.into_bytes();
        files.push(("main/binary-amd64/Packages".into(), p.clone()));
        files.push(("main/binary-amd64/Packages.gz".into(), gzip(&p)));
        files.push(("main/binary-amd64/Packages.xz".into(), xz(&p)));
        files.push((
            "main/binary-amd64/Release".into(),
            format!(
                "Archive: {0}\nSuite: {0}\nComponent: main\nArchitecture: amd64\n",
                self.suite
            )
            .into_bytes(),
        ));
        let t = translations.into_bytes();
        files.push(("main/i18n/Translation-en".into(), t.clone()));
        files.push(("main/i18n/Translation-en.xz".into(), xz(&t)));
        let mut release = format!(
            "Origin: cairn-test\nLabel: cairn-test\nSuite: {0}\nCodename: {0}\nDate: {1}\n",
            self.suite,
            cairn_debian::date::format_release_date(self.date)
        );
        if let Some(v) = self.valid_until {
            release.push_str(&format!(
                "Valid-Until: {}\n",
                cairn_debian::date::format_release_date(v)
            ));
        }
        release.push_str("Acquire-By-Hash: yes\nArchitectures: amd64\nComponents: main\nDescription: cairn test repository\nSHA256:\n");
        for (path, data) in &files {
            // The uncompressed Packages is listed but, as on Debian's servers, not served.
            let full = dists.join(path);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            if !(path.ends_with("/Packages") || path.ends_with("Translation-en")) {
                fs::write(&full, data).unwrap();
                let byhash = full.parent().unwrap().join("by-hash/SHA256");
                fs::create_dir_all(&byhash).unwrap();
                fs::write(byhash.join(sha256(data)), data).unwrap();
            }
            release.push_str(&format!(" {} {:>8} {}\n", sha256(data), data.len(), path));
        }
        for path in &self.extra_listed {
            release.push_str(&format!(" {} {:>8} {}\n", sha256(b"x"), 1, path));
        }
        fs::write(dists.join("Release"), &release).unwrap();
        if self.inrelease {
            key.clearsign(&dists.join("Release"), &dists.join("InRelease"));
        }
        if self.release_gpg {
            key.detach_sign(&dists.join("Release"), &dists.join("Release.gpg"));
        }
    }
}

fn build_deb(d: &Deb, out: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let doc = root.join("usr/share/doc").join(&d.name);
    fs::create_dir_all(&doc).unwrap();
    let mut f = fs::File::create(doc.join("README")).unwrap();
    writeln!(f, "{} {}", d.name, d.version).unwrap();
    if d.payload > 0 {
        // Incompressible payload so the .deb is really that big.
        let mut x: u64 = 0x9e3779b97f4a7c15 ^ d.payload as u64;
        let mut buf = Vec::with_capacity(d.payload);
        while buf.len() < d.payload {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        fs::write(doc.join("payload"), &buf).unwrap();
    }
    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: cairn tests <t@cairn.invalid>\nPriority: {}\n",
        d.name, d.version, d.arch, d.priority
    );
    if d.essential {
        control.push_str("Essential: yes\n");
    }
    for (k, v) in [
        ("Pre-Depends", &d.pre_depends),
        ("Depends", &d.depends),
        ("Provides", &d.provides),
    ] {
        if let Some(v) = v {
            control.push_str(&format!("{k}: {v}\n"));
        }
    }
    control.push_str(&format!("Description: test package {}\n", d.name));
    fs::write(root.join("DEBIAN/control"), control).unwrap();
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(root)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

//! A profile as written: the TOML read strictly (unknown keys are errors
//! naming file and line), its relative paths made absolute against the file
//! that wrote them, and `extends` followed and merged.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::{Bootstrap, Compression, HostType, SCHEMA_VERSION};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct Unvalidated {
    pub(super) schema_version: Option<u32>,
    pub(super) name: Option<String>,
    pub(super) extends: Option<PathBuf>,
    pub(super) suite: Option<String>,
    pub(super) architecture: Option<String>,
    pub(super) variant: Option<String>,
    pub(super) bootstrap: Option<Bootstrap>,
    pub(super) host_type: Option<HostType>,
    #[serde(default)]
    pub(super) packages: Vec<String>,
    pub(super) builder: Option<bool>,
    pub(super) cairn: Option<bool>,
    pub(super) non_free_firmware: Option<bool>,
    pub(super) hostname: Option<String>,
    pub(super) root: Option<UnvalidatedRoot>,
    #[serde(default)]
    pub(super) kernel_cmdline: Vec<String>,
    #[serde(default)]
    pub(super) files: Vec<UnvalidatedFile>,
    #[serde(default)]
    pub(super) hooks: Vec<UnvalidatedHook>,
    #[serde(default)]
    pub(super) data: Vec<UnvalidatedData>,
    pub(super) image: Option<UnvalidatedImage>,
    pub(super) fleet: Option<super::fleet::RawFleet>,
    pub(super) health: Option<super::fleet::RawHealth>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct UnvalidatedRoot {
    pub(super) password_hash: Option<String>,
    #[serde(default)]
    pub(super) ssh_keys: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct UnvalidatedFile {
    pub(super) source: PathBuf,
    pub(super) dest: String,
    pub(super) mode: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct UnvalidatedHook {
    /// A script file, relative to the profile.
    pub(super) run: Option<PathBuf>,
    /// Or an inline shell script.
    pub(super) script: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct UnvalidatedData {
    pub(super) path: String,
    #[serde(default = "data_label")]
    pub(super) partition: String,
    pub(super) dir: Option<String>,
}

pub(super) fn data_label() -> String {
    "data".into()
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct UnvalidatedImage {
    pub(super) compression: Option<Compression>,
    pub(super) level: Option<u32>,
    pub(super) iso: Option<bool>,
}

/// A `(file, base dir)` pair per level, so relative paths resolve against
/// the file that wrote them.
pub(super) fn load_chain(path: &Path, seen: &mut Vec<PathBuf>) -> Result<Unvalidated> {
    let canon = path
        .canonicalize()
        .with_context(|| format!("reading profile {}", path.display()))?;
    if seen.contains(&canon) {
        bail!(
            "profile {} extends itself (through {})",
            path.display(),
            seen.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
    }
    seen.push(canon.clone());
    let text = fs_err::read_to_string(path)
        .with_context(|| format!("reading profile {}", path.display()))?;
    let mut raw: Unvalidated =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match raw.schema_version {
        Some(SCHEMA_VERSION) => {}
        Some(v) => bail!(
            "{}: schema-version {v} is not supported (this cairn reads {SCHEMA_VERSION})",
            path.display()
        ),
        None => bail!(
            "{}: missing `schema-version = {SCHEMA_VERSION}`",
            path.display()
        ),
    }
    let base = canon.parent().unwrap_or(Path::new("/")).to_path_buf();
    for f in &mut raw.files {
        f.source = base.join(&f.source);
    }
    for h in &mut raw.hooks {
        if let Some(r) = &mut h.run {
            *r = base.join(&*r);
        }
    }
    match raw.extends.take() {
        None => Ok(raw),
        Some(parent) => {
            let parent_path = base.join(parent);
            let p = load_chain(&parent_path, seen)?;
            Ok(merge(p, raw))
        }
    }
}

/// `child` over `parent`: scalars replace, lists append (packages deduplicated).
fn merge(parent: Unvalidated, child: Unvalidated) -> Unvalidated {
    let mut packages = parent.packages;
    for p in child.packages {
        if !packages.contains(&p) {
            packages.push(p);
        }
    }
    let root = match (parent.root, child.root) {
        (Some(p), Some(c)) => Some(UnvalidatedRoot {
            password_hash: c.password_hash.or(p.password_hash),
            ssh_keys: p.ssh_keys.into_iter().chain(c.ssh_keys).collect(),
        }),
        (p, c) => c.or(p),
    };
    let image = match (parent.image, child.image) {
        (Some(p), Some(c)) => Some(UnvalidatedImage {
            compression: c.compression.or(p.compression),
            level: if c.compression.is_some() {
                c.level
            } else {
                c.level.or(p.level)
            },
            iso: c.iso.or(p.iso),
        }),
        (p, c) => c.or(p),
    };
    Unvalidated {
        schema_version: child.schema_version,
        name: child.name,
        extends: None,
        suite: child.suite.or(parent.suite),
        architecture: child.architecture.or(parent.architecture),
        variant: child.variant.or(parent.variant),
        bootstrap: child.bootstrap.or(parent.bootstrap),
        host_type: child.host_type.or(parent.host_type),
        packages,
        builder: child.builder.or(parent.builder),
        cairn: child.cairn.or(parent.cairn),
        non_free_firmware: child.non_free_firmware.or(parent.non_free_firmware),
        hostname: child.hostname.or(parent.hostname),
        root,
        kernel_cmdline: parent
            .kernel_cmdline
            .into_iter()
            .chain(child.kernel_cmdline)
            .collect(),
        files: parent.files.into_iter().chain(child.files).collect(),
        hooks: parent.hooks.into_iter().chain(child.hooks).collect(),
        data: parent.data.into_iter().chain(child.data).collect(),
        image,
        fleet: match (parent.fleet, child.fleet) {
            (Some(p), Some(c)) => Some(p.under(c)),
            (p, c) => c.or(p),
        },
        health: match (parent.health, child.health) {
            (Some(p), Some(c)) => Some(p.under(c)),
            (p, c) => c.or(p),
        },
    }
}

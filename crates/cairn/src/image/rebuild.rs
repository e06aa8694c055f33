//! `cairn image rebuild IMAGE --check`: builds an image again from what its
//! manifest records (the profile, by its hash; the mirror snapshot or the
//! Release files; the epoch; compressor, level, host type) and compares the
//! files byte for byte. On a difference it names the first differing file
//! inside the squashfs (both unpacked, walked in name order), and, when
//! diffoscope is installed, asks it for the details.

use fs_err as fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{SQUASHFS, read_manifest};
use crate::cmd::Cmd;
use crate::cmd::tool::UNSQUASHFS;
use crate::profile::{HostType, Profile};
use crate::rootfs::{self, BuildOptions};

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub store: PathBuf,
    /// Keep the rebuilt files (and unpacked trees, diffoscope's report) here.
    pub keep: Option<PathBuf>,
    /// The public key the image must be signed with.
    pub public_key: PathBuf,
    /// mksquashfs threads [default: every core].
    pub processors: Option<usize>,
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileCheck {
    pub name: String,
    pub image_sha256: String,
    pub rebuilt_sha256: String,
    pub identical: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RebuildReport {
    pub image: String,
    pub snapshot: Option<String>,
    pub epoch: i64,
    /// Inputs that are no longer what the manifest records (a snapshot
    /// changed, the live mirror moved on): the rebuild went on with what is
    /// there now.
    pub inputs_changed: Vec<String>,
    pub files: Vec<FileCheck>,
    pub reproducible: bool,
    /// The first file of the squashfs that differs, in name order, and how.
    pub first_difference: Option<String>,
    /// diffoscope's report (its start), when diffoscope is installed.
    pub diffoscope: Option<String>,
    /// Where the rebuilt files were kept (`--keep`).
    pub kept: Option<PathBuf>,
    pub seconds: f64,
}

/// The files a rebuild compares: the layer, its dm-verity tree, the kernel,
/// the initrd and boot.cfg (the kernel arguments: which layers boot, with
/// which root hashes).
const COMPARED: [&str; 5] = [
    SQUASHFS,
    "filesystem.squashfs.verity",
    "vmlinuz",
    "initrd.img",
    super::BOOT_CFG,
];

pub fn rebuild(
    dir: &Path,
    profile: &Profile,
    profile_arg: &str,
    opts: &RebuildOptions,
) -> Result<RebuildReport> {
    let t = std::time::Instant::now();
    let (m, source) = checked(dir, profile, profile_arg, opts)?;
    let name = format!("{}/{}", m.profile, m.version);
    // One build, upgrade or rebuild of a profile at a time; a killed
    // rebuild's directory goes.
    let (_lock, _) = rootfs::lock_profile(&opts.store, &m.profile)?;
    let work_base = work_dir(&m, opts)?;
    let _cleanup = (opts.keep.is_none()).then(|| crate::fsutil::WorkDir(work_base.clone()));
    let mut b = BuildOptions::new(opts.store.clone());
    b.iso = Some(false);
    b.compression = Some(m.compression);
    b.level = m.level;
    // (Checked in `checked`, before any work.)
    b.packing = Some(super::squashfs::Packing::recorded(&m)?);
    b.host_type = Some(match m.host_type {
        HostType::Auto => bail!("{name}: its manifest says host type auto, which no build makes"),
        h => h,
    });
    b.epoch = Some(source.epoch);
    b.snapshot = source.snapshot.clone();
    b.check_into = Some(work_base.clone());
    b.processors = opts.processors;
    b.quiet = opts.quiet;
    let built = rootfs::build(profile, profile_arg, &b)?;
    let inputs_changed =
        crate::mirror::snapshot::release_changes(&source.releases, &built.source.releases);
    // The boot arguments the rebuilt layer gets, with the kernel command
    // line the profile gives (an edited, re-signed manifest shows here).
    let mut want = m.clone();
    want.kernel_cmdline = rootfs::kernel_cmdline(profile);
    let args = super::seal::boot_args(&built.path, &want)?;
    fs::write(
        built.path.join(super::BOOT_CFG),
        super::seal::boot_cfg(&want, &args),
    )?;
    let (files, first_difference, diffoscope) = compare(dir, &built.path, &name, &work_base)?;
    Ok(RebuildReport {
        image: name,
        snapshot: source.snapshot,
        epoch: source.epoch,
        inputs_changed,
        reproducible: files.iter().all(|f| f.identical),
        files,
        first_difference,
        diffoscope,
        kept: opts.keep.clone(),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The image to rebuild, checked before any work: root's own directory,
/// plain files, signed; a full build with recorded inputs, of this very
/// profile. Its manifest and the inputs it records.
fn checked(
    dir: &Path,
    profile: &Profile,
    profile_arg: &str,
    opts: &RebuildOptions,
) -> Result<(super::Manifest, super::BuildSource)> {
    // An image directory of root's that no one else may change (a user's
    // directory could swap a file between the checks and the reads), its
    // compared files plain files, never links to elsewhere.
    crate::fsutil::own_dir(dir)?;
    for f in COMPARED {
        let p = dir.join(f);
        let meta =
            fs::symlink_metadata(&p).with_context(|| format!("{}: no {f}", dir.display()))?;
        if !meta.file_type().is_file() {
            bail!("{}: not a plain file: not read", p.display());
        }
    }
    // Only a signed image is rebuilt: its manifest chooses the inputs.
    let v = super::verify(dir, &opts.public_key)?;
    if !v.ok {
        return Err(anyhow::Error::new(crate::trust::VerificationFailed::new(format!(
            "{}: {}",
            dir.display(),
            v.problems.join("; ")
        ))))
        .context("the image does not verify: a rebuild checks only a signed image (see `cairn image verify`)");
    }
    let m = read_manifest(dir)?;
    let name = format!("{}/{}", m.profile, m.version);
    let source = m.source.clone().with_context(|| {
        format!("{name}: its manifest records no inputs (made by a cairn before 0.2): it cannot be rebuilt")
    })?;
    if m.parent.is_some() || m.layers != [SQUASHFS] {
        bail!(
            "{name} is an upgrade of {} ({} layers): `image rebuild` rebuilds full builds; check a delta by upgrading its parent again with `cairn upgrade --snapshot`",
            m.parent
                .as_ref()
                .map_or("another image".to_string(), ToString::to_string),
            m.layers.len()
        );
    }
    if profile.name != m.profile {
        bail!(
            "{profile_arg} is profile {}, but {name} was built from profile {}",
            profile.name,
            m.profile
        );
    }
    let hash = profile.hash()?;
    if hash != m.profile_hash {
        bail!(
            "profile {profile_arg} is not the one {name} was built from (its hash is {hash}, the manifest records {}): rebuild with that profile",
            m.profile_hash
        );
    }
    if m.cairn_version != env!("CARGO_PKG_VERSION") {
        tracing::warn!(
            "{name} was built by cairn {}, this is {}: differences may be cairn's",
            m.cairn_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    super::squashfs::Packing::recorded(&m).with_context(|| format!("{name}: not rebuilt"))?;
    Ok((m, source))
}

/// Where the rebuild is made: `--keep`'s empty directory of root's, or a
/// private one beside the images (a killed rebuild's removed first).
fn work_dir(m: &super::Manifest, opts: &RebuildOptions) -> Result<std::path::PathBuf> {
    let images = super::images_dir(&opts.store);
    let stale = format!(".rebuild-{}-", m.profile);
    for e in fs::read_dir(&images)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&stale) {
            crate::fsutil::unmount_below(&e.path())?;
            fs::remove_dir_all(e.path())
                .with_context(|| format!("removing a killed rebuild's {}", e.path().display()))?;
        }
    }
    let work_base = match &opts.keep {
        Some(k) => {
            crate::fsutil::own_dir(k)?;
            if fs::read_dir(k)?.next().is_some() {
                bail!(
                    "{}: not empty; --keep wants an empty directory",
                    k.display()
                );
            }
            k.clone()
        }
        None => {
            let d = super::images_dir(&opts.store).join(format!(
                ".rebuild-{}-{}",
                m.profile,
                std::process::id()
            ));
            if fs::symlink_metadata(&d).is_ok() {
                crate::fsutil::unmount_below(&d)?;
                fs::remove_dir_all(&d)?;
            }
            crate::fsutil::private_dir(&d)?;
            d
        }
    };
    Ok(work_base)
}

/// The compared files of the image and of the rebuild by hash; when they
/// differ, the first differing file inside the squashfs and diffoscope's
/// report when it is installed.
fn compare(
    dir: &Path,
    rebuilt: &Path,
    name: &str,
    work_base: &Path,
) -> Result<(Vec<FileCheck>, Option<String>, Option<String>)> {
    let mut files = Vec::new();
    for f in COMPARED.map(String::from) {
        let (_, a) = crate::trust::hash::sha256_file(&dir.join(&f))
            .with_context(|| format!("{name}: {f}"))?;
        let (_, r) = crate::trust::hash::sha256_file(&rebuilt.join(&f))
            .with_context(|| format!("the rebuild's {f}"))?;
        files.push(FileCheck {
            name: f,
            identical: a == r,
            image_sha256: a,
            rebuilt_sha256: r,
        });
    }
    let reproducible = files.iter().all(|f| f.identical);
    let mut first_difference = None;
    let mut diffoscope = None;
    if !reproducible {
        let layer = SQUASHFS;
        if files.iter().any(|f| f.name == layer && !f.identical) {
            // Unpacked as root, device nodes and setuid files included: in a
            // directory no one else may enter.
            let private = work_base.join("unpacked");
            crate::fsutil::private_dir(&private)?;
            let a = private.join("image");
            let r = private.join("rebuild");
            unpack(&dir.join(layer), &a)?;
            unpack(&rebuilt.join(layer), &r)?;
            first_difference = first_difference_in(&a, &r)?.map(|d| format!("{layer}: {d}"));
        } else {
            first_difference = files
                .iter()
                .find(|f| !f.identical)
                .map(|f| format!("{}: the squashfs is identical; this file is not", f.name));
        }
        diffoscope = run_diffoscope(dir, rebuilt, &files, work_base);
    }
    Ok((files, first_difference, diffoscope))
}

fn unpack(layer: &Path, to: &Path) -> Result<()> {
    Cmd::new(UNSQUASHFS.program)
        .args(["-no-progress", "-quiet", "-no-xattrs", "-d"])
        .arg(to)
        .arg(layer)
        .run()
        .with_context(|| format!("unpacking {}", layer.display()))?;
    Ok(())
}

/// The first difference between two trees, walked in name order (a
/// directory's own metadata before its entries): a path only in one, or the
/// first of type, mode, owner, time, size, link target, content that differs.
pub fn first_difference_in(a: &Path, b: &Path) -> Result<Option<String>> {
    walk(a, b, Path::new("/"))
}

fn walk(a: &Path, b: &Path, rel: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (fs::symlink_metadata(a)?, fs::symlink_metadata(b)?);
    let show = rel.display();
    let kind = |m: &std::fs::Metadata| {
        let t = m.file_type();
        if t.is_dir() {
            "directory"
        } else if t.is_symlink() {
            "symlink"
        } else if t.is_file() {
            "file"
        } else {
            "special file"
        }
    };
    if kind(&ma) != kind(&mb) {
        return Ok(Some(format!(
            "{show}: a {} in the image, a {} in the rebuild",
            kind(&ma),
            kind(&mb)
        )));
    }
    for (what, x, y) in [
        ("mode", ma.mode() as i64, mb.mode() as i64),
        ("owner", ma.uid() as i64, mb.uid() as i64),
        ("group", ma.gid() as i64, mb.gid() as i64),
        ("device", ma.rdev() as i64, mb.rdev() as i64),
        ("modification time", ma.mtime(), mb.mtime()),
    ] {
        if x != y {
            let (x, y) = if what == "mode" {
                (format!("{x:o}"), format!("{y:o}"))
            } else {
                (x.to_string(), y.to_string())
            };
            return Ok(Some(format!(
                "{show}: {what} {x} in the image, {y} in the rebuild"
            )));
        }
    }
    let t = ma.file_type();
    if t.is_symlink() {
        let (x, y) = (fs::read_link(a)?, fs::read_link(b)?);
        if x != y {
            return Ok(Some(format!(
                "{show}: links to {} in the image, {} in the rebuild",
                x.display(),
                y.display()
            )));
        }
    } else if t.is_file() {
        if ma.len() != mb.len() {
            return Ok(Some(format!(
                "{show}: {} bytes in the image, {} in the rebuild",
                ma.len(),
                mb.len()
            )));
        }
        if let Some(at) = first_differing_byte(a, b)? {
            return Ok(Some(format!("{show}: contents differ from byte {at}")));
        }
    } else if t.is_dir() {
        let names = |d: &Path| -> Result<std::collections::BTreeSet<std::ffi::OsString>> {
            fs::read_dir(d)?
                .map(|e| Ok(e?.file_name()))
                .collect::<Result<_>>()
        };
        let (na, nb) = (names(a)?, names(b)?);
        for n in na.union(&nb) {
            let r = rel.join(n);
            match (na.contains(n), nb.contains(n)) {
                (true, false) => {
                    return Ok(Some(format!("{}: only in the image", r.display())));
                }
                (false, true) => {
                    return Ok(Some(format!("{}: only in the rebuild", r.display())));
                }
                _ => {
                    if let Some(d) = walk(&a.join(n), &b.join(n), &r)? {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
    Ok(None)
}

fn first_differing_byte(a: &Path, b: &Path) -> Result<Option<u64>> {
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut at = 0u64;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(None);
        }
        fb.read_exact(&mut bb[..n])?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
}

/// diffoscope on the first differing file, when it is installed (at most
/// 10 minutes); its report's first 8 KiB.
fn run_diffoscope(
    image: &Path,
    rebuilt: &Path,
    files: &[FileCheck],
    work: &Path,
) -> Option<String> {
    let f = files.iter().find(|f| !f.identical)?;
    crate::cmd::which("diffoscope")?;
    let report = work.join("diffoscope.txt");
    let _ = Cmd::new("diffoscope")
        .arg("--text")
        .arg(&report)
        .arg(image.join(&f.name))
        .arg(rebuilt.join(&f.name))
        .timeout(std::time::Duration::from_secs(600))
        .output_any_status();
    let text = fs::read_to_string(&report).ok()?;
    Some(text.chars().take(8192).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Sets every modification time below `t` (symlinks' own too) to the epoch.
    fn pin(t: &Path) {
        let st = std::process::Command::new("find")
            .arg(t)
            .args(["-exec", "touch", "-h", "-d", "@0", "{}", "+"])
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn the_first_difference_is_named_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for t in [&a, &b] {
            fs::create_dir_all(t.join("etc/x")).unwrap();
            fs::create_dir_all(t.join("usr")).unwrap();
            fs::write(t.join("usr/z"), "same").unwrap();
            pin(t);
        }
        assert_eq!(first_difference_in(&a, &b).unwrap(), None);
        fs::write(a.join("usr/z"), "diff").unwrap();
        fs::write(a.join("etc/x/f"), "1").unwrap();
        fs::write(b.join("etc/x/f"), "2").unwrap();
        pin(&a);
        pin(&b);
        // etc comes before usr.
        assert_eq!(
            first_difference_in(&a, &b).unwrap().unwrap(),
            "/etc/x/f: contents differ from byte 0"
        );
        fs::write(b.join("etc/x/f"), "1").unwrap();
        pin(&b);
        assert_eq!(
            first_difference_in(&a, &b).unwrap().unwrap(),
            "/usr/z: contents differ from byte 0"
        );
        fs::write(b.join("usr/z"), "diff").unwrap();
        fs::write(b.join("usr/new"), "").unwrap();
        pin(&b);
        assert_eq!(
            first_difference_in(&a, &b).unwrap().unwrap(),
            "/usr/new: only in the rebuild"
        );
        fs::remove_file(b.join("usr/new")).unwrap();
        std::os::unix::fs::symlink("z", b.join("usr/new")).unwrap();
        std::os::unix::fs::symlink("y", a.join("usr/new")).unwrap();
        pin(&a);
        pin(&b);
        assert_eq!(
            first_difference_in(&a, &b).unwrap().unwrap(),
            "/usr/new: links to y in the image, z in the rebuild"
        );
        fs::set_permissions(a.join("etc/x"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            first_difference_in(&a, &b).unwrap().unwrap(),
            "/etc/x: mode 40700 in the image, 40755 in the rebuild"
        );
    }
}

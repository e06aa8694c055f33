//! `cairn reboot --soft`: into another image that has the running kernel,
//! without restarting the kernel — systemd's soft-reboot (systemd ≥ 254,
//! Debian 13): the new image's signed layers are mounted through dm-verity
//! with their signed root hashes and stacked under a fresh RAM overlay at
//! /run/nextroot, then systemd stops every service, switches the root to it
//! and starts the new image's services as after a boot.
//!
//! What the initramfs does at a boot, done here: the signed boot.cfg must
//! be the named image's own (`cairn.image=`); exactly the layers named in
//! its `cairn.verity=` are mounted, in order, each through dm-verity
//! (SHA-256 trees of format 1 only), so every block is checked when it is
//! read. What only a boot can change — the kernel, its arguments — must be
//! the running kernel's already, and the host's systemd must be able to;
//! otherwise the switch falls back to kexec (then a reboot), or is refused
//! under `--soft=required`.
//!
//! The kernel's command line stays the first image's. The command line the
//! new image would have been booted with is written into the new root's
//! own RAM overlay (/etc/cairn/cmdline), so only that root reads it
//! ([`crate::image::boot_cmdline`]): if the switch does not happen, the
//! running system never sees it.

use fs_err as fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::boot::model::ImageId;
use crate::cmd::Cmd;
use crate::image::paths::{RUN_DIR, SOFT_CMDLINE};
use crate::trust::VerificationFailed;

/// Where systemd's soft-reboot finds the next root.
pub const NEXTROOT: &str = "/run/nextroot";
/// The first systemd with soft-reboot.
const MIN_SYSTEMD: u32 = 254;
/// systemctl (≥ 256) turns a plain `reboot` into a soft reboot when
/// /run/nextroot is mounted; cairn's own reboots mean the firmware.
pub const SKIP_AUTO_SOFT: (&str, &str) = ("SYSTEMCTL_SKIP_AUTO_SOFT_REBOOT", "1");

/// How `--soft` takes a host where the soft switch cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SoftMode {
    /// Fall back to kexec, then to a reboot through the firmware.
    Auto,
    /// Refuse (exit status 1) rather than restart the kernel.
    Required,
}

/// systemd's version from `systemctl show -P Version` (PID 1's own:
/// `257.9-1~deb13u1`) or `systemctl --version` (`systemd 257 (…)`).
pub fn systemd_version(out: &str) -> Option<u32> {
    let first = out.lines().next()?.trim();
    let v = first.strip_prefix("systemd ").unwrap_or(first);
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A signed layer: its file in the image directory and its dm-verity root
/// hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLayer {
    pub name: String,
    pub root_hash: String,
}

/// The values of `key=` in `args`.
fn values<'a>(args: &'a str, key: &str) -> Vec<&'a str> {
    let p = format!("{key}=");
    args.split_whitespace()
        .filter_map(|a| a.strip_prefix(p.as_str()))
        .collect()
}

/// The layers of a (checked) boot.cfg's arguments, lowest first: exactly
/// one `cairn.verity=`, each `NAME.squashfs:<64 hex>`, each name a safe
/// file name, none twice — as the initramfs takes them.
pub fn signed_layers(args: &str) -> Result<Vec<SignedLayer>> {
    let all = values(args, "cairn.verity");
    let [one] = all.as_slice() else {
        bail!(
            "boot.cfg has {} cairn.verity= arguments (one is needed)",
            all.len()
        );
    };
    let mut layers: Vec<SignedLayer> = Vec::new();
    for item in one.split(',') {
        let (name, hash) = item
            .split_once(':')
            .with_context(|| format!("cairn.verity=: {item:?} is not NAME:ROOT-HASH"))?;
        crate::names::check("layer", name)?;
        if !name.ends_with(".squashfs") {
            bail!("cairn.verity=: {name:?} is not a squashfs layer");
        }
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hash.len() != 64 || !hash.bytes().all(hex) {
            bail!("cairn.verity=: {name}'s root hash {hash:?} is not 64 lower-case hex digits");
        }
        if layers.iter().any(|l| l.name == name) {
            bail!("cairn.verity=: {name} is named twice");
        }
        layers.push(SignedLayer {
            name: name.into(),
            root_hash: hash.into(),
        });
    }
    Ok(layers)
}

/// The (checked) boot.cfg is the named image's own: exactly one
/// `cairn.image=`, and it is `id` — a boot.cfg signed for one image never
/// runs with another's directory (the initramfs's rule).
pub fn check_image_arg(args: &str, id: &ImageId) -> Result<()> {
    let all = values(args, "cairn.image");
    match all.as_slice() {
        [one] if *one == id.to_string() => Ok(()),
        _ => Err(VerificationFailed::new(format!(
            "REFUSING {}: its signed boot.cfg is not this image's (cairn.image= {all:?})",
            id.dir()
        ))
        .into()),
    }
}

/// The menu entry an image is marked good under: the initramfs's rule.
pub fn check_entry(entry: &str) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._+/>-".contains(c);
    if entry.is_empty() || !entry.chars().all(ok) {
        bail!("bad menu entry {entry:?}");
    }
    Ok(())
}

/// Why this host cannot switch softly (not a refusal of the image): no
/// systemd as PID 1, or one older than 254.
pub fn host_unfit() -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not running this system".into());
    }
    let out = match Cmd::new("systemctl").args(["show", "-P", "Version"]).run() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return Some(format!("asking systemd its version: {e:#}")),
    };
    match systemd_version(&out) {
        Some(v) if v >= MIN_SYSTEMD => None,
        Some(v) => Some(format!(
            "systemd {v} has no soft-reboot (it came with {MIN_SYSTEMD}: Debian 13)"
        )),
        None => Some(format!(
            "cannot read systemd's version from {:?}",
            out.trim()
        )),
    }
}

/// The version string in an x86 bzImage's setup header (the pointer at
/// 0x20E, from 0x200): `<release> (<builder>) <version>`.
pub fn bzimage_version(head: &[u8]) -> Option<String> {
    if head.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*head.get(0x20E)?, *head.get(0x20F)?]) as usize;
    let at = 0x200 + ptr;
    let rest = head.get(at..)?;
    let end = rest.iter().take(512).position(|&b| b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Why the (checked) kernel, whose start is `head`, is not the running one
/// (`release`, `version`: uname -r, -v), if it is not.
pub fn kernel_unfit(head: &[u8], release: &str, version: &str) -> Option<String> {
    match bzimage_version(head) {
        Some(v) if v.starts_with(&format!("{release} ")) && v.ends_with(&format!(" {version}")) => {
            None
        }
        Some(v) => Some(format!(
            "its kernel ({v}) is not the running one ({release} {version}): a new kernel needs kexec or a boot"
        )),
        None => Some("its kernel has no version in its header".into()),
    }
}

/// Arguments set per boot, not per image: left out when the next image's
/// kernel arguments are held against the running kernel's.
const PER_BOOT: &[&str] = &[
    "cairn.image",
    "cairn.verity",
    "live-media-path",
    "cairn.boot",
    "cairn.entry",
    "toram",
    "BOOT_IMAGE",
    "initrd",
];

/// Why the next image's kernel arguments (its signed boot.cfg's) would not
/// hold after a soft switch: they differ from the running kernel's, and
/// only a boot gives a kernel its arguments.
pub fn args_unfit(next: &str, kernel: &str) -> Option<String> {
    let keep = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .filter(|a| !PER_BOOT.contains(&a.split('=').next().unwrap_or(a)))
            .map(String::from)
            .collect()
    };
    let (n, k) = (keep(next), keep(kernel));
    (n != k).then(|| {
        format!(
            "its kernel arguments ({}) differ from the running kernel's ({}): they take effect only at a boot",
            n.join(" "),
            k.join(" ")
        )
    })
}

/// The next root, prepared under /run/cairn/soft/TAG: the layers through
/// dm-verity, a RAM overlay over them mounted there for the checks and the
/// command line; [`NextRoot::activate`] mounts it at /run/nextroot at the
/// last moment. Dropped before [`NextRoot::keep`], everything is taken
/// down again (mounts, dm-verity devices, loop devices).
pub struct NextRoot {
    base: PathBuf,
    lower: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    devices: Vec<String>,
    loops: Vec<String>,
    kept: bool,
}

impl NextRoot {
    /// Mounts `layers` of the image in `dir` (lowest first) and a RAM
    /// overlay over them; with `ram`, from copies in RAM (the boot disk is
    /// not read again). `tag` keeps this switch's device names apart from
    /// those of the running root.
    pub fn prepare(dir: &Path, layers: &[SignedLayer], tag: &str, ram: bool) -> Result<NextRoot> {
        let base = Path::new(RUN_DIR).join("soft").join(tag);
        fs::create_dir_all(&base)?;
        // root's alone: nobody else walks into it (and keeps it busy) or
        // runs what a prepared image carries before it is switched to.
        fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut n = NextRoot {
            base: base.clone(),
            lower: Vec::new(),
            mounts: Vec::new(),
            devices: Vec::new(),
            loops: Vec::new(),
            kept: false,
        };
        let files: Vec<String> = layers
            .iter()
            .flat_map(|l| [l.name.clone(), format!("{}.verity", l.name)])
            .collect();
        let mut size = 0;
        for f in &files {
            let m = std::fs::symlink_metadata(dir.join(f))
                .with_context(|| format!("{}: {f} missing", dir.display()))?;
            if !m.file_type().is_file() {
                return Err(VerificationFailed::new(format!(
                    "REFUSING {}: {f} is not a regular file",
                    dir.display()
                ))
                .into());
            }
            size += m.len();
        }
        let media = base.join("media");
        let dir = if ram {
            n.copy_to_ram(dir, &files, size, &media)?;
            media.as_path()
        } else {
            dir
        };
        n.open_layers(dir, layers, tag)?;
        // The RAM overlay: what the new system writes, gone at its next boot.
        let rw = base.join("rw");
        fs::create_dir_all(&rw)?;
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
            .arg(&rw)
            .run()?;
        n.mounts.push(rw.clone());
        fs::create_dir_all(rw.join("upper"))?;
        fs::create_dir_all(rw.join("work"))?;
        let root = n.root();
        fs::create_dir_all(&root)?;
        n.overlay_at(&root)?;
        Ok(n)
    }

    /// Copies (checked as they are read, like the originals: dm-verity)
    /// into a tmpfs of their size, when the machine has the room.
    fn copy_to_ram(&mut self, dir: &Path, files: &[String], size: u64, to: &Path) -> Result<()> {
        let avail = fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("/proc/meminfo: no MemAvailable")?;
        if size / 1024 + 65536 > avail {
            bail!(
                "--ram: the layers take {} MiB and only {} MiB are free",
                size >> 20,
                avail >> 10
            );
        }
        fs::create_dir_all(to)?;
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={}k,mode=0700", size / 1024 + 16384))
            .arg("tmpfs")
            .arg(to)
            .run()?;
        self.mounts.push(to.to_path_buf());
        for f in files {
            fs::copy(dir.join(f), to.join(f)).with_context(|| format!("copying {f} into RAM"))?;
        }
        Ok(())
    }

    /// The layers through dm-verity with their signed root hashes, each
    /// mounted read-only (lowest first in `lower`). The loop devices are
    /// attached one after the other; each layer's dm-verity device and
    /// mount are then made at once (under emulation each takes a second).
    /// Every device and mount point is recorded before it is made, so a
    /// failure anywhere leaves nothing behind once this root is dropped.
    fn open_layers(&mut self, dir: &Path, layers: &[SignedLayer], tag: &str) -> Result<()> {
        let mut opening = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let dev = format!("cairn-{tag}-{i}");
            if Path::new("/dev/mapper").join(&dev).exists() {
                bail!("/dev/mapper/{dev} exists already");
            }
            let data = self.attach(&dir.join(&l.name))?;
            let tree = self.attach(&dir.join(format!("{}.verity", l.name)))?;
            let at = self.base.join(format!("layer-{i}"));
            fs::create_dir_all(&at)?;
            opening.push((l, dev, data, tree, at));
        }
        // Recorded before they are made: whatever a failure leaves is
        // taken down (closing or unmounting what is not there is harmless).
        for (_, dev, _, _, at) in &opening {
            self.devices.push(dev.clone());
            self.mounts.push(at.clone());
        }
        let opened = crate::parallel::map(&opening, opening.len(), |(l, dev, data, tree, at)| {
            open_layer(dir, l, dev, data, tree, at)
        });
        let mut first_error = None;
        for ((.., at), o) in opening.iter().zip(opened) {
            match o {
                Ok(()) => self.lower.push(at.clone()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn attach(&mut self, f: &Path) -> Result<String> {
        let out = Cmd::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(f)
            .run()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !dev.starts_with("/dev/loop") {
            bail!("losetup gave {dev:?} for {}", f.display());
        }
        self.loops.push(dev.clone());
        Ok(dev)
    }

    fn overlay_at(&mut self, at: &Path) -> Result<()> {
        let rw = self.base.join("rw");
        let lowerdir: Vec<String> = self
            .lower
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        Cmd::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lowerdir.join(":"),
                rw.join("upper").display(),
                rw.join("work").display()
            ))
            .arg(at)
            .run()
            .with_context(|| format!("mounting the overlay at {}", at.display()))?;
        self.mounts.push(at.to_path_buf());
        Ok(())
    }

    /// The prepared root (mounted, not yet at /run/nextroot).
    pub fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    /// Why the prepared root cannot run on this kernel or does not know it
    /// was switched to: no modules for `release`, or an image-env (from an
    /// older cairn) that never reads the command line left for it.
    pub fn unfit(&self, release: &str) -> Option<String> {
        let root = self.root();
        if !root.join("lib/modules").join(release).is_dir() {
            return Some(format!(
                "it has no modules for the running kernel {release}"
            ));
        }
        // What systemd needs to take a directory as the next root.
        if !["etc/os-release", "usr/lib/os-release"]
            .iter()
            .any(|f| root.join(f).exists())
        {
            return Some("it has no os-release: systemd would not switch to it".into());
        }
        let env = fs::read_to_string(root.join("usr/lib/cairn/image-env")).unwrap_or_default();
        (!env.contains(SOFT_CMDLINE)).then(|| {
            "its cairn does not know soft reboots (built by an older cairn): it would take the running image's name".into()
        })
    }

    /// Writes the command line the new root runs by into its own RAM
    /// overlay (root's, 0644, a new file): only that root ever reads it.
    pub fn leave_cmdline(&self, cmdline: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let at = self.root().join(SOFT_CMDLINE.trim_start_matches('/'));
        // Every directory on the way is one (never a link that would lead
        // the write out of the new root), made where the image has none.
        let mut dir = self.root();
        for part in ["etc", "cairn"] {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => bail!("{}: not a directory in the image", dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir(&dir)?;
                }
                Err(e) => return Err(e).context(dir.display().to_string()),
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&at)
            .with_context(|| format!("creating {}", at.display()))?;
        f.write_all(format!("{cmdline}\n").as_bytes())?;
        f.sync_all()?;
        Ok(())
    }

    /// Moves the root to /run/nextroot (an empty directory that no other
    /// switch has mounted, made now if absent), for systemd's soft-reboot.
    pub fn activate(&mut self) -> Result<()> {
        let next = Path::new(NEXTROOT);
        match std::fs::symlink_metadata(next) {
            Ok(m) => {
                let run = fs::metadata("/run")?;
                if !m.file_type().is_dir()
                    || m.dev() != run.dev()
                    || fs::read_dir(next)?.next().is_some()
                {
                    bail!(
                        "{NEXTROOT} is in use (a mount, a link or not empty): another switch was prepared and not taken (reboot, or remove it)"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(next)?;
            }
            Err(e) => return Err(e).context(NEXTROOT),
        }
        let root = self.root();
        Cmd::new("umount").arg(&root).run()?;
        self.mounts.retain(|m| *m != root);
        self.overlay_at(next)
    }

    /// Leaves it mounted, for the switch.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

/// One layer (loop devices `data` and `tree`) through dm-verity with its
/// signed root hash as `dev`, mounted read-only at `at`.
fn open_layer(
    dir: &Path,
    l: &SignedLayer,
    dev: &str,
    data: &str,
    tree: &str,
    at: &Path,
) -> Result<()> {
    let refuse = |why: String| -> anyhow::Error {
        VerificationFailed::new(format!("REFUSING {}: {}: {why}", dir.display(), l.name)).into()
    };
    Cmd::new("veritysetup")
        .args(["open", data, dev, tree, &l.root_hash])
        .env("DM_DISABLE_UDEV", "1")
        .run()
        .map_err(|e| {
            refuse(format!(
                "its hash tree does not match the signed root hash ({e:#})"
            ))
        })?;
    // The tree's parameters come from its (unsigned) superblock: only
    // SHA-256 trees of the format cairn makes are taken.
    let st = Cmd::new("veritysetup")
        .args(["status", dev])
        .env("DM_DISABLE_UDEV", "1")
        .run()?;
    let st = String::from_utf8_lossy(&st.stdout).to_lowercase();
    let field = |k: &str| {
        st.lines()
            .find_map(|x| x.trim().strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let alg = field("hash algorithm:").or_else(|| field("hash name:"));
    if alg.as_deref() != Some("sha256") || field("hash type:").as_deref() != Some("1") {
        return Err(refuse(
            "its hash tree is not a SHA-256 dm-verity tree of format 1".into(),
        ));
    }
    Cmd::new("mount")
        .args(["-t", "squashfs", "-o", "ro,nosuid,nodev"])
        .arg(format!("/dev/mapper/{dev}"))
        .arg(at)
        .run()
        .map_err(|e| {
            refuse(format!(
                "dm-verity refused its blocks: it differs from what was signed ({e:#})"
            ))
        })?;
    Ok(())
}

impl Drop for NextRoot {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for m in self.mounts.iter().rev() {
            let _ = Cmd::new("umount").arg(m).run();
        }
        for d in self.devices.iter().rev() {
            let _ = Cmd::new("veritysetup")
                .args(["close", d])
                .env("DM_DISABLE_UDEV", "1")
                .run();
        }
        let mut all_down = true;
        for m in self.mounts.iter().rev() {
            all_down &= !mounted_at(m);
        }
        for l in self.loops.iter().rev() {
            let _ = Cmd::new("losetup").args(["-d", l]).run();
        }
        // (Never into a mount that would not come down.)
        if all_down {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// Whether something is mounted at `p` (its device differs from its
/// parent's).
fn mounted_at(p: &Path) -> bool {
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

/// A next root that cairn prepared and systemd never took (cairn stopped
/// between mounting it and queueing the switch, or systemd could not
/// switch): taken down, before another is prepared — left there, any plain
/// `reboot` would turn into a soft reboot into it.
pub fn take_down_stale() -> Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo: cannot tell what is mounted")?;
    let ours = format!("upperdir={RUN_DIR}/soft/");
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.get(4) == Some(&NEXTROOT)
            && f.get(sep + 1) == Some(&"overlay")
            && f.get(sep + 3).is_some_and(|o| o.contains(&ours))
        {
            tracing::warn!("{NEXTROOT}: a soft reboot prepared earlier and not taken: taken down");
            Cmd::new("umount").arg(NEXTROOT).run()?;
        }
    }
    Ok(())
}

/// One switch at a time: held from the checks to systemd's soft-reboot.
pub fn lock() -> Result<std::fs::File> {
    fs::create_dir_all(RUN_DIR)?;
    let p = Path::new(RUN_DIR).join("soft.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another cairn is preparing a soft reboot ({} is locked)",
                p.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", p.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_versions() {
        assert_eq!(systemd_version("257.9-1~deb13u1\n"), Some(257));
        assert_eq!(systemd_version("systemd 252 (252.39-1~deb12u1)"), Some(252));
        assert_eq!(systemd_version("elogind 252"), None);
        assert_eq!(systemd_version(""), None);
    }

    #[test]
    fn the_signed_layers_are_taken_as_the_initramfs_takes_them() {
        let args = format!(
            "boot=live cairn.image=w/2 cairn.verity=filesystem.squashfs:{H},layer-2.squashfs:{H} quiet"
        );
        let l = signed_layers(&args).unwrap();
        assert_eq!(
            l.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["filesystem.squashfs", "layer-2.squashfs"]
        );
        for bad in [
            "boot=live".to_string(),
            format!("cairn.verity=filesystem.squashfs:{H} cairn.verity=filesystem.squashfs:{H}"),
            format!("cairn.verity=../x.squashfs:{H}"),
            format!("cairn.verity=filesystem.squashfs:{}", H.to_uppercase()),
            "cairn.verity=filesystem.squashfs:abc".to_string(),
            format!("cairn.verity=filesystem.squashfs.verity:{H}"),
            format!("cairn.verity=a.squashfs:{H},a.squashfs:{H}"),
            format!("cairn.verity=a.squashfs{H}"),
            "cairn.verity=".to_string(),
        ] {
            assert!(signed_layers(&bad).is_err(), "{bad}");
        }
    }

    /// Another image's signed boot.cfg, in this image's directory, is
    /// refused; so is one that names two images, or none.
    #[test]
    fn a_boot_cfg_runs_only_with_its_own_image() {
        let id = ImageId::parse("web/7").unwrap();
        assert!(check_image_arg("boot=live cairn.image=web/7 quiet", &id).is_ok());
        for bad in [
            "boot=live cairn.image=web/1",
            "cairn.image=web/7 cairn.image=web/1",
            "boot=live",
            "cairn.image=web/7x",
        ] {
            let e = check_image_arg(bad, &id).unwrap_err();
            assert!(e.downcast_ref::<VerificationFailed>().is_some(), "{bad}");
        }
        assert!(check_entry("rollback>web-7-ram").is_ok());
        assert!(check_entry("found>/images/web/7").is_ok());
        for bad in ["", "web-7 cairn.entry=x", "web-7\n", "web;7", "web$7"] {
            assert!(check_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_kernel_is_known_by_its_header() {
        let mut h = vec![0u8; 0x4000];
        h[0x202..0x206].copy_from_slice(b"HdrS");
        let ptr: u16 = 0x3000 - 0x200;
        h[0x20E..0x210].copy_from_slice(&ptr.to_le_bytes());
        let v = b"6.12.57+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.12.57-1 (2025-11-05)";
        h[0x3000..0x3000 + v.len()].copy_from_slice(v);
        assert_eq!(
            bzimage_version(&h).as_deref(),
            Some(std::str::from_utf8(v).unwrap())
        );
        let (r, ver) = (
            "6.12.57+deb13-cloud-amd64",
            "#1 SMP PREEMPT_DYNAMIC Debian 6.12.57-1 (2025-11-05)",
        );
        assert_eq!(kernel_unfit(&h, r, ver), None);
        assert!(kernel_unfit(&h, "6.12.57+deb13-amd64", ver).is_some());
        assert!(
            kernel_unfit(
                &h,
                r,
                "#1 SMP PREEMPT_DYNAMIC Debian 6.12.58-1 (2025-11-20)"
            )
            .is_some()
        );
        // Cut before the version's end (a kernel shorter than its header
        // says), or no header at all.
        assert!(kernel_unfit(&h[..0x3010], r, ver).is_some(), "cut short");
        h[0x202] = b'X';
        assert!(kernel_unfit(&h, r, ver).is_some(), "no header");
    }

    #[test]
    fn kernel_arguments_must_be_the_running_kernels() {
        let kernel = "BOOT_IMAGE=/x boot=live console=ttyS0 cairn.image=w/1 cairn.verity=a:b live-media-path=/images/w/1 cairn.boot=AB cairn.entry=w-1";
        assert_eq!(
            args_unfit(
                "boot=live console=ttyS0 cairn.image=w/2 cairn.verity=c:d",
                kernel
            ),
            None
        );
        assert!(
            args_unfit(
                "boot=live console=ttyS0 lockdown=integrity cairn.image=w/2",
                kernel
            )
            .is_some()
        );
        assert!(args_unfit("boot=live cairn.image=w/2", kernel).is_some());
    }
}

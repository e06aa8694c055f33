//! Sealing an image: the layers' dm-verity trees, its boot arguments
//! (`boot.cfg`, with their root hashes) and `BOOTSUMS`, the sums over every
//! file and the detached signatures of what GRUB opens.

use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::verify::hash_both;
use super::{BOOT_CFG, BOOT_SUMS, Manifest, read_manifest, verity};
use crate::parallel;
use crate::trust::keys::{SigningKey, sign_file};

/// The kernel arguments of an image, `live-media-path` aside (the boot
/// medium decides it): live-boot, the manifest's command line, the image's
/// name, and each layer (lowest first) with the root hash of its dm-verity
/// tree, which this writes beside it: the initramfs mounts exactly these
/// layers, in this order, each through dm-verity (see
/// `build::customize::live_verify`).
pub fn boot_args(dir: &Path, m: &Manifest) -> Result<String> {
    let mut args = vec!["boot=live".to_string()];
    for a in &m.kernel_cmdline {
        if let Some(why) = crate::profile::refused_kernel_arg(a) {
            bail!("kernel argument {a:?}: {why}");
        }
        args.push(a.clone());
    }
    args.push(format!("cairn.image={}/{}", m.profile, m.version));
    for l in &m.layers {
        if !crate::names::is_safe(l) || !l.ends_with(".squashfs") {
            bail!("layer {l:?}: not a squashfs with a plain name");
        }
    }
    let roots = parallel::map(&m.layers, parallel::cpus(), |l| {
        verity::format(&dir.join(l))
    });
    let mut specs = Vec::new();
    for (l, h) in m.layers.iter().zip(roots) {
        specs.push(format!("{l}:{}", h?));
    }
    args.push(format!("cairn.verity={}", specs.join(",")));
    Ok(args.join(" "))
}

/// The image's signed GRUB snippet (`boot.cfg`).
pub fn boot_cfg(m: &Manifest, args: &str) -> String {
    format!(
        "# cairn image {p} {v}: read by cairn's GRUB menu, signed (boot.cfg.sig)\n\
         set cairn_title=\"{p} {v}\"\n\
         set cairn_args=\"{args}\"\n",
        p = m.profile,
        v = m.version
    )
}

/// The kernel arguments a `boot.cfg` sets (`cairn reboot --kexec` reads
/// them as the menu does, by sourcing it).
pub fn boot_cfg_args(cfg: &str) -> Option<String> {
    cfg.lines()
        .find_map(|l| l.strip_prefix("set cairn_args=\"")?.strip_suffix('"'))
        .filter(|a| !a.is_empty())
        .map(String::from)
}

/// Makes what GRUB and the initramfs check before an image boots: the
/// layers' dm-verity trees, `boot.cfg` (kernel arguments with their root
/// hashes) and `BOOTSUMS` from the manifest, and the detached signatures of
/// kernel, initrd, boot.cfg and BOOTSUMS. Returns the kernel arguments.
/// (An ISO made after this carries them all.)
pub fn prepare_boot(dir: &Path, m: &Manifest, key: &SigningKey) -> Result<String> {
    let args = boot_args(dir, m)?;
    fs::write(dir.join(BOOT_CFG), boot_cfg(m, &args))?;
    let mut sums = String::new();
    for n in ["vmlinuz", "initrd.img", BOOT_CFG] {
        let (_, h) = crate::trust::hash::sha256_file(&dir.join(n))?;
        sums.push_str(&format!("{h}  {n}\n"));
    }
    fs::write(dir.join(BOOT_SUMS), sums)?;
    for n in ["vmlinuz", "initrd.img", BOOT_CFG, BOOT_SUMS] {
        sign_file(key, &dir.join(n))?;
    }
    Ok(args)
}

/// Seals an image: `prepare_boot` (when it has a kernel), then `seal_sums`.
pub fn seal(dir: &Path, key: &SigningKey) -> Result<()> {
    if dir.join("vmlinuz").exists() {
        prepare_boot(dir, &read_manifest(dir)?, key)?;
    }
    seal_sums(dir, key)
}

/// SHA256SUMS and SHA512SUMS over every file of `dir` (coreutils format,
/// `sha256sum -c` reads it), and detached signatures of what GRUB opens
/// (under check_signatures=enforce it wants a .sig per file).
pub fn seal_sums(dir: &Path, key: &SigningKey) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("SHA") && !n.ends_with(".sig"))
        .collect();
    names.sort();
    let sums = parallel::map(&names, parallel::cpus(), |n| hash_both(&dir.join(n)));
    let (mut s256, mut s512) = (String::new(), String::new());
    for (n, r) in names.iter().zip(sums) {
        let (a, b) = r?;
        s256.push_str(&format!("{a}  {n}\n"));
        s512.push_str(&format!("{b}  {n}\n"));
    }
    fs::write(dir.join("SHA256SUMS"), s256)?;
    fs::write(dir.join("SHA512SUMS"), s512)?;
    // ISO files too: cairn's menu verifies one before it goes on a disk.
    let isos = names
        .iter()
        .filter(|n| n.ends_with(".iso"))
        .map(String::as_str);
    for n in ["SHA256SUMS", "SHA512SUMS"].into_iter().chain(isos) {
        sign_file(key, &dir.join(n))?;
    }
    // Served by a web server's unprivileged workers, read by GRUB and
    // by machines.
    crate::fsutil::make_public(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &str, pk: &[(&str, &str)]) -> Manifest {
        crate::image::test_manifest(v, pk)
    }

    #[test]
    fn boot_cfg_args_read_back() {
        let m = m("20261126T000000Z", &[]);
        let cfg = boot_cfg(&m, "boot=live module=p cairn.sha256=a:b");
        assert_eq!(
            boot_cfg_args(&cfg).as_deref(),
            Some("boot=live module=p cairn.sha256=a:b")
        );
        assert_eq!(boot_cfg_args("set cairn_args=\"\"\n"), None);
    }
}

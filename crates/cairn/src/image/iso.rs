//! A hybrid ISO (BIOS and UEFI, CD or USB stick) made by grub-mkrescue, with
//! live-boot's layout: `/live/vmlinuz`, `/live/initrd.img`, `/live/filesystem.squashfs`.

use fs_err as fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::tool::{GRUB_MKRESCUE, MFORMAT, XORRISO};
use crate::cmd::{Cmd, require};

/// The GRUB platforms grub-mkrescue needs for a hybrid image.
pub fn require_tools() -> Result<()> {
    require(&[&GRUB_MKRESCUE, &XORRISO, &MFORMAT])?;
    for (dir, pkg) in [
        ("/usr/lib/grub/i386-pc", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
    ] {
        if !Path::new(dir).is_dir() {
            anyhow::bail!("{dir} not found: apt-get install {pkg}");
        }
    }
    Ok(())
}

/// The ISO's GRUB menu (Debian's GRUB from grub-mkrescue, which checks no
/// signature: an ISO booted by itself is as trustworthy as the medium it is
/// on; cairn's disk menu, which boots ISO files by loopback, checks what it
/// loads from one). Normal (layers read from the medium, RAM overlay) and in
/// RAM (`toram`). `args` are the image's boot arguments
/// (`image::boot_args`); the initramfs binds to this ISO's file system by
/// its UUID, which GRUB reads at boot.
pub fn grub_cfg(title: &str, args: &str) -> String {
    format!(
        r#"set timeout=3
set default=0
insmod all_video
insmod probe
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set cairn_uuid=""
probe --set=cairn_uuid --fs-uuid "$root"
export cairn_uuid
menuentry "{title}" --id normal {{
    linux /live/vmlinuz {args} live-media-path=/live "cairn.boot=$cairn_uuid"
    initrd /live/initrd.img
}}
menuentry "{title} (in RAM)" --id toram {{
    linux /live/vmlinuz {args} live-media-path=/live "cairn.boot=$cairn_uuid" toram
    initrd /live/initrd.img
}}
"#
    )
}

/// Makes `out` from the image files in `image_dir` (after
/// `image::prepare_boot`): kernel, initrd and boot.cfg with their
/// signatures and the signed BOOTSUMS that binds the three together
/// (cairn's disk menu checks them as it loads them from the ISO), and the
/// manifest's layers with their dm-verity trees.
pub fn make(
    image_dir: &Path,
    m: &super::Manifest,
    out: &Path,
    title: &str,
    args: &str,
    volid: &str,
    work: &Path,
) -> Result<()> {
    require_tools()?;
    let staging = work.join("iso");
    let live = staging.join("live");
    fs::create_dir_all(&live)?;
    fs::create_dir_all(staging.join("boot/grub"))?;
    let mut files: Vec<String> = Vec::new();
    for n in ["vmlinuz", "initrd.img", super::BOOT_CFG, super::BOOT_SUMS] {
        files.push(n.to_string());
        files.push(format!("{n}.sig"));
    }
    for l in &m.layers {
        files.push(l.clone());
        files.push(format!("{l}.verity"));
    }
    for f in &files {
        // Hard links: the staging tree costs no space.
        let src = image_dir.join(f);
        fs::hard_link(&src, live.join(f))
            .or_else(|_| fs::copy(&src, live.join(f)).map(|_| ()))
            .with_context(|| format!("staging {}", src.display()))?;
    }
    fs::write(staging.join("boot/grub/grub.cfg"), grub_cfg(title, args))?;
    Cmd::new(GRUB_MKRESCUE.program)
        .arg("-o")
        .arg(out)
        .arg(&staging)
        .args(["--", "-volid", volid])
        .run()
        .context("making the ISO")?;
    fs::remove_dir_all(&staging).ok();
    Ok(())
}

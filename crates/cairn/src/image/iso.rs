//! A hybrid ISO (BIOS and UEFI, CD or USB stick) made by grub-mkrescue, with
//! live-boot's layout: `/live/vmlinuz`, `/live/initrd.img`, `/live/filesystem.squashfs`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cmd::{Cmd, Tool, require};

pub const GRUB_MKRESCUE: Tool = Tool {
    program: "grub-mkrescue",
    package: "grub-common",
};
pub const XORRISO: Tool = Tool {
    program: "xorriso",
    package: "xorriso",
};
pub const MFORMAT: Tool = Tool {
    program: "mformat",
    package: "mtools",
};

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

/// The ISO's GRUB menu: normal (squashfs read from the medium, RAM overlay)
/// and in RAM (`toram`). `args` are the image's boot arguments
/// (`image::boot_args`): the initramfs checks the squashfs hash in them.
pub fn grub_cfg(title: &str, args: &str) -> String {
    format!(
        r#"set timeout=3
set default=0
insmod all_video
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "{title}" --id normal {{
    linux /live/vmlinuz {args} live-media-path=/live
    initrd /live/initrd.img
}}
menuentry "{title} (in RAM)" --id toram {{
    linux /live/vmlinuz {args} live-media-path=/live toram
    initrd /live/initrd.img
}}
"#
    )
}

/// Makes `out` from the image files in `image_dir`.
pub fn make(
    image_dir: &Path,
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
    let mut files: Vec<String> = ["vmlinuz", "initrd.img", super::SQUASHFS]
        .map(String::from)
        .to_vec();
    for e in fs::read_dir(image_dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".module") {
            files.push(n);
        }
    }
    for f in &files {
        // Hard links: the staging tree costs no space.
        let src = image_dir.join(f);
        fs::hard_link(&src, live.join(f))
            .or_else(|_| fs::copy(&src, live.join(f)).map(|_| ()))
            .with_context(|| format!("staging {}", src.display()))?;
    }
    fs::write(staging.join("boot/grub/grub.cfg"), grub_cfg(title, args))?;
    // For cairn's disk menu, which boots ISOs by loopback.
    fs::write(
        live.join("boot.cfg"),
        format!("set cairn_title=\"{title}\"\nset cairn_args=\"{args}\"\n"),
    )?;
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

//! `cairn disk` and `cairn boot`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{Cli, show};
use crate::image;
use crate::progress::human_bytes;

#[derive(Args, Debug, Clone)]
pub struct MenuArgs {
    /// Profile whose newest image boots by default [default: boot.default-profile,
    /// or the newest image's].
    #[arg(long = "default", value_name = "PROFILE")]
    pub default_profile: Option<String>,
    /// Boots a new default image gets, without reporting a good boot, before
    /// GRUB falls back to the last image that did (a count) [default:
    /// boot.tries, or 3].
    #[arg(long, value_name = "N")]
    pub tries: Option<u32>,
    /// Seconds the menu waits [default: boot.timeout, or 5].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
}

impl MenuArgs {
    /// The flags, then the configuration's [boot], then the defaults.
    fn options(&self, c: &crate::config::Config) -> crate::boot::menu::MenuOptions {
        let d = crate::boot::menu::MenuOptions::default();
        let b = &c.settings.boot;
        crate::boot::menu::MenuOptions {
            timeout: self.timeout.or(b.timeout).unwrap_or(d.timeout),
            tries: self.tries.or(b.tries).unwrap_or(d.tries),
            default_profile: self
                .default_profile
                .clone()
                .or_else(|| b.default_profile.clone()),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// Make a boot disk: GPT with a BIOS boot partition, an EFI system
    /// partition, the boot partition (ext4 `cairn-boot`: GRUB's signed menu,
    /// the images) and a data partition (ext4, label `data`) for the
    /// profiles' data paths. cairn's GRUB, for BIOS and UEFI, has the
    /// signing key built in and boots nothing that fails its signature.
    ///
    /// TARGET is a file (created, or replaced when complete; `dd` it to a USB
    /// stick) or a block device (erased after you type its name, or --yes).
    Create {
        /// The disk: a file (created or replaced) or a block device.
        #[arg(value_name = "DISK")]
        target: PathBuf,
        /// Images to put on it: `profile` (newest), `profile/version`, or a
        /// directory. Repeat for more; the older ones of a profile become
        /// rollback entries.
        #[arg(long = "image", required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Also a cairn ISO (signed: `<image>/<profile>.iso`), booted by
        /// loopback (a file; repeatable).
        #[arg(long = "iso", value_name = "FILE")]
        isos: Vec<PathBuf>,
        /// Disk file size in bytes, or with K, M, G, T (powers of 1024: 4G,
        /// 1500M) [default: room for the images twice].
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        size: Option<u64>,
        /// Size of the data partition (bytes, or with K, M, G, T); 0 for none.
        #[arg(long, value_parser = parse_size, default_value = "256M", value_name = "SIZE")]
        data_size: u64,
        /// File system label of the data partition (profiles' `label`).
        #[arg(long, default_value = "data", value_name = "LABEL")]
        data_label: String,
        #[command(flatten)]
        menu: MenuArgs,
        #[command(flatten)]
        secure_boot: SecureBootArgs,
        /// Erase a block device without asking.
        #[arg(long)]
        yes: bool,
        /// Check the images, the key and the target and say what the disk
        /// would hold; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy more images onto a cairn disk (verified first) and write its menu
    /// again; a new default image starts a trial (boot counting).
    Add {
        /// The cairn disk: an image file or a block device.
        disk: PathBuf,
        /// `profile`, `profile/version`, or a directory.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Check the images and the disk and say what would be added; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SecureBootArgs {
    /// Secure Boot: sign GRUB's EFI binary with this db/MOK private key (a PEM file)…
    #[arg(long, requires = "secure_boot_cert", value_name = "FILE")]
    secure_boot_key: Option<PathBuf>,
    /// …and this certificate (a PEM file).
    #[arg(long, requires = "secure_boot_key", value_name = "FILE")]
    secure_boot_cert: Option<PathBuf>,
    /// Secure Boot through Debian's shim, which Microsoft's UEFI CA signed
    /// (it boots where only Microsoft's keys are enrolled, as on most
    /// machines): shim becomes BOOTX64.EFI and trusts GRUB (with SBAT
    /// metadata) through the MOK list. Enrol the certificate once:
    /// `mokutil --import CERT`, or MokManager's "Enroll key from disk"
    /// (`EFI/BOOT/cairn-mok.cer`).
    #[arg(long, requires = "secure_boot_key")]
    shim: bool,
}

impl SecureBootArgs {
    pub(super) fn get(&self) -> Option<crate::boot::grub::SecureBoot> {
        let (key, cert) = self
            .secure_boot_key
            .clone()
            .zip(self.secure_boot_cert.clone())?;
        Some(crate::boot::grub::SecureBoot {
            key,
            cert,
            shim: self.shim,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum BootCommand {
    /// Build cairn's GRUB again and install it on a cairn disk (file or
    /// device): BIOS boot code and the EFI binary, with the store's current
    /// signing key built in (e.g. after `cairn key generate --force` and
    /// `cairn image sign`), optionally signed for Secure Boot; the menu is
    /// signed again. Refused if an image on the disk does not verify.
    Install {
        /// The cairn disk: an image file or a block device.
        disk: PathBuf,
        #[command(flatten)]
        secure_boot: SecureBootArgs,
        /// Check the disk and what is on it; build and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the signed menu of a cairn disk again from the images on it
    /// (after copying or removing some by hand, or to change the default);
    /// without DISK, print the menu the store's images would get.
    Menu {
        /// The cairn disk: an image file or a block device [default: none,
        /// print the store's menu].
        disk: Option<PathBuf>,
        #[command(flatten)]
        menu: MenuArgs,
        /// Say what the menu would be; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `4G`, `512M`, `64K` or bytes (powers of 1024).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a size like 4G, 512M or a number of bytes"))?;
    if n < 0.0 {
        return Err(format!("{s:?}: negative size"));
    }
    Ok((n * mult as f64) as u64)
}

fn print_plan(p: &crate::boot::disk::DiskPlan) {
    for a in &p.add {
        outln!("{} {a}", if p.dry_run { "would add" } else { "added" });
    }
    print_menu(&p.menu);
}

fn print_menu(m: &crate::boot::menu::Menu) {
    outln!("default: {}", m.default);
    if !m.fallback.is_empty() {
        outln!("fallback: {}", m.fallback.join(" "));
    }
    for e in &m.entries {
        outln!("  {:<48} {}", e.id, e.title);
    }
    for l in &m.left_out {
        outln!("left out (fails its checks): {}: {}", l.path, l.problem);
    }
}

pub(super) fn run_disk(cli: &Cli, c: &DiskCommand) -> Result<i32> {
    match c {
        DiskCommand::Create {
            target,
            images,
            isos,
            size,
            data_size,
            data_label,
            menu,
            secure_boot,
            yes,
            dry_run,
        } => {
            // Where the disk goes is checked first: named as given, before
            // any image is looked up or GRUB built.
            if !crate::boot::disk::is_block_device(target)? {
                crate::boot::disk::check_disk_file_target(target)?;
            }
            let dirs = images
                .iter()
                .map(|s| image::resolve(&cli.store, s))
                .collect::<Result<Vec<_>>>()?;
            let yes = *yes || (!*dry_run && confirm_erase(target)?);
            let opts = crate::boot::disk::DiskOptions {
                images: dirs,
                isos: isos.clone(),
                menu: menu.options(&cli.config),
                data_size: *data_size,
                data_label: data_label.clone(),
                secure_boot: secure_boot.get(),
                yes,
                quiet: cli.quiet(),
                dry_run: *dry_run,
            };
            let r = crate::boot::disk::create(&cli.store, target, *size, &opts)?;
            // The disk's machine reports with its own key: enrolled now (a
            // disk made again over an old one is a new machine).
            if let Some(m) = &r.machine
                && let Some(profile) = &m.profile
            {
                crate::fleet::inbox::enroll(&cli.store, &m.id, &m.public_key, profile, false)
                    .map_err(|e| {
                        e.context(format!("enrolling the machine of {}", target.display()))
                    })?;
            }
            show(cli, "disk", &r, |r| {
                outln!(
                    "{}{}: {} with {} ({}), {:.1}s",
                    if r.dry_run { "would write " } else { "" },
                    r.path.display(),
                    human_bytes(r.layout.bytes),
                    r.images.join(", "),
                    if r.secure_boot {
                        "GRUB signed for Secure Boot"
                    } else {
                        "BIOS + UEFI"
                    },
                    r.seconds
                );
                print_menu(&r.menu);
                Ok(())
            })?;
            Ok(0)
        }
        DiskCommand::Add {
            disk,
            images,
            dry_run,
        } => {
            let dirs = images
                .iter()
                .map(|s| image::resolve(&cli.store, s))
                .collect::<Result<Vec<_>>>()?;
            let p = crate::boot::disk::add_images(&cli.store, disk, &dirs, cli.quiet(), *dry_run)?;
            show(cli, "disk", &p, |p| {
                print_plan(p);
                Ok(())
            })?;
            Ok(0)
        }
    }
}

pub(super) fn run_boot(cli: &Cli, c: &BootCommand) -> Result<i32> {
    match c {
        BootCommand::Install {
            disk,
            secure_boot,
            dry_run,
        } => {
            let sb = secure_boot.get();
            let m = crate::boot::disk::install(&cli.store, disk, sb.as_ref(), *dry_run)?;
            let p = crate::boot::disk::DiskPlan {
                dry_run: *dry_run,
                disk: disk.clone(),
                add: Vec::new(),
                menu: m,
            };
            show(cli, "disk", &p, |p| {
                let m = &p.menu;
                outln!(
                    "{}: GRUB {} (BIOS + UEFI{}), menu {}",
                    disk.display(),
                    if p.dry_run {
                        "would be installed"
                    } else {
                        "installed"
                    },
                    match &sb {
                        Some(s) if s.shim => ", signed for Secure Boot, behind shim",
                        Some(_) => ", signed for Secure Boot",
                        None => "",
                    },
                    if p.dry_run {
                        "would be signed again"
                    } else {
                        "signed again"
                    }
                );
                print_menu(m);
                Ok(())
            })?;
            Ok(0)
        }
        BootCommand::Menu {
            disk,
            menu,
            dry_run,
        } => {
            let m = match disk {
                Some(d) => crate::boot::disk::menu_on_disk(
                    &cli.store,
                    d,
                    menu.default_profile.clone(),
                    menu.tries,
                    menu.timeout,
                    *dry_run,
                )?,
                None => crate::boot::disk::menu_for_store(&cli.store, &menu.options(&cli.config))?,
            };
            if cli.json {
                let p = crate::boot::disk::DiskPlan {
                    dry_run: *dry_run || disk.is_none(),
                    disk: disk.clone().unwrap_or_default(),
                    add: Vec::new(),
                    menu: m,
                };
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&super::envelope("disk", &p)?)?
                );
            } else if disk.is_none() {
                out!("{}", m.cfg);
            } else {
                print_menu(&m);
            }
            Ok(0)
        }
    }
}

/// A block device is erased only when its name is typed back on a terminal
/// (or `--yes` was given): asks, and says whether it was confirmed. Not a
/// device, or no terminal: not confirmed here (the library then refuses a
/// device, naming --yes).
fn confirm_erase(target: &std::path::Path) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !crate::boot::disk::is_block_device(target)? || !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let name = target.display().to_string();
    eprint!("This erases everything on {name}. Type {name} to go on: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != name {
        anyhow::bail!("not confirmed; {name} is untouched");
    }
    Ok(true)
}

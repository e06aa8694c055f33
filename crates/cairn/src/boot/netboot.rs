//! `cairn netboot`: what a network boot serves, from the store, beside the
//! images a web server already serves (docs/netboot.md): `<store>/netboot/`
//! holds cairn's GRUB for BIOS PXE (`core.0`) and UEFI (`grubx64.efi`), the
//! key built in and signatures enforced, both pointing at the web server,
//! and the signed menu of the store's images (`grub.cfg`, `.sig`,
//! `guard.sig`). A DHCP/TFTP server (dnsmasq) hands out the GRUB files;
//! everything else comes over HTTP and is checked as on a disk.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::disk::scan::{image_problems, write_signed_cfg};
use super::grub::{self, Platform};
use super::menu::{self, LeftOut, MenuImage, NetMenuOptions};
use crate::image;
use crate::trust::keys;

/// The directory of the store a network boot serves (and TFTP's root).
pub const NETBOOT_DIR: &str = "netboot";
pub const BIOS_FILE: &str = "core.0";
pub const EFI_FILE: &str = "grubx64.efi";
/// With Secure Boot through shim: the UEFI boot file.
pub const SHIM_FILE: &str = "shimx64.efi";

/// The file a UEFI machine boots from `dir` (shim when it is there).
pub fn efi_boot_file(dir: &Path) -> &'static str {
    if dir.join(SHIM_FILE).is_file() {
        SHIM_FILE
    } else {
        EFI_FILE
    }
}

pub struct NetbootOptions {
    /// `http://HOST[:PORT]/`: where machines reach the store's web server.
    pub url: String,
    /// Profiles in the menu (empty: every profile with an image).
    pub profiles: Vec<String>,
    pub default_profile: Option<String>,
    /// (MAC, profile): that machine boots that profile by default.
    pub machines: Vec<(String, String)>,
    pub timeout: u32,
    /// Sign the UEFI GRUB for Secure Boot (with the user's db key, or
    /// for Debian's shim and the MOK list).
    pub secure_boot: Option<grub::SecureBoot>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetbootReport {
    pub schema_version: u32,
    pub dir: PathBuf,
    pub server: String,
    pub bios: PathBuf,
    pub efi: PathBuf,
    pub default: String,
    pub generation: u64,
    pub fallback: Vec<String>,
    pub entries: Vec<menu::MenuEntry>,
    pub left_out: Vec<LeftOut>,
}

/// `http://HOST[:PORT]/` → `HOST[:PORT]`. GRUB speaks plain HTTP; the
/// store must be at the server's root (the menu names `/images/...`).
pub fn server_of(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!(
            "{url}: a network boot URL is http:// (GRUB has no TLS; what it loads is checked by signature)"
        );
    };
    let (host_port, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() {
        bail!(
            "{url}: the store must be served at the root of its web server (the menu names /images/...), not under /{path}"
        );
    }
    grub::check_server(host_port)?;
    Ok(host_port.to_string())
}

/// The generation of the menu in `<store>/netboot/`, 0 without one.
fn previous_generation(store: &Path) -> u64 {
    fs::read_to_string(store.join(NETBOOT_DIR).join("grub.cfg"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("set cairn_generation="))
                .and_then(|g| g.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Writes `<store>/netboot/` for `o`.
pub fn prepare(store: &Path, o: &NetbootOptions) -> Result<NetbootReport> {
    let server = server_of(&o.url)?;
    let key = keys::load(store)?;
    for p in &o.profiles {
        crate::names::check("profile", p)?;
    }
    let (images, left_out) = menu_images(store, o, &key)?;
    // GRUB and the menu of one run carry its generation: GRUB refuses an
    // older menu. Never below an earlier run's (a clock set back).
    let generation = (crate::unix_now().max(0) as u64).max(previous_generation(store) + 1);
    let m = menu::render_net(
        &images,
        &NetMenuOptions {
            timeout: o.timeout,
            default_profile: o.default_profile.clone(),
            server: format!("http://{server}"),
            machines: o.machines.clone(),
            generation,
        },
    )?;
    // Made beside, then swapped in: a server never serves half a netboot
    // directory (GRUB files of one run with the menu of another).
    let out = store.join(NETBOOT_DIR);
    let new = store.join(format!(".{NETBOOT_DIR}.new"));
    let old = store.join(format!(".{NETBOOT_DIR}.old"));
    for d in [&new, &old] {
        if fs::symlink_metadata(d).is_ok() {
            fs::remove_dir_all(d)?;
        }
    }
    fs::create_dir_all(&new)?;
    grub_files(&new, o, &key, &server, generation)?;
    write_signed_cfg(&new, &key, &m.cfg)?;
    // Handed out by a TFTP server and a web server, neither of them root.
    crate::fsutil::make_public(&new)?;
    swap_in(&new, &out, &old)?;
    Ok(NetbootReport {
        schema_version: 1,
        bios: out.join(BIOS_FILE),
        efi: out.join(efi_boot_file(&out)),
        dir: out,
        server,
        default: m.default,
        generation,
        fallback: m.fallback,
        entries: m.entries,
        left_out,
    })
}

/// The bootable images of the profiles asked for (all when none is),
/// each verified; what fails verification is left out and said.
fn menu_images(
    store: &Path,
    o: &NetbootOptions,
    key: &keys::SigningKey,
) -> Result<(Vec<MenuImage>, Vec<LeftOut>)> {
    let mut images = Vec::new();
    let mut left_out = Vec::new();
    for e in image::list(store)? {
        if !o.profiles.is_empty() && !o.profiles.contains(&e.profile) {
            continue;
        }
        let dir = format!("/images/{}/{}", e.profile, e.version);
        if !image::read_manifest(&e.path).is_ok_and(|m| m.bootable) {
            continue;
        }
        let problems = image_problems(&e.path, key, true);
        if !problems.is_empty() {
            tracing::warn!(
                "left out of the network menu: {dir}: {}",
                problems.join("; ")
            );
            left_out.push(LeftOut {
                path: dir,
                problem: problems.join("; "),
            });
            continue;
        }
        images.push(MenuImage {
            profile: e.profile,
            version: e.version,
            dir,
        });
    }
    for p in &o.profiles {
        if !images.iter().any(|i| &i.profile == p) {
            bail!(
                "no bootable, verified image of profile {p} in {}",
                store.display()
            );
        }
    }
    if images.is_empty() {
        bail!("no bootable, verified image in {}", store.display());
    }
    Ok((images, left_out))
}

/// GRUB for BIOS and UEFI in `new`, the key and the server built in; with
/// Secure Boot the UEFI one signed, and shim with its MOK manager beside.
fn grub_files(
    new: &Path,
    o: &NetbootOptions,
    key: &keys::SigningKey,
    server: &str,
    generation: u64,
) -> Result<()> {
    grub::mkimage_net(
        Platform::Bios,
        &new.join(BIOS_FILE),
        &key.public_key,
        server,
        generation,
        None,
    )?;
    let shim = o.secure_boot.as_ref().filter(|sb| sb.shim);
    let sbat = new.join("sbat.csv");
    if shim.is_some() {
        for f in [grub::SHIM, grub::MOK_MANAGER] {
            if !Path::new(f).is_file() {
                bail!("{f} not found: apt-get install shim-signed");
            }
        }
        fs::write(&sbat, grub::sbat_csv()?)?;
    }
    let efi = new.join(EFI_FILE);
    grub::mkimage_net(
        Platform::Efi,
        &efi,
        &key.public_key,
        server,
        generation,
        shim.map(|_| sbat.as_path()),
    )?;
    let _ = fs::remove_file(&sbat);
    if let Some(sb) = &o.secure_boot {
        grub::sbsign(&efi, &sb.key, &sb.cert)?;
    }
    if shim.is_some() {
        // Shim is the UEFI boot file; it loads grubx64.efi from the same
        // TFTP directory and trusts it through the MOK list.
        fs::copy(grub::SHIM, new.join(SHIM_FILE))?;
        fs::copy(grub::MOK_MANAGER, new.join("mmx64.efi"))?;
        if let Some(sb) = &o.secure_boot {
            fs::write(
                new.join("cairn-mok.cer"),
                crate::trust::cert::der(&sb.cert)?,
            )?;
        }
    }
    Ok(())
}

/// `new` becomes `out`; the previous `out` goes (by way of `old`).
fn swap_in(new: &Path, out: &Path, old: &Path) -> Result<()> {
    if fs::symlink_metadata(out).is_ok() {
        fs::rename(out, old)?;
    }
    fs::rename(new, out).with_context(|| format!("putting {} in place", out.display()))?;
    if fs::symlink_metadata(old).is_ok() {
        fs::remove_dir_all(old)?;
    }
    Ok(())
}

/// A dnsmasq configuration that hands out cairn's GRUB on `network` (an
/// IPv4 network address such as 192.168.1.0) as proxy DHCP — the network's
/// own DHCP server keeps giving the addresses — and serves `tftp_root`
/// (the store's netboot/) over TFTP. dnsmasq is Debian's `dnsmasq-base`.
pub fn dnsmasq_config(tftp_root: &Path, network: &str) -> Result<String> {
    let root = tftp_root
        .to_str()
        .filter(|s| {
            s.starts_with('/')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: an absolute path of letters, digits and / . _ + -",
                tftp_root.display()
            )
        })?;
    let ip: std::net::Ipv4Addr = network
        .parse()
        .with_context(|| format!("{network:?}: an IPv4 network address such as 192.168.1.0"))?;
    Ok(format!(
        "# cairn netboot: dnsmasq as proxy DHCP on {ip} (the network's DHCP server\n\
         # keeps handing out addresses) and TFTP of {root}.\n\
         # Everything after GRUB comes over HTTP from the store's web server.\n\
         port=0\n\
         dhcp-range={ip},proxy\n\
         dhcp-no-override\n\
         enable-tftp\n\
         tftp-root={root}\n\
         # BIOS PXE: core.0 (dnsmasq adds the .0)\n\
         pxe-service=tag:!efi64,X86PC,\"cairn (BIOS)\",core\n\
         # UEFI x86-64 (client architectures 7 and 9)\n\
         dhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-match=set:efi64,option:client-arch,9\n\
         pxe-service=tag:efi64,X86-64_EFI,\"cairn (UEFI)\",{efi}\n",
        efi = efi_boot_file(tftp_root)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_gets_plain_paths_and_an_address() {
        let c = dnsmasq_config(Path::new("/srv/cairn/netboot"), "192.168.1.0").unwrap();
        assert!(c.contains("tftp-root=/srv/cairn/netboot\n"));
        assert!(c.contains("dhcp-range=192.168.1.0,proxy\n"));
        for bad in ["/srv/a b", "srv/x", "/srv/x\nconf-file=/etc/shadow"] {
            assert!(
                dnsmasq_config(Path::new(bad), "192.168.1.0").is_err(),
                "{bad}"
            );
        }
        for bad in ["", "192.168.1", "192.168.1.0,proxy\nx=y", "::1"] {
            assert!(dnsmasq_config(Path::new("/srv/n"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_plain_http_at_a_servers_root() {
        assert_eq!(server_of("http://10.0.2.2:8080/").unwrap(), "10.0.2.2:8080");
        assert_eq!(
            server_of("http://boot.example.org").unwrap(),
            "boot.example.org"
        );
        for bad in [
            "https://boot/",
            "http://boot/cairn/",
            "http://bo ot/",
            "http://boot:99999/",
            "http://boot:/",
            "http://-x/",
            "http://a\"b/",
            "http:///",
        ] {
            assert!(server_of(bad).is_err(), "{bad}");
        }
    }
}

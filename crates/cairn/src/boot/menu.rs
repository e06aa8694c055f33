//! The signed grub.cfg: one entry per image (newest first per profile, the
//! default profile first), older images in a rollback submenu, ISO files,
//! and a submenu that discovers at boot every image present on the disk.
//! Every entry verifies what it loads before loading it (see `cairn_check`
//! in the generated script); boot counting falls back to the last image that
//! booted fine.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// An image on the boot partition.
#[derive(Debug, Clone)]
pub struct MenuImage {
    pub profile: String,
    pub version: String,
    /// Its directory from the partition's root, e.g. `/images/web/20261126T015228Z`.
    pub dir: String,
}

/// A cairn ISO on the boot partition (with its `.sig`).
#[derive(Debug, Clone)]
pub struct MenuIso {
    /// e.g. `/isos/web.iso`
    pub path: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MenuOptions {
    /// Seconds the menu waits.
    pub timeout: u32,
    /// Boots an untried default gets before the fallback.
    pub tries: u32,
    /// Profile whose newest image boots by default (else the newest image's).
    pub default_profile: Option<String>,
}

impl Default for MenuOptions {
    fn default() -> Self {
        MenuOptions {
            timeout: 5,
            tries: 3,
            default_profile: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MenuEntry {
    /// GRUB's selector (`submenu-id>entry-id` inside a submenu).
    pub id: String,
    pub title: String,
    pub dir: String,
    pub in_ram: bool,
}

#[derive(Debug, Serialize)]
pub struct Menu {
    #[serde(skip)]
    pub cfg: String,
    pub default: String,
    pub fallback: Vec<String>,
    pub entries: Vec<MenuEntry>,
    /// Images and ISOs on the disk that failed their checks: not in the menu.
    pub left_out: Vec<LeftOut>,
}

/// An image directory or ISO file left out of a disk's menu, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    /// From the partition's root, as the menu would name it.
    pub path: String,
    pub problem: String,
}

fn safe(s: &str) -> bool {
    crate::names::is_safe(s)
}

/// The script before the entries: console, lock, the self-check of
/// signature checking (every menu, disk or network).
const HEAD: &str = r#"set pager=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
# The console stays locked (superusers without a password, set before this
# file too): at a prompt, `set check_signatures=no` would end enforcement.
set superusers=cairn
export superusers

# GRUB 2.06 takes an `if` on an unknown command as true: before trusting
# verify_detached, prove that it works and refuses a wrong signature.
if [ "$check_signatures" != enforce ]; then
    echo "cairn: GRUB does not enforce signatures (no key built in): refusing to boot"
    sleep 30
    halt
fi
if verify_detached "$prefix/grub.cfg" "$prefix/guard.sig"; then
    echo "cairn: signature checking does not work in this GRUB: refusing to boot"
    sleep 30
    halt
fi
echo "cairn: signature checks work (a wrong signature was refused)"
"#;

/// A disk's menu: the boot partition's UUID for the initramfs.
const DISK_UUID: &str = r#"
# The partition this file was checked on: the initramfs mounts images from
# it and from nothing else (cairn.boot=).
set cairn_uuid=""
probe --set=cairn_uuid --fs-uuid "$root"
if regexp '^[0-9A-Fa-f-]+$' "$cairn_uuid"; then true; else
    echo "cairn: cannot tell the UUID of the boot partition ($root): refusing to boot"
    sleep 30
    halt
fi
export cairn_uuid
"#;

/// The checks every entry makes before it loads anything, and the
/// fallback loop (`cairn_load` differs between disk and network).
const CHECK: &str = r#"
function cairn_fail {
    echo "cairn: REFUSING TO BOOT $1: $2"
    sleep 5
}

# $1: an image directory. Its signed sums, the hashes of what GRUB loads,
# its signed boot.cfg (title and kernel arguments, with the layers' dm-verity
# root hashes the initramfs mounts them by). The layers are never opened here.
function cairn_check {
    if regexp '^/images/[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._+-]*$' "$1"; then true; else
        cairn_fail "$1" "its name has characters a kernel command line cannot carry"
        return 1
    fi
    if verify_detached "$1/SHA256SUMS" "$1/SHA256SUMS.sig"; then true; else
        cairn_fail "$1" "SHA256SUMS: signature missing or bad"
        return 1
    fi
    if verify_detached "$1/BOOTSUMS" "$1/BOOTSUMS.sig"; then true; else
        cairn_fail "$1" "BOOTSUMS: signature missing or bad"
        return 1
    fi
    if sha256sum --check "$1/BOOTSUMS" --prefix "$1"; then true; else
        cairn_fail "$1" "kernel, initrd or boot.cfg differ from the signed BOOTSUMS"
        return 1
    fi
    set cairn_args=""
    if source "$1/boot.cfg"; then true; else
        cairn_fail "$1" "boot.cfg: signature missing or bad"
        return 1
    fi
    if [ -z "$cairn_args" ]; then
        cairn_fail "$1" "boot.cfg gave no kernel arguments"
        return 1
    fi
    return 0
}

# $1: image directory, $2: disk or ram, $3: this entry's selector (for the
# boot-counting mark the booted system writes). When $1 is refused, the
# images in $cairn_fallbacks (DIR=SELECTOR, in order) are tried the same way,
# from disk: GRUB's own `fallback` knows neither ids nor submenus.
function cairn_boot {
    if cairn_check "$1"; then
        cairn_load "$1" "$2" "$3"
        return 0
    fi
    for cairn_f in $cairn_fallbacks; do
        regexp --set=1:cairn_fdir --set=2:cairn_fsel '^([^=]*)=(.*)$' "$cairn_f"
        if [ "$cairn_fdir" != "$1" ]; then
            echo "cairn: falling back to $cairn_fdir"
            if cairn_check "$cairn_fdir"; then
                cairn_load "$cairn_fdir" disk "$cairn_fsel"
                return 0
            fi
        fi
    done
    echo "cairn: no image passed its checks"
    sleep 10
}
"#;

/// Loading from a disk (with boot counting) or from an ISO file on it.
const DISK_LOAD: &str = r#"
function cairn_load {
    cairn_count "$3"
    set cairn_ram=""
    if [ "$2" = ram ]; then set cairn_ram=toram; fi
    echo "cairn: $cairn_title verified, booting ($2)"
    linux "$1/vmlinuz" $cairn_args "live-media-path=$1" "cairn.boot=$cairn_uuid" $cairn_ram "cairn.entry=$3"
    initrd "$1/initrd.img"
}

# $1: a cairn ISO, $2: disk or ram, $3: this entry's selector. The ISO is
# looped without a check of the whole file (under enforce GRUB would read
# all of it into memory); what is loaded from it is checked as it is loaded:
# its signed BOOTSUMS binds kernel, initrd and boot.cfg together (no mix of
# files from different signed images); each is checked against its own
# signature as it is loaded (the bytes checked are the bytes used); its
# layers by dm-verity.
function cairn_iso {
    set check_signatures=no
    loopback cairn_loop "$1"
    set check_signatures=enforce
    if verify_detached (cairn_loop)/live/BOOTSUMS (cairn_loop)/live/BOOTSUMS.sig; then true; else
        cairn_fail "$1" "/live/BOOTSUMS in the ISO: signature missing or bad"
        return 1
    fi
    if sha256sum --check (cairn_loop)/live/BOOTSUMS --prefix (cairn_loop)/live; then true; else
        cairn_fail "$1" "kernel, initrd or boot.cfg in the ISO differ from its signed BOOTSUMS"
        return 1
    fi
    set cairn_args=""
    source (cairn_loop)/live/boot.cfg
    if [ -z "$cairn_args" ]; then
        cairn_fail "$1" "/live/boot.cfg in the ISO: signature missing or bad"
        return 1
    fi
    cairn_count "$3"
    set cairn_ram=""
    if [ "$2" = ram ]; then set cairn_ram=toram; fi
    echo "cairn: $1 verified, booting ($2)"
    linux (cairn_loop)/live/vmlinuz $cairn_args live-media-path=/live "findiso=$1" "cairn.boot=$cairn_uuid" $cairn_ram "cairn.entry=$3"
    initrd (cairn_loop)/live/initrd.img
}
"#;

/// A machine (a VM) can pick an entry through its SMBIOS serial (qemu
/// -smbios type=1,serial=cairn-entry:ID): only signed entries can be
/// chosen. A one-shot next_entry (`cairn reboot`) still wins.
const SMBIOS_PICK: &str = r#"
smbios --type 1 --get-string 7 --set cairn_smbios
set cairn_pick=""
regexp --set=1:cairn_pick '^cairn-[a-z-]+:(.+)$' "$cairn_smbios"
if [ -n "$cairn_pick" ]; then
    if [ -z "$cairn_next" ]; then set default="$cairn_pick"; fi
fi
"#;

/// An entry the initramfs refused at its last boot (it wrote `cairn_bad`)
/// is not booted by default again, whatever chose it: the last good entry
/// is, else the first fallback. (Written again by `cairn boot menu`, the
/// menu forgets it.)
const REFUSED: &str = r#"if [ -n "$cairn_bad" ]; then
    if [ "$default" = "$cairn_bad" ]; then
        set cairn_back="FALLBACK"
        if [ -n "$cairn_good" ]; then
            if [ "$cairn_good" != "$cairn_bad" ]; then set cairn_back="$cairn_good"; fi
        fi
        echo "cairn: $cairn_bad was refused at its last boot; booting $cairn_back instead"
        set default="$cairn_back"
    fi
fi
"#;

/// Images copied onto the disk by hand, offered at boot: each directory
/// whose name passes the name rule (the others are named and left out: a
/// name reaches the kernel command line) and has a boot.cfg; checked by
/// `cairn_boot` like every entry.
const FOUND: &str = r#"submenu "Images on this disk (found now)" --unrestricted --id found {
    for cairn_d in /images/*/*; do
        if regexp '^/images/NAME/NAME$' "$cairn_d"; then
            if [ -f "$cairn_d/boot.cfg" ]; then
                menuentry "$cairn_d" --unrestricted --id "$cairn_d" "$cairn_d" {
                    cairn_boot "$2" disk "found>$2"
                }
                menuentry "$cairn_d (in RAM)" --unrestricted --id "$cairn_d-ram" "$cairn_d" {
                    cairn_boot "$2" ram "found>$2-ram"
                }
            fi
        else
            echo "cairn: left out $cairn_d: its name has characters a kernel command line cannot carry"
        fi
    done
}
"#;

/// The id of an image's menu entry (in a submenu, prefixed `rollback>`).
pub fn entry_id(profile: &str, version: &str, ram: bool) -> String {
    format!("{profile}-{version}{}", if ram { "-ram" } else { "" })
}

/// The selector of the entry that the menu's "found now" loop makes at boot
/// for image directory `dir` (an image copied onto the disk by hand).
pub fn found_selector(dir: &str, ram: bool) -> String {
    format!("found>{dir}{}", if ram { "-ram" } else { "" })
}

/// The line of a menu entry that boots image directory `dir` (`/images/P/V`)
/// as `selector`; `cairn reboot` finds an entry's selector by it.
pub fn boot_call(dir: &str, ram: bool, selector: &str) -> String {
    format!(
        "cairn_boot \"{dir}\" {} \"{selector}\"",
        if ram { "ram" } else { "disk" }
    )
}

/// Renders the menu for `images` (any order) and `isos`.
pub fn render(images: &[MenuImage], isos: &[MenuIso], opts: &MenuOptions) -> Result<Menu> {
    let (by_profile, order) = by_profile(images, opts)?;
    let (mut entries, top, rollback) = image_entries(&by_profile, &order)?;
    if entries.is_empty() {
        bail!("no images to put in the menu");
    }
    let (default, fallback) = default_and_fallback(&entries, order[0]);
    let mut cfg = String::new();
    writeln!(
        cfg,
        "# cairn boot menu, generated by cairn {}; signed (grub.cfg.sig).\n\
         # Do not edit: `cairn boot menu --disk DISK` writes it again.",
        env!("CARGO_PKG_VERSION")
    )?;
    for part in [HEAD, DISK_UUID, CHECK, DISK_LOAD] {
        cfg.push_str(part);
    }
    writeln!(
        cfg,
        "\nset timeout={}\nset timeout_style=menu",
        opts.timeout
    )?;
    writeln!(cfg, "set default=\"{default}\"")?;
    let dirs: Vec<String> = fallback
        .iter()
        .filter_map(|id| entries.iter().find(|e| &e.id == id))
        .map(|e| format!("{}={}", e.dir, e.id))
        .collect();
    writeln!(
        cfg,
        "set cairn_fallbacks=\"{}\"\nexport cairn_fallbacks",
        dirs.join(" ")
    )?;
    cfg.push_str(&boot_counting(
        opts.tries,
        fallback.first().map(String::as_str),
    ));
    cfg.push_str(SMBIOS_PICK);
    writeln!(
        cfg,
        "{}",
        REFUSED.replace(
            "FALLBACK",
            fallback.first().map(String::as_str).unwrap_or("")
        )
    )?;
    cfg.push_str(&top);
    if !rollback.is_empty() {
        cfg.push_str("submenu \"Older images (rollback)\" --unrestricted --id rollback {\n");
        cfg.push_str(&rollback);
        cfg.push_str("}\n");
    }
    iso_entries(isos, &mut cfg, &mut entries)?;
    cfg.push_str(&FOUND.replace("NAME", crate::names::GRUB_ERE));
    Ok(Menu {
        cfg,
        default,
        fallback,
        entries,
        left_out: Vec::new(),
    })
}

/// Images grouped by profile, each group newest first.
type ByProfile<'a> = BTreeMap<&'a str, Vec<&'a MenuImage>>;

/// The images by profile, newest first, and the profiles in menu order:
/// the default profile (the one asked for, else the newest image's) first.
fn by_profile<'a>(
    images: &'a [MenuImage],
    opts: &MenuOptions,
) -> Result<(ByProfile<'a>, Vec<&'a str>)> {
    for i in images {
        if !safe(&i.profile) || !safe(&i.version) {
            bail!(
                "image name {}/{} has characters a menu entry cannot carry",
                i.profile,
                i.version
            );
        }
    }
    let mut by_profile = ByProfile::new();
    for i in images {
        by_profile.entry(&i.profile).or_default().push(i);
    }
    for v in by_profile.values_mut() {
        v.sort_by(|a, b| b.version.cmp(&a.version));
    }
    let default_profile = match &opts.default_profile {
        Some(p) if by_profile.contains_key(p.as_str()) => Some(p.clone()),
        Some(p) => bail!("no image of profile {p} to boot by default"),
        None => images
            .iter()
            .max_by(|a, b| a.version.cmp(&b.version))
            .map(|i| i.profile.clone()),
    };
    let mut order: Vec<&str> = by_profile.keys().copied().collect();
    if let Some(d) = &default_profile {
        // The key of `by_profile` (borrowed from `images`), not `d`.
        let at = order.iter().position(|p| p == d).unwrap_or(0);
        let first = order.remove(at);
        order.insert(0, first);
    }
    Ok((by_profile, order))
}

/// The entries of every image, on disk and in RAM: each profile's newest
/// at the top of the menu, the older ones in the rollback submenu.
fn image_entries(
    by_profile: &ByProfile,
    order: &[&str],
) -> Result<(Vec<MenuEntry>, String, String)> {
    let mut entries = Vec::new();
    let mut top = String::new();
    let mut rollback = String::new();
    for p in order {
        for (n, i) in by_profile[p].iter().enumerate() {
            let (buf, prefix, indent) = if n == 0 {
                (&mut top, "", "")
            } else {
                (&mut rollback, "rollback>", "    ")
            };
            for ram in [false, true] {
                let id = entry_id(&i.profile, &i.version, ram);
                let title = format!(
                    "{} {}{}",
                    i.profile,
                    i.version,
                    if ram { " (in RAM)" } else { "" }
                );
                let selector = format!("{prefix}{id}");
                writeln!(
                    buf,
                    "{indent}menuentry \"{title}\" --unrestricted --id \"{id}\" {{\n\
                     {indent}    {}\n{indent}}}",
                    boot_call(&i.dir, ram, &selector),
                )?;
                entries.push(MenuEntry {
                    id: selector,
                    title,
                    dir: i.dir.clone(),
                    in_ram: ram,
                });
            }
        }
    }
    Ok((entries, top, rollback))
}

/// The default entry (the first), and what is tried when an entry's image
/// fails its checks: the default profile's older images, then the other
/// profiles' newest.
fn default_and_fallback(entries: &[MenuEntry], first_profile: &str) -> (String, Vec<String>) {
    let default = entries[0].id.clone();
    // When an entry's image fails its checks, these are tried: the default
    // profile's older images, then the other profiles' newest.
    let fallback: Vec<String> = entries
        .iter()
        .filter(|e| !e.in_ram && e.id != default)
        .filter(|e| {
            e.id.starts_with("rollback>") && e.dir.starts_with(&format!("/images/{first_profile}/"))
        })
        .chain(
            entries
                .iter()
                .filter(|e| !e.in_ram && !e.id.starts_with("rollback>") && e.id != default),
        )
        .map(|e| e.id.clone())
        .collect();

    (default, fallback)
}

/// The ISO files' submenu, each checked whole, on disk and in RAM.
fn iso_entries(isos: &[MenuIso], cfg: &mut String, entries: &mut Vec<MenuEntry>) -> Result<()> {
    if !isos.is_empty() {
        cfg.push_str("submenu \"ISO files\" --unrestricted --id isos {\n");
        for iso in isos {
            let name = iso
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".iso");
            if !safe(name) {
                bail!(
                    "ISO name {} has characters a menu entry cannot carry",
                    iso.path
                );
            }
            for ram in [false, true] {
                let id = format!("iso-{name}{}", if ram { "-ram" } else { "" });
                let title = format!("{}{}", iso.path, if ram { " (in RAM)" } else { "" });
                writeln!(
                    cfg,
                    "    menuentry \"{title}\" --unrestricted --id \"{id}\" {{\n        cairn_iso \"{p}\" {m} \"isos>{id}\"\n    }}",
                    p = iso.path,
                    m = if ram { "ram" } else { "disk" }
                )?;
                entries.push(MenuEntry {
                    id: format!("isos>{id}"),
                    title,
                    dir: iso.path.clone(),
                    in_ram: ram,
                });
            }
        }
        cfg.push_str("}\n");
    }
    Ok(())
}

/// Loading over the network: GRUB read everything from the web server
/// ($root is `(http,HOST:PORT)`); the initramfs fetches the signed layers
/// from the same server (`cairn.fetch=`), into RAM.
const NET_LOAD: &str = r#"
function cairn_load {
    echo "cairn: $cairn_title verified, booting over the network (in RAM)"
    linux "$1/vmlinuz" $cairn_args "live-media-path=$1" "cairn.fetch=$cairn_server" "cairn.entry=$3"
    initrd "$1/initrd.img"
}
"#;

/// What a network menu is for: the web server its files come from, and
/// which profile a machine boots by its MAC address.
#[derive(Debug, Clone)]
pub struct NetMenuOptions {
    pub timeout: u32,
    pub default_profile: Option<String>,
    /// `http://HOST[:PORT]` (checked by the caller: no path, no quotes).
    pub server: String,
    /// (MAC address in lower case, profile).
    pub machines: Vec<(String, String)>,
    /// The run of `cairn netboot` that made this menu and the GRUB beside
    /// it: GRUB refuses a menu older than itself (a server replaying an
    /// earlier signed menu: another default, an old MAC map).
    pub generation: u64,
}

/// The network menu: each profile's newest image (older ones under
/// rollback), every entry in RAM (the layers are fetched into it), checked
/// exactly as a disk's entries are; a machine's MAC address or SMBIOS
/// serial may pick its entry among the signed ones. No boot counting: a
/// web server keeps no per-machine state (a refused image falls back
/// within the same boot).
pub fn render_net(images: &[MenuImage], opts: &NetMenuOptions) -> Result<Menu> {
    let mut m = render(
        images,
        &[],
        &MenuOptions {
            timeout: opts.timeout,
            tries: 1,
            default_profile: opts.default_profile.clone(),
        },
    )?;
    // The same entries, in RAM only, with the disk menu's ids.
    m.entries.retain(|e| e.in_ram);
    let default = m
        .entries
        .first()
        .map(|e| e.id.clone())
        .context("no images to put in the menu")?;
    // When an entry's image fails its checks: the default profile's older
    // images, then the other profiles' newest (all in RAM).
    let first_profile = m.entries[0]
        .dir
        .split('/')
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let fallback: Vec<&MenuEntry> = m
        .entries
        .iter()
        .filter(|e| {
            e.id != default
                && e.id.starts_with("rollback>")
                && e.dir.starts_with(&format!("/images/{first_profile}/"))
        })
        .chain(
            m.entries
                .iter()
                .filter(|e| e.id != default && !e.id.starts_with("rollback>")),
        )
        .collect();
    let mut cfg = String::new();
    writeln!(
        cfg,
        "# cairn network boot menu, generated by cairn {}; signed (grub.cfg.sig).\n\
         # Do not edit: `cairn netboot` writes it again.",
        env!("CARGO_PKG_VERSION")
    )?;
    cfg.push_str(HEAD);
    writeln!(
        cfg,
        "\n# Not older than the GRUB that loaded it (same `cairn netboot` run).\n\
         set cairn_generation={g}\n\
         if [ \"$cairn_generation\" -lt \"$cairn_min_generation\" ]; then\n    \
         echo \"cairn: a replayed menu (generation {g} < $cairn_min_generation): not booted\"\n    \
         sleep 30\n    halt\nfi",
        g = opts.generation
    )?;
    for part in [CHECK, NET_LOAD] {
        cfg.push_str(part);
    }
    writeln!(
        cfg,
        "\nset cairn_server=\"{}\"\nexport cairn_server\nset timeout={}\nset timeout_style=menu\nset default=\"{default}\"",
        opts.server, opts.timeout
    )?;
    writeln!(
        cfg,
        "set cairn_fallbacks=\"{}\"\nexport cairn_fallbacks\nset cairn_next=\"\"",
        fallback
            .iter()
            .map(|e| format!("{}={}", e.dir, e.id))
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    machine_choices(&m.entries, &opts.machines, &mut cfg)?;
    cfg.push_str(SMBIOS_PICK);
    net_entries(&m.entries, &mut cfg)?;
    m.fallback = fallback.iter().map(|e| e.id.clone()).collect();
    m.default = default;
    m.cfg = cfg;
    Ok(m)
}

/// The default of each machine named by its MAC address: its profile's
/// newest entry.
fn machine_choices(
    entries: &[MenuEntry],
    machines: &[(String, String)],
    cfg: &mut String,
) -> Result<()> {
    let entry_of = |profile: &str| {
        entries
            .iter()
            .find(|e| {
                !e.id.starts_with("rollback>") && e.dir.starts_with(&format!("/images/{profile}/"))
            })
            .map(|e| e.id.clone())
    };
    for (mac, profile) in machines {
        let ok = mac.len() == 17
            && mac.split(':').all(|b| {
                b.len() == 2
                    && b.bytes()
                        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            });
        if !ok {
            bail!("{mac}: a MAC address is six lower-case hex pairs, a:b:c:d:e:f");
        }
        let id =
            entry_of(profile).with_context(|| format!("{mac}: no image of profile {profile}"))?;
        writeln!(
            cfg,
            "if [ \"$net_default_mac\" = \"{mac}\" ]; then set default=\"{id}\"; fi"
        )?;
    }
    Ok(())
}

/// Every entry of the disk menu's shape, in RAM (a network boot has no
/// disk to run from), the older ones in the rollback submenu.
fn net_entries(entries: &[MenuEntry], cfg: &mut String) -> Result<()> {
    let mut top = String::new();
    let mut rollback = String::new();
    for e in entries {
        let (buf, indent) = if e.id.starts_with("rollback>") {
            (&mut rollback, "    ")
        } else {
            (&mut top, "")
        };
        let id = e.id.trim_start_matches("rollback>");
        writeln!(
            buf,
            "{indent}menuentry \"{}\" --unrestricted --id \"{id}\" {{\n{indent}    {}\n{indent}}}",
            e.title.replace(" (in RAM)", " (network, in RAM)"),
            boot_call(&e.dir, true, &e.id)
        )?;
    }
    cfg.push_str(&top);
    if !rollback.is_empty() {
        cfg.push_str("submenu \"Older images (rollback)\" --unrestricted --id rollback {\n");
        cfg.push_str(&rollback);
        cfg.push_str("}\n");
    }
    Ok(())
}

/// The environment block decides: a one-shot `next_entry` first; then an
/// untried default (`cairn_trial`) gets `tries` boots — counted down in
/// `cairn_left` by `cairn_count` when that entry is the one loaded (a boot of
/// another entry costs the trial nothing) — until the booted system marks it
/// good (`cairn_good`, written by the image's cairn-booted unit); when none
/// are left, the last good entry boots, or the first fallback. Only these
/// variables are read from the (unsigned) block.
fn boot_counting(tries: u32, first_fallback: Option<&str>) -> String {
    let mut s = String::from(
        r#"
set cairn_trial=""
set cairn_left=""
set cairn_good=""
set cairn_bad=""
set next_entry=""
load_env --skip-sig cairn_trial cairn_left cairn_good cairn_bad next_entry
export cairn_trial
export cairn_left
export cairn_good
set cairn_next="$next_entry"
if [ -n "$next_entry" ]; then
    set default="$next_entry"
    set next_entry=""
    save_env next_entry
elif [ -n "$cairn_trial" ]; then
    if [ "$cairn_good" = "$cairn_trial" ]; then
        set default="$cairn_trial"
"#,
    );
    let mut count = String::from(
        "\n# $1: the entry being loaded; counts a try when it is the trial.\nfunction cairn_count {\n    if [ -z \"$cairn_trial\" ]; then return 0; fi\n    if [ \"$1\" != \"$cairn_trial\" ]; then return 0; fi\n    if [ \"$cairn_good\" = \"$cairn_trial\" ]; then return 0; fi\n",
    );
    for n in (1..=tries.max(1)).rev() {
        writeln!(
            s,
            "    elif [ \"$cairn_left\" = {n} ]; then\n        set default=\"$cairn_trial\""
        )
        .unwrap();
        writeln!(
            count,
            "    if [ \"$cairn_left\" = {n} ]; then\n        set cairn_left={m}\n        save_env cairn_left\n        echo \"cairn: trying $cairn_trial ({m} tries left after this one)\"\n        return 0\n    fi",
            m = n - 1
        )
        .unwrap();
    }
    count.push_str("}\n");
    let fb = first_fallback.unwrap_or("");
    writeln!(
        s,
        "    else\n        if [ -n \"$cairn_good\" ]; then set cairn_back=\"$cairn_good\"; else set cairn_back=\"{fb}\"; fi\n        echo \"cairn: $cairn_trial never reported a good boot; falling back to $cairn_back\"\n        set default=\"$cairn_back\"\n    fi\nfi"
    )
    .unwrap();
    s.push_str(&count);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(p: &str, v: &str) -> MenuImage {
        MenuImage {
            profile: p.into(),
            version: v.into(),
            dir: format!("/images/{p}/{v}"),
        }
    }

    #[test]
    fn newest_first_rollback_and_fallback() {
        let m = render(
            &[
                img("web", "20261101T000000Z"),
                img("base", "20261120T000000Z"),
                img("web", "20261125T000000Z"),
            ],
            &[],
            &MenuOptions {
                default_profile: Some("web".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.default, "web-20261125T000000Z");
        assert_eq!(
            m.fallback,
            ["rollback>web-20261101T000000Z", "base-20261120T000000Z"]
        );
        let ids: Vec<&str> = m.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "web-20261125T000000Z",
                "web-20261125T000000Z-ram",
                "rollback>web-20261101T000000Z",
                "rollback>web-20261101T000000Z-ram",
                "base-20261120T000000Z",
                "base-20261120T000000Z-ram"
            ]
        );
        assert!(m.cfg.contains(
            "cairn_boot \"/images/web/20261101T000000Z\" ram \"rollback>web-20261101T000000Z-ram\""
        ));
        assert!(m.cfg.contains(
            "load_env --skip-sig cairn_trial cairn_left cairn_good cairn_bad next_entry"
        ));
        assert!(
            m.cfg.contains(
                "elif [ \"$cairn_left\" = 3 ]; then\n        set default=\"$cairn_trial\""
            )
        );
        assert!(m.cfg.contains(
            "    if [ \"$cairn_left\" = 3 ]; then\n        set cairn_left=2\n        save_env cairn_left"
        ));
        assert!(
            m.cfg
                .contains("function cairn_load {\n    cairn_count \"$3\"")
        );
        assert!(
            m.cfg
                .contains("set cairn_back=\"rollback>web-20261101T000000Z\"")
        );
        // A refused default is not booted by default again.
        assert!(m.cfg.contains(
            "    if [ \"$default\" = \"$cairn_bad\" ]; then\n        set cairn_back=\"rollback>web-20261101T000000Z\""
        ));
        // Every image name reaching the kernel command line is checked.
        assert!(m.cfg.contains(
            "if regexp '^/images/[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._+-]*$' \"$cairn_d\"; then"
        ));
        assert!(m.cfg.contains("\"cairn.boot=$cairn_uuid\""));
    }

    #[test]
    fn default_is_newest_image_without_a_choice() {
        let m = render(
            &[img("a", "20261101T000000Z"), img("b", "20261102T000000Z")],
            &[],
            &MenuOptions::default(),
        )
        .unwrap();
        assert_eq!(m.default, "b-20261102T000000Z");
        assert!(render(&[], &[], &MenuOptions::default()).is_err());
        assert!(render(&[img("a b", "1")], &[], &MenuOptions::default()).is_err());
    }

    #[test]
    fn iso_and_found_entries_carry_their_selectors() {
        let m = render(
            &[img("a", "1")],
            &[MenuIso {
                path: "/isos/web.iso".into(),
            }],
            &MenuOptions::default(),
        )
        .unwrap();
        let iso: Vec<&str> = m
            .entries
            .iter()
            .filter(|e| e.dir == "/isos/web.iso")
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(iso, ["isos>iso-web", "isos>iso-web-ram"]);
        assert!(
            m.cfg
                .contains("cairn_iso \"/isos/web.iso\" ram \"isos>iso-web-ram\"")
        );
        // The loop's entries get the ids `cairn reboot` names for an image
        // that is on the disk but not in the written menu.
        for (ram, id, call, selector) in [
            (
                false,
                "--id \"$cairn_d\"",
                "cairn_boot \"$2\" disk \"found>$2\"",
                "found>/images/p/v",
            ),
            (
                true,
                "--id \"$cairn_d-ram\"",
                "cairn_boot \"$2\" ram \"found>$2-ram\"",
                "found>/images/p/v-ram",
            ),
        ] {
            assert!(m.cfg.contains(id), "{id}");
            assert!(m.cfg.contains(call), "{call}");
            assert_eq!(found_selector("/images/p/v", ram), selector);
        }
    }

    /// The network menu: in RAM only, the server and MAC choices in the
    /// signed text, no grubenv (a web server keeps no state), fallbacks
    /// within the boot; a bad MAC or an unknown profile refused.
    #[test]
    fn network_menu_entries_fallbacks_and_machines() {
        let opts = |machines: Vec<(String, String)>| NetMenuOptions {
            timeout: 3,
            default_profile: Some("a".into()),
            server: "http://10.0.2.2:8080".into(),
            machines,
            generation: 7,
        };
        let imgs = [img("a", "2"), img("a", "1"), img("b", "5")];
        let m = render_net(&imgs, &opts(vec![("52:54:00:12:34:56".into(), "b".into())])).unwrap();
        assert_eq!(m.default, "a-2-ram");
        assert_eq!(m.fallback, ["rollback>a-1-ram", "b-5-ram"]);
        assert!(m.entries.iter().all(|e| e.in_ram));
        assert!(m.cfg.contains("set cairn_server=\"http://10.0.2.2:8080\""));
        assert!(m.cfg.contains("set cairn_generation=7\n"));
        assert!(
            m.cfg
                .contains("if [ \"$cairn_generation\" -lt \"$cairn_min_generation\" ]; then")
        );
        assert!(m.cfg.contains("\"cairn.fetch=$cairn_server\""));
        assert!(m.cfg.contains(
            "if [ \"$net_default_mac\" = \"52:54:00:12:34:56\" ]; then set default=\"b-5-ram\"; fi"
        ));
        assert!(
            m.cfg
                .contains("cairn_boot \"/images/a/1\" ram \"rollback>a-1-ram\"")
        );
        for never in [
            "load_env",
            "save_env",
            "probe",
            "cairn.boot=",
            "/images/*/*",
        ] {
            assert!(!m.cfg.contains(never), "{never} in a network menu");
        }
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:5G",
            "52:54:00:12:34:56\"; reboot",
        ] {
            assert!(
                render_net(&imgs, &opts(vec![(bad.into(), "a".into())])).is_err(),
                "{bad}"
            );
        }
        assert!(render_net(&imgs, &opts(vec![("52:54:00:12:34:56".into(), "c".into())])).is_err());
    }
}

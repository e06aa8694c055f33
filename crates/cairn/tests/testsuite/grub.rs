//! GRUB-level attacks on a boot partition, in grub-emu (a real GRUB, every
//! module built in; no root, no VM, well under a second a run): cairn's own
//! signed menu, run against an ext4 file system this test makes, with
//! `linux` and `initrd` standing in as functions that print what GRUB would
//! hand the kernel. The attacker writes the partition and the environment
//! block but has no key.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cairn::boot::{env, menu};
use cairn::trust::keys;

use crate::support::{cairn, need_tools, ok};

/// A sealed image of made-up files at `dir` (profile `web`, `version`).
fn image(dir: &Path, version: &str, key: &keys::SigningKey) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("vmlinuz"), format!("kernel {version}\n")).unwrap();
    fs::write(dir.join("initrd.img"), format!("initrd {version}\n")).unwrap();
    fs::write(dir.join("filesystem.squashfs"), [version.len() as u8; 8192]).unwrap();
    fs::write(
        dir.join("manifest.json"),
        format!(
            r#"{{"schema-version":1,"profile":"web","profile-hash":"h","profile-commit":null,"version":"{version}","suite":"s","architecture":"amd64","host-type":"virtual","kernel":"k","kernel-cmdline":["quiet"],"compression":"zstd","level":null,"bootable":true,"parent":null,"layers":["filesystem.squashfs"],"packages":[],"files":{{}},"data":[],"built-at":0,"build-seconds":0.0,"signed-by":null,"cairn-version":"0"}}"#
        ),
    )
    .unwrap();
    cairn::image::seal(dir, key).unwrap();
}

struct Partition {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    key: keys::SigningKey,
}

/// A boot partition's tree: images web/1 and web/2 in cairn's signed menu
/// (web/2 the default), the guard signature, an environment block.
fn partition() -> Partition {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    ok(cairn(&store, &["key", "generate", "--bits", "2048"]));
    let key = keys::load(&store).unwrap();
    let tree = d.path().join("tree");
    for v in ["1", "2"] {
        image(&tree.join(format!("images/web/{v}")), v, &key);
    }
    let grub = tree.join("boot/grub");
    fs::create_dir_all(&grub).unwrap();
    let m = menu::render(
        &["1", "2"].map(|v| menu::MenuImage {
            profile: "web".into(),
            version: v.into(),
            dir: format!("/images/web/{v}"),
        }),
        &[],
        &menu::MenuOptions {
            timeout: 0,
            ..Default::default()
        },
    )
    .unwrap();
    fs::write(grub.join("grub.cfg"), &m.cfg).unwrap();
    keys::sign_file(&key, &grub.join("grub.cfg")).unwrap();
    fs::write(grub.join("guard"), "no other file\n").unwrap();
    keys::sign_file(&key, &grub.join("guard")).unwrap();
    fs::remove_file(grub.join("guard")).unwrap();
    env::save(&grub.join("grubenv"), &[]).unwrap();
    Partition { _dir: d, tree, key }
}

impl Partition {
    /// Writes the environment block as an attacker would: raw, any value.
    fn grubenv(&self, vars: &[(&str, &str)]) {
        let mut b = String::from("# GRUB Environment Block\n");
        for (k, v) in vars {
            b.push_str(&format!("{k}={v}\n"));
        }
        let mut data = b.into_bytes();
        data.resize(env::SIZE, b'#');
        fs::write(self.tree.join("boot/grub/grubenv"), data).unwrap();
    }

    /// Boots the partition in grub-emu: what GRUB printed, and the kernel
    /// command line it would have used (if any).
    fn boot(&self) -> (String, Option<String>) {
        let work = self.tree.parent().unwrap();
        let img = work.join("boot.ext4");
        let _ = fs::remove_file(&img);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&self.tree)
            .arg(&img)
            .arg("64M")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "mkfs.ext4");
        let cfg = format!(
            "trust --skip-sig (host){}\nset check_signatures=enforce\n\
             set root=(hd0)\nset prefix=($root)/boot/grub\n\
             function linux {{\n    echo LINUX-BEGIN\n    for a in \"$@\"; do echo \"ARG:$a\"; done\n    echo LINUX-END\n}}\n\
             function initrd {{\n    echo \"INITRD: $*\"\n    reboot\n}}\n\
             configfile $prefix/grub.cfg\necho \"NO-BOOT\"\nreboot\n",
            self.key.public_key.display()
        );
        let out = crate::support::grub_emu(&cfg, work, &img);
        let text = cairn::vm::strip_ansi(&out);
        // GRUB wraps its console at 80 columns: each argument was printed on
        // a line of its own, so a line that does not start one continues it.
        let cmdline = text.split_once("LINUX-BEGIN").and_then(|(_, rest)| {
            let (body, _) = rest.split_once("LINUX-END")?;
            let mut args: Vec<String> = Vec::new();
            for l in body.lines().filter(|l| !l.is_empty()) {
                match l.strip_prefix("ARG:") {
                    Some(a) => args.push(a.to_string()),
                    None => args.last_mut()?.push_str(l),
                }
            }
            Some(args.join(" "))
        });
        (text, cmdline)
    }
}

fn tools() -> bool {
    !crate::support::need_amd64("grub-emu with cairn's x86 module set")
        && !need_tools(&["grub-emu", "gpg", "gpgv", "mkfs.ext4", "veritysetup"])
}

/// The untouched partition boots its default image with the arguments the
/// initramfs checks: the signed ones, the directory, the boot partition's
/// UUID, the entry.
#[test]
fn grub_boots_the_signed_default_with_its_checked_arguments() {
    if !tools() {
        return;
    }
    let p = partition();
    let (out, line) = p.boot();
    let line = line.unwrap_or_else(|| panic!("no kernel command line:\n{out}"));
    assert!(out.contains("cairn: signature checks work"), "{out}");
    assert!(
        line.starts_with("/images/web/2/vmlinuz boot=live quiet cairn.image=web/2 cairn.verity=filesystem.squashfs:")
            && line.contains(" live-media-path=/images/web/2 cairn.boot=")
            && line.ends_with(" cairn.entry=web-2"),
        "{line}"
    );
}

/// Attack 2: a directory copied onto the partition whose name carries kernel
/// arguments, chosen through the unsigned `next_entry`. GRUB leaves it out,
/// says why, and boots a signed image with none of the smuggled arguments.
#[test]
fn a_directory_name_cannot_smuggle_kernel_arguments() {
    if !tools() {
        return;
    }
    let p = partition();
    let evil = "x cairn.verity= live-media-path=evil break=top y";
    let dir = p.tree.join("images/web").join(evil);
    let st = Command::new("cp")
        .arg("-r")
        .arg(p.tree.join("images/web/1"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    p.grubenv(&[("next_entry", &format!("found>/images/web/{evil}"))]);
    let (out, line) = p.boot();
    // (GRUB wraps its console at 80 columns, at a space.)
    assert!(
        out.replace('\n', " ").contains(&format!(
            "cairn: left out /images/web/{evil}: its name has characters a kernel command line cannot carry"
        )),
        "{out}"
    );
    let line = line.unwrap_or_else(|| panic!("nothing booted:\n{out}"));
    assert!(!line.contains("evil") && !line.contains("break="), "{line}");
    assert!(line.contains("cairn.image=web/"), "{line}");
}

/// An entry the initramfs refused at its last boot (`cairn_bad`) is not
/// booted by default again — whatever picked it — but the next image is.
#[test]
fn an_entry_refused_at_boot_is_not_booted_again_by_default() {
    if !tools() {
        return;
    }
    let p = partition();
    p.grubenv(&[("cairn_bad", "web-2")]);
    let (out, line) = p.boot();
    assert!(
        out.replace('\n', " ")
            .contains("cairn: web-2 was refused at its last boot; booting rollback>web-1 instead"),
        "{out}"
    );
    let line = line.unwrap_or_else(|| panic!("nothing booted:\n{out}"));
    assert!(line.contains(" live-media-path=/images/web/1 "), "{line}");
    assert!(line.ends_with(" cairn.entry=rollback>web-1"), "{line}");
    // Also when the unsigned next_entry names it.
    p.grubenv(&[("cairn_bad", "web-2"), ("next_entry", "web-2")]);
    let (out, line) = p.boot();
    assert!(line.is_some_and(|l| l.contains("/images/web/1")), "{out}");
}

/// GRUB's copy of the name rule (the regular expression in the menu) gives
/// the answers the Rust rule gives, on the same names.
#[test]
fn grub_and_cairn_agree_on_names() {
    if !tools() {
        return;
    }
    let p = partition();
    let mut cfg = String::from("insmod regexp\n");
    let cases = cairn::names::EXAMPLES;
    for (i, (name, _)) in cases.iter().enumerate() {
        let quoted: String = name
            .chars()
            .flat_map(|c| match c {
                '"' | '$' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        cfg.push_str(&format!(
            "if regexp '^{}$' \"{quoted}\"; then echo \"NAME {i}=yes\"; else echo \"NAME {i}=no\"; fi\n",
            cairn::names::GRUB_ERE
        ));
    }
    cfg.push_str("reboot\n");
    let grub = p.tree.join("boot/grub");
    fs::write(grub.join("grub.cfg"), cfg).unwrap();
    keys::sign_file(&p.key, &grub.join("grub.cfg")).unwrap();
    let (out, _) = p.boot();
    for (i, (name, want)) in cases.iter().enumerate() {
        let got = if *want { "yes" } else { "no" };
        assert!(out.contains(&format!("NAME {i}={got}")), "{name:?}: {out}");
    }
}

//! What cairn does to a fresh root tree after the bootstrap: identity, root
//! access, data paths on data partitions, the boot marker unit, cairn's own
//! package, cleanup. Plain file operations on the tree, but for dpkg
//! installing cairn's package (in a chroot, mounted only while it runs).

use fs_err as fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use anyhow::{Context, Result, bail};

pub use super::chroot::{inside, inside_link};
use crate::image::paths::{DATA_GENERATOR, IMAGE_ENV, RUN_IMAGE_ENV, SIGNING_KEY};
use crate::profile::{DataPath, Profile};

/// Writes `data` at `abs` in the tree with `mode`, unless the file already
/// holds exactly that (so an upgrade's delta carries nothing for it).
pub(super) fn write(root: &Path, abs: &str, data: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    let (p, data) = (inside(root, abs)?, data.as_ref());
    let same_mode = fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode);
    if same_mode && fs::read(&p).is_ok_and(|old| old == data) {
        return Ok(());
    }
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub fn hostname(root: &Path, name: &str) -> Result<()> {
    write(root, "/etc/hostname", format!("{name}\n"), 0o644)?;
    write(
        root,
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        0o644,
    )
}

pub fn root_access(root: &Path, p: &Profile) -> Result<()> {
    if let Some(hash) = &p.root.password_hash {
        let shadow = inside(root, "/etc/shadow")?;
        let text =
            fs::read_to_string(&shadow).with_context(|| format!("reading {}", shadow.display()))?;
        let mut found = false;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.first() == Some(&"root") && f.len() > 2 {
                    found = true;
                    f[1] = hash;
                }
                f.join(":")
            })
            .collect();
        if !found {
            bail!("no root entry in {}", shadow.display());
        }
        fs::write(&shadow, out.join("\n") + "\n")?;
    }
    if !p.root.ssh_keys.is_empty() {
        let dir = inside(root, "/root/.ssh")?;
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        write(
            root,
            "/root/.ssh/authorized_keys",
            &(p.root.ssh_keys.join("\n") + "\n"),
            0o600,
        )?;
    }
    Ok(())
}

/// Each data path becomes a symlink to `/<label>/<dir>`. The partitions are
/// mounted by a systemd generator that decides at every boot, before any
/// unit starts, from the block devices the kernel has (the boot disk's
/// partitions are all there: the initramfs found the boot partition on the
/// same scan): a partition that is present is mounted before
/// `local-fs.target`, waited for however slow the machine is; one that is
/// absent is not waited for, and its directories are made on the RAM overlay
/// (said on the console). No device timeout decides, so a slow machine never
/// loses its data partition to a race. What the packages put at the path is
/// kept as a seed, copied in when the directory is new — by
/// `cairn-data.service`, after the mounts.
pub fn data_paths(root: &Path, data: &[DataPath]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut tmpfiles =
        String::from("# cairn: data directories on data partitions (see cairn-data-mounts)\n");
    let mut labels: Vec<&str> = Vec::new();
    for d in data {
        let mount = format!("/{}", d.partition);
        if !labels.contains(&d.partition.as_str()) {
            labels.push(&d.partition);
            fs::create_dir_all(inside(root, &mount)?)?;
        }
        let target = format!("{mount}/{}", d.dir);
        let at = inside_link(root, &d.path)?;
        let seed = format!("/usr/share/cairn/data-seed/{}", d.dir);
        let meta = fs::symlink_metadata(&at).ok();
        let has_content =
            meta.as_ref().is_some_and(|m| m.is_dir()) && fs::read_dir(&at)?.next().is_some();
        // Done before (an upgrade of a tree built with it): as it was.
        if meta.as_ref().is_some_and(|m| m.file_type().is_symlink())
            && fs::read_link(&at).is_ok_and(|t| t == Path::new(&target))
        {
            if inside(root, &seed)?.is_dir() {
                tmpfiles.push_str(&format!("C {target} - - - - {seed}\n"));
            } else {
                tmpfiles.push_str(&format!("d {target} 0755 root root -\n"));
            }
            continue;
        }
        if has_content {
            let s = inside(root, &seed)?;
            fs::create_dir_all(s.parent().unwrap_or(root))?;
            fs::rename(&at, &s).with_context(|| format!("moving {} to the seed {seed}", d.path))?;
            tmpfiles.push_str(&format!("C {target} - - - - {seed}\n"));
        } else {
            if let Some(m) = meta {
                if m.is_dir() {
                    fs::remove_dir(&at)?;
                } else {
                    fs::remove_file(&at)?;
                }
            }
            tmpfiles.push_str(&format!("d {target} 0755 root root -\n"));
        }
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent)?;
        }
        symlink(&target, &at).with_context(|| format!("linking {} to {target}", d.path))?;
    }
    write(root, "/usr/lib/cairn/data.conf", &tmpfiles, 0o644)?;
    write(root, DATA_GENERATOR, mounts_generator(&labels), 0o755)?;
    let mounts: Vec<String> = labels.iter().map(|l| mount_unit(l)).collect();
    let checks: String = labels
        .iter()
        .map(|l| {
            format!(
                "ExecStartPre=-/bin/sh -c 'mountpoint -q /{l} || echo \"cairn: no data partition labelled {l} mounted: /{l} is in RAM, its data will not persist\" > /dev/kmsg'\n"
            )
        })
        .collect();
    write(
        root,
        "/usr/lib/systemd/system/cairn-data.service",
        format!(
            "[Unit]\nDescription=cairn: data directories on the data partitions\n\
             DefaultDependencies=no\nWants={m}\nAfter={m}\n\
             Before=local-fs.target shutdown.target\nConflicts=shutdown.target\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n{checks}\
             ExecStart=systemd-tmpfiles --create /usr/lib/cairn/data.conf\n\n\
             [Install]\nWantedBy=local-fs.target\n",
            m = mounts.join(" ")
        ),
        0o644,
    )?;
    let wants = inside(root, "/etc/systemd/system/local-fs.target.wants")?;
    fs::create_dir_all(&wants)?;
    let link = wants.join("cairn-data.service");
    let _ = fs::remove_file(&link);
    symlink("/usr/lib/systemd/system/cairn-data.service", &link)?;
    Ok(())
}

/// The systemd generator that mounts the data partitions present at boot
/// (labels are simple names: the profile checks them).
fn mounts_generator(labels: &[&str]) -> String {
    include_str!("assets/data-mounts.sh").replace("@LABELS@", &labels.join(" "))
}

/// systemd's escaping of a path into a unit name (`systemd-escape --path`).
fn escape_path(path: &str) -> String {
    let mut s = String::new();
    for (i, part) in path.trim_matches('/').split('/').enumerate() {
        if i > 0 {
            s.push('-');
        }
        for (j, c) in part.chars().enumerate() {
            if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && !(i == 0 && j == 0)) {
                s.push(c);
            } else {
                s.push_str(&format!("\\x{:02x}", c as u32));
            }
        }
    }
    s
}

/// systemd's unit name for the mount at `/<label>`.
fn mount_unit(label: &str) -> String {
    format!("{}.mount", escape_path(label))
}

/// A unit that marks the boot good for GRUB's boot counting, says on the
/// console (and the second serial port) which image booted; with
/// `cairn.poweroff` on the kernel command line, or a DMI serial starting with
/// `cairn-test-poweroff` (qemu `-smbios type=1,serial=...`), it then powers off.
///
/// Which image this is (`/etc/cairn/image.env`) is not in the tree — the
/// same inputs must make the same bytes whatever version name the build
/// gets —: a unit early in every boot writes it to /run from the signed
/// kernel command line (`cairn.image=`), and /etc/cairn/image.env links there.
pub fn boot_marker(root: &Path) -> Result<()> {
    write(
        root,
        "/usr/lib/cairn/image-env",
        include_str!("assets/image-env.sh"),
        0o755,
    )?;
    write(
        root,
        "/usr/lib/systemd/system/cairn-image.service",
        "[Unit]\nDescription=cairn: which image booted (/run/cairn/image.env)\nDefaultDependencies=no\nBefore=sysinit.target\nConflicts=shutdown.target\nBefore=shutdown.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/lib/cairn/image-env\n\n[Install]\nWantedBy=sysinit.target\n",
        0o644,
    )?;
    write(
        root,
        "/usr/lib/cairn/booted",
        include_str!("assets/booted.sh"),
        0o755,
    )?;
    write(
        root,
        "/usr/lib/systemd/system/cairn-booted.service",
        "[Unit]\nDescription=cairn: report the booted image\nAfter=multi-user.target\n\n[Service]\nType=oneshot\nExecStart=/usr/lib/cairn/booted\n\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    )?;
    for (dir, unit) in [
        (
            "/etc/systemd/system/multi-user.target.wants",
            "cairn-booted.service",
        ),
        (
            "/etc/systemd/system/sysinit.target.wants",
            "cairn-image.service",
        ),
    ] {
        let wants = inside(root, dir)?;
        fs::create_dir_all(&wants)?;
        let link = wants.join(unit);
        let _ = fs::remove_file(&link);
        symlink(format!("/usr/lib/systemd/system/{unit}"), &link)?;
    }
    // An image of an older cairn had the file itself.
    let env = inside_link(root, IMAGE_ENV)?;
    fs::create_dir_all(env.parent().unwrap_or(root))?;
    let _ = fs::remove_file(&env);
    symlink(RUN_IMAGE_ENV, &env)?;
    Ok(())
}

/// The squashfs check in the initramfs: a live-boot component that verifies
/// every layer against the hashes on the signed kernel command line (and
/// copies only this image to RAM for toram), and an initramfs hook that
/// brings coreutils' sha256sum. Must be in the tree before the initramfs is
/// generated.
pub fn live_verify(root: &Path) -> Result<()> {
    for (path, text, mode) in INITRAMFS_FILES {
        write(root, path, text, *mode)?;
    }
    Ok(())
}

/// Early microcode for every CPU in the initramfs, whatever CPU built the
/// image: Debian's microcode packages otherwise look at the build host
/// (amd64-microcode puts nothing in unless the build host is AMD; intel-
/// microcode only the build host's, unless initramfs-tools' MODULES=most).
/// A shell script run inside the tree (chroot: a symlink in the tree never
/// leads out of it), `$1` the root it writes below (empty inside the
/// chroot; a directory in the unit test); with `$2` = `regenerate`, the
/// initramfs is made again when it changed a setting. The settings stay in
/// the image (upgrades keep them: apt runs with --force-confold).
pub const MICROCODE_EVERYWHERE: &str = r##"set -e
r="$1"; changed=
set_in() {
    f="$r/etc/default/$1"; shift
    [ -f "$f" ] || return 0
    for kv in "$@"; do
        grep -qx "$kv" "$f" && continue
        printf '%s
' "# cairn: an image boots on any CPU, whatever CPU built it" "$kv" >> "$f"
        changed=1
    done
}
set_in amd64-microcode AMD64UCODE_INITRAMFS=early
set_in intel-microcode IUCODE_TOOL_INITRAMFS=early IUCODE_TOOL_SCANCPUS=no
if [ -n "$changed" ] && [ "$2" = regenerate ]; then
    update-initramfs -u -k all
fi
"##;

/// cairn's files in the initramfs: the checks, and the hook that puts
/// them (and veritysetup) in.
const INITRAMFS_FILES: &[(&str, &str, u32)] = &[
    (
        "/usr/lib/live/boot/9995-cairn.sh",
        include_str!("assets/live-verify.sh"),
        0o644,
    ),
    (
        "/etc/initramfs-tools/hooks/cairn",
        include_str!("assets/initramfs-hook.sh"),
        0o755,
    ),
];

/// Whether the tree's initramfs files differ from this cairn's (an image
/// made by another version).
pub fn live_verify_differs(root: &Path) -> Result<bool> {
    for (path, text, _) in INITRAMFS_FILES {
        let p = inside(root, path)?;
        if fs::read(&p).map_or(true, |b| b != text.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Where images made by cairn before it was packaged carried a loose copy;
/// removed when the package goes in (it would come first on PATH).
const LOOSE_CAIRN: &str = "/usr/local/bin/cairn";
/// The environment variable naming the cairn package for images; it wins
/// over the store's `packages/` directory.
pub const PACKAGE_ENV: &str = "CAIRN_PACKAGE";

/// The cairn Debian package an image with `cairn = true` gets.
#[derive(Debug, Clone)]
pub struct CairnPackage {
    pub path: std::path::PathBuf,
    pub version: String,
}

/// Where the store keeps the cairn package for `architecture`:
/// `<store>/packages/cairn_<this version>_<architecture>.deb`.
pub fn package_in_store(store: &Path, architecture: &str) -> std::path::PathBuf {
    store.join("packages").join(format!(
        "cairn_{}_{architecture}.deb",
        env!("CARGO_PKG_VERSION")
    ))
}

/// The cairn package for profile `p` (None when it does not ask for
/// cairn): `$CAIRN_PACKAGE` if set, else the store's. Refused unless it is
/// the package `cairn` of this very version, for the profile's
/// architecture — before any work, with how to make one.
pub fn cairn_package(store: &Path, p: &Profile) -> Result<Option<CairnPackage>> {
    if !p.cairn {
        return Ok(None);
    }
    let path = match std::env::var_os(PACKAGE_ENV) {
        Some(v) if !v.is_empty() => std::path::PathBuf::from(v),
        _ => package_in_store(store, &p.architecture),
    };
    check_package(&path, env!("CARGO_PKG_VERSION"), &p.architecture, &p.name).map(Some)
}

fn check_package(
    path: &Path,
    version: &str,
    architecture: &str,
    profile: &str,
) -> Result<CairnPackage> {
    let how = || {
        format!(
            "profile {profile} has `cairn = true`, and its images get cairn {version} from its Debian package: \
             make it with `./scripts/package` in cairn's source tree, then copy \
             target/debian/cairn_{version}_{architecture}.deb into <store>/packages/ (or name it with {PACKAGE_ENV}=PATH)"
        )
    };
    if !path.is_file() {
        bail!("no cairn package at {}: {}", path.display(), how());
    }
    crate::cmd::require(&[&crate::cmd::tool::DPKG_DEB])?;
    let out = crate::cmd::Cmd::new(crate::cmd::tool::DPKG_DEB.program)
        .arg("--field")
        .arg(path)
        .args(["Package", "Version", "Architecture"])
        .run()
        .with_context(|| format!("reading the fields of {}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (pkg, ver, arch) = (field("Package"), field("Version"), field("Architecture"));
    if pkg != "cairn" || ver != version || (arch != architecture && arch != "all") {
        bail!(
            "{} is {pkg} {ver} ({arch}), not cairn {version} ({architecture}): {}",
            path.display(),
            how()
        );
    }
    Ok(CairnPackage {
        path: path.to_path_buf(),
        version: ver,
    })
}

/// The signing public key, always; with the profile's `cairn = true`,
/// cairn's package installed by dpkg in the tree (when the tree does not
/// have exactly this package already: an upgrade's delta then carries
/// nothing for it) and kexec-tools told not to load a kernel on every
/// reboot (cairn loads the one it verified). A profile that no longer asks
/// for cairn has the package purged.
pub fn cairn_tools(
    root: &Path,
    p: &Profile,
    public_key: &Path,
    package: Option<&CairnPackage>,
    epoch: i64,
) -> Result<()> {
    let key = fs::read(public_key).with_context(|| format!("reading {}", public_key.display()))?;
    write(root, SIGNING_KEY, &key, 0o644)?;
    let Some(package) = package.filter(|_| p.cairn) else {
        if installed_cairn(root)?.is_some() {
            in_chroot(root, epoch, &["dpkg", "--purge", "cairn"])?;
        }
        return Ok(());
    };
    if package_differs(root, package)? {
        let name = format!("/tmp/cairn_{}.deb", package.version);
        let copy = inside(root, &name)?;
        fs::create_dir_all(copy.parent().unwrap_or(root))?;
        fs::copy(&package.path, &copy)
            .with_context(|| format!("copying {} into the tree", package.path.display()))?;
        let r = in_chroot(
            root,
            epoch,
            &["dpkg", "--install", "--force-confold", &name],
        )
        .with_context(|| format!("installing {} in the tree", package.path.display()));
        let _ = fs::remove_file(&copy);
        r?;
    }
    remove_in_tree(root, LOOSE_CAIRN)?;
    write(
        root,
        "/etc/default/kexec",
        b"# cairn: `cairn reboot --kexec` loads the verified kernel itself.\nLOAD_KEXEC=false\nKEXEC_KERNEL=\nKEXEC_INITRD=\nUSE_GRUB_CONFIG=false\n",
        0o644,
    )?;
    Ok(())
}

/// Whether `cairn_tools` would change cairn's package in the tree: install
/// it (missing, another version, another build), or purge it (the profile
/// no longer asks for cairn).
pub fn cairn_differs(root: &Path, p: &Profile, package: Option<&CairnPackage>) -> Result<bool> {
    match package.filter(|_| p.cairn) {
        Some(package) => package_differs(root, package),
        None => Ok(installed_cairn(root)?.is_some()),
    }
}

/// The tree's installed cairn: (version, its md5sums file), asked of
/// dpkg-query with the tree's database.
fn installed_cairn(root: &Path) -> Result<Option<(String, Vec<u8>)>> {
    let admin = format!("--admindir={}", inside(root, "/var/lib/dpkg")?.display());
    let query = |args: &[&str]| {
        crate::cmd::Cmd::new("dpkg-query")
            .arg(&admin)
            .args(args)
            .output_any_status()
    };
    let out = query(&["-W", "-f", "${db:Status-Abbrev}\t${Version}", "cairn"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once('\t') {
        Some((status, version)) if out.status.success() && status.starts_with("ii") => {
            let sums = query(&["--control-show", "cairn", "md5sums"])?;
            let sums = if sums.status.success() {
                sums.stdout
            } else {
                Vec::new()
            };
            Ok(Some((version.to_string(), sums)))
        }
        _ => Ok(None),
    }
}

/// Whether the tree lacks exactly this package (another version, other
/// files: a rebuilt cairn of the same version).
fn package_differs(root: &Path, package: &CairnPackage) -> Result<bool> {
    let Some((version, sums)) = installed_cairn(root)? else {
        return Ok(true);
    };
    let out = crate::cmd::Cmd::new(crate::cmd::tool::DPKG_DEB.program)
        .arg("--info")
        .arg(&package.path)
        .arg("md5sums")
        .run()
        .with_context(|| format!("reading the md5sums of {}", package.path.display()))?;
    Ok(version != package.version || out.stdout != sums)
}

/// Runs dpkg in the tree (chroot, /proc, /sys and /dev mounted) with
/// services kept from starting: a policy-rc.d that says no, unless the
/// tree has its own.
fn in_chroot(root: &Path, epoch: i64, args: &[&str]) -> Result<()> {
    let _mounts = super::chroot::ChrootMounts::mount(root, &[])?;
    let policy = inside(root, "/usr/sbin/policy-rc.d")?;
    let ours = fs::symlink_metadata(&policy).is_err();
    if ours {
        write(
            root,
            "/usr/sbin/policy-rc.d",
            "#!/bin/sh\n# cairn: no service starts while an image is made\nexit 101\n",
            0o755,
        )?;
    }
    let r = super::chroot::chroot(root, epoch, args);
    if ours {
        let _ = fs::remove_file(&policy);
    }
    r
}

/// Removes the file or link at `abs` in the tree, if there is one.
pub(super) fn remove_in_tree(root: &Path, abs: &str) -> Result<()> {
    let p = inside_link(root, abs)?;
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes the directories made in the tree to mount the build host's
/// mirrors at their own paths (mmdebstrap's file-mirror-automount hook,
/// cairn's chroot mounts): each mirror's directory, then its parents while
/// they are empty and no package owns them (so /srv or /var/lib stay). The
/// host's store path would otherwise be in every image.
pub fn remove_mount_points(root: &Path, dirs: &[std::path::PathBuf]) -> Result<()> {
    let mut owned = std::collections::HashSet::new();
    let info = inside(root, "/var/lib/dpkg/info")?;
    for e in fs::read_dir(&info).with_context(|| format!("reading {}", info.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "list") {
            for l in fs::read_to_string(&p)?.lines() {
                owned.insert(l.to_string());
            }
        }
    }
    for d in dirs {
        let mut cur = d.clone();
        while cur.parent().is_some() {
            let text = cur.display().to_string();
            if owned.contains(&text) {
                break;
            }
            let Ok(t) = inside_link(root, &text) else {
                break;
            };
            match fs::symlink_metadata(&t) {
                Ok(m) if m.is_dir() => {}
                _ => break,
            }
            // Only an empty directory goes (a mount still there would not be).
            if std::fs::remove_dir(&t).is_err() {
                break;
            }
            cur = cur.parent().map(Path::to_path_buf).unwrap_or_default();
        }
    }
    Ok(())
}

/// What systemd would do at every boot of a live image, done once here:
/// the tree's dynamic linker cache rebuilt (a profile's files or hooks may
/// have added libraries), the system users made and a hardware database of
/// the profile's own compiled, then /etc and /var marked up to date for this
/// /usr (`/etc/.updated`, `/var/.updated`, as systemd-update-done writes
/// them). Without the marks each boot starts with a fresh RAM overlay and
/// no marks, so systemd's `ConditionNeedsUpdate=` units (ldconfig,
/// sysusers, the journal's catalog, update-done) ran on every boot — over a
/// second under TCG, on the way to multi-user. The packages' own scripts
/// did the rest when they were installed, as on an installed Debian after
/// its first boot. The image's timestamps are all the build's epoch, so
/// /usr is never newer than the marks (a delta layer writes its own).
pub fn mark_updated(root: &Path, epoch: i64) -> Result<()> {
    if inside(root, "/sbin/ldconfig")?.is_file() {
        super::chroot::chroot(root, epoch, &["/sbin/ldconfig"])
            .context("rebuilding the tree's dynamic linker cache")?;
    }
    // The system users every sysusers.d file asks for (a profile's own
    // too: what the first boot of an installed Debian does), and a
    // hardware database of the profile's own (/etc/udev/hwdb.d), as the
    // boot would have made them.
    let has_files = |dir: &str| -> Result<bool> {
        Ok(fs::read_dir(inside(root, dir)?).is_ok_and(|mut d| d.next().is_some()))
    };
    for (wanted, tool, args, what) in [
        (
            true,
            "systemd-sysusers",
            &[][..],
            "creating the tree's system users (systemd-sysusers)",
        ),
        (
            has_files("/etc/udev/hwdb.d")?,
            "systemd-hwdb",
            &["update"][..],
            "compiling the hardware database of /etc/udev/hwdb.d",
        ),
    ] {
        if !wanted {
            continue;
        }
        for bin in ["/usr/bin", "/bin"] {
            let tool = format!("{bin}/{tool}");
            if inside(root, &tool)?.is_file() {
                let argv: Vec<&str> = std::iter::once(tool.as_str())
                    .chain(args.iter().copied())
                    .collect();
                super::chroot::chroot(root, epoch, &argv).context(what)?;
                break;
            }
        }
    }
    let nsec = i128::from(epoch) * 1_000_000_000;
    let text = format!(
        "# cairn: /etc and /var were brought up to date for this image's /usr when it\n\
         # was built; systemd's ConditionNeedsUpdate= units need not run at boot.\n\
         TIMESTAMP_NSEC={nsec}\n"
    );
    for dir in ["/etc", "/var"] {
        // A link (or anything but a file) there is replaced, never written
        // through.
        let mark = format!("{dir}/.updated");
        let p = inside_link(root, &mark)?;
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_file()) {
            fs::remove_file(&p).with_context(|| format!("replacing {}", p.display()))?;
        }
        write(root, &mark, &text, 0o644)?;
    }
    Ok(())
}

/// Removes what differs from build to build and is no use in an image.
pub fn clean(root: &Path) -> Result<()> {
    let empty_dir = |abs: &str| -> Result<()> {
        let d = inside(root, abs)?;
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                let keep = matches!(e.file_name().to_str(), Some("lock" | "partial"));
                if keep {
                    continue;
                }
                if e.file_type()?.is_dir() {
                    fs::remove_dir_all(&p)?
                } else {
                    fs::remove_file(&p)?
                }
            }
        }
        Ok(())
    };
    empty_dir("/var/lib/apt/lists")?;
    empty_dir("/var/cache/apt/archives")?;
    empty_dir("/tmp")?;
    empty_dir("/var/tmp")?;
    for f in [
        "/var/cache/apt/pkgcache.bin",
        "/var/cache/apt/srcpkgcache.bin",
        "/var/lib/dbus/machine-id",
        "/etc/ssh/ssh_host_rsa_key",
    ] {
        let _ = fs::remove_file(inside_link(root, f)?);
    }
    // The build host's own paths (its store, a snapshot's name) mean
    // nothing on a machine, and would make the image depend on them.
    let list = inside_link(root, "/etc/apt/sources.list")?;
    if fs::read_to_string(&list).is_ok_and(|t| t.contains("file:")) {
        write(
            root,
            "/etc/apt/sources.list",
            "# cairn: the build's local mirror is not a source on a machine; a fleet profile's\n# machines have /etc/apt/sources.list.d/cairn.sources\n",
            0o644,
        )?;
    }
    // mmdebstrap keeps its --aptopt lines in the tree: a build from a
    // snapshot must not leave the machines' apt accepting expired Release
    // files (a replayed, frozen archive).
    let conf = inside_link(root, "/etc/apt/apt.conf.d/99mmdebstrap")?;
    if let Ok(text) = fs::read_to_string(&conf) {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("Check-Valid-Until"))
            .collect();
        if kept.len() != text.lines().count() {
            write(
                root,
                "/etc/apt/apt.conf.d/99mmdebstrap",
                kept.join("\n") + "\n",
                0o644,
            )?;
        }
    }
    // ldconfig's auxiliary cache records the build's file times and inodes
    // (and is rebuilt at will).
    let _ = fs::remove_file(inside_link(root, "/var/cache/ldconfig/aux-cache")?);
    // An empty machine-id: systemd makes a fresh one at each boot.
    write(root, "/etc/machine-id", "", 0o444)?;
    // Logs: keep the directories, drop the files.
    fn logs(d: &Path) -> Result<()> {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type()?.is_dir() {
                    logs(&e.path())?;
                } else {
                    fs::remove_file(e.path())?;
                }
            }
        }
        Ok(())
    }
    logs(&inside(root, "/var/log")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cairn-booted's good mark in the GRUB environment block (hostile:
    /// the boot partition's), run in a shell as the image runs it: the
    /// entry becomes cairn_good, a refusal of it (cairn_bad) goes and one of
    /// another stays, the block stays 1024 bytes; a block too full, of
    /// another size, or a link is left as it is; the entry is written as
    /// given, never taken as escapes.
    #[test]
    fn the_good_mark_rewrites_only_a_grub_environment_block() {
        use std::os::unix::fs::symlink;
        let script = include_str!("assets/booted.sh");
        let start = script.find("mark_good() {").unwrap();
        let end = start + script[start..].find("\n}\n").unwrap() + 3;
        let func = &script[start..end];
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        fs::create_dir_all(&run).unwrap();
        let env = d.path().join("boot/grub/grubenv");
        fs::create_dir_all(env.parent().unwrap()).unwrap();
        let block = |vars: &str| {
            let mut b = format!("# GRUB Environment Block\n{vars}").into_bytes();
            assert!(b.len() <= 1024);
            b.resize(1024, b'#');
            b
        };
        let mark = |entry: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{func}\nentry=\"$1\"; mark_good \"$2\""))
                .arg("sh")
                .arg(entry)
                .arg(d.path())
                .env("CAIRN_TEST_RUN", &run)
                .output()
                .unwrap()
                .status
                .success()
        };
        let vars = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        for (before, entry, after) in [
            (
                "cairn_trial=web-7\ncairn_good=web-6\ncairn_bad=web-7\nnext_entry=x\n",
                "web-7",
                vec!["cairn_trial=web-7", "next_entry=x", "cairn_good=web-7"],
            ),
            (
                "cairn_bad=web-8\ncairn_good=web-6\n\n",
                "web-7",
                vec!["cairn_bad=web-8", "cairn_good=web-7"],
            ),
            (
                "cairn_bad=web-8\ncairn_bad=web-7\ncairn_bad=web-7\n",
                "web-7",
                vec!["cairn_bad=web-8", "cairn_good=web-7"],
            ),
            (
                "",
                "rollback>web-6-ram",
                vec!["cairn_good=rollback>web-6-ram"],
            ),
            ("a=1\n", "web\\t7", vec!["a=1", "cairn_good=web\\t7"]),
        ] {
            fs::write(&env, block(before)).unwrap();
            assert!(mark(entry), "{before:?}");
            let b = fs::read(&env).unwrap();
            assert_eq!(b.len(), 1024);
            assert!(b.starts_with(b"# GRUB Environment Block\n"));
            assert_eq!(vars(&b), after, "{before:?}");
        }
        assert!(!run.join("grubenv.new").exists(), "no temporary file left");
        // Too full for the mark: refused, the block as it was.
        let full = block(&format!("x={}\n", "y".repeat(990)));
        fs::write(&env, &full).unwrap();
        assert!(!mark("web-7"));
        assert_eq!(fs::read(&env).unwrap(), full);
        // Not 1024 bytes: refused, untouched.
        fs::write(&env, b"# GRUB Environment Block\n").unwrap();
        assert!(!mark("web-7"));
        assert_eq!(fs::read(&env).unwrap(), b"# GRUB Environment Block\n");
        // A link in its place: refused, its target untouched.
        fs::remove_file(&env).unwrap();
        let target = d.path().join("target");
        fs::write(&target, block("")).unwrap();
        symlink(&target, &env).unwrap();
        assert!(!mark("web-7"));
        assert_eq!(fs::read(&target).unwrap(), block(""));
    }

    /// /etc and /var are marked up to date for the image's /usr, with the
    /// build's epoch (the time every file of the image carries), so that
    /// systemd's ConditionNeedsUpdate= units do not run at each boot.
    #[test]
    fn etc_and_var_are_marked_updated_at_the_build_epoch() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        // A link planted at the mark (a package's, a hook's) is replaced,
        // not written through.
        fs::write(d.path().join("etc/shadow"), "root:x:1::::::\n").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("etc/.updated")).unwrap();
        mark_updated(d.path(), 1_765_000_000).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            "root:x:1::::::\n"
        );
        assert!(
            fs::symlink_metadata(d.path().join("etc/.updated"))
                .unwrap()
                .is_file()
        );
        for dir in ["etc", "var"] {
            let p = d.path().join(dir).join(".updated");
            let text = fs::read_to_string(&p).unwrap();
            assert!(
                text.lines()
                    .any(|l| l == "TIMESTAMP_NSEC=1765000000000000000"),
                "{text}"
            );
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
                0o644
            );
        }
    }

    /// Early microcode for every CPU: set in the tree's microcode
    /// settings once, whatever CPU runs the build; a tree without the
    /// packages is left alone.
    #[test]
    fn microcode_for_every_cpu_is_set_once() {
        let d = tempfile::tempdir().unwrap();
        let run = || {
            let o = std::process::Command::new("sh")
                .args(["-c", MICROCODE_EVERYWHERE, "sh"])
                .arg(d.path())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        run();
        assert!(!d.path().join("etc").exists());
        fs::create_dir_all(d.path().join("etc/default")).unwrap();
        let amd = d.path().join("etc/default/amd64-microcode");
        let intel = d.path().join("etc/default/intel-microcode");
        fs::write(&amd, "#AMD64UCODE_INITRAMFS=auto\n").unwrap();
        fs::write(&intel, "#IUCODE_TOOL_INITRAMFS=auto\n").unwrap();
        run();
        let once = (
            fs::read_to_string(&amd).unwrap(),
            fs::read_to_string(&intel).unwrap(),
        );
        assert!(once.0.lines().any(|l| l == "AMD64UCODE_INITRAMFS=early"));
        assert!(once.1.lines().any(|l| l == "IUCODE_TOOL_INITRAMFS=early"));
        assert!(once.1.lines().any(|l| l == "IUCODE_TOOL_SCANCPUS=no"));
        run();
        assert_eq!(
            once,
            (
                fs::read_to_string(&amd).unwrap(),
                fs::read_to_string(&intel).unwrap()
            )
        );
    }

    #[test]
    fn data_paths_become_symlinks_with_seed_and_a_generator() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/fstab"), "# fstab\n").unwrap();
        fs::create_dir_all(root.join("var/lib/postgresql/15")).unwrap();
        fs::write(root.join("var/lib/postgresql/15/PG_VERSION"), "15\n").unwrap();
        let data = vec![
            DataPath {
                path: "/var/lib/postgresql".into(),
                partition: "data".into(),
                dir: "postgresql".into(),
            },
            DataPath {
                path: "/srv/www".into(),
                partition: "data".into(),
                dir: "www".into(),
            },
        ];
        data_paths(root, &data).unwrap();
        assert_eq!(
            fs::read_link(root.join("var/lib/postgresql")).unwrap(),
            Path::new("/data/postgresql")
        );
        assert_eq!(
            fs::read_link(root.join("srv/www")).unwrap(),
            Path::new("/data/www")
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/share/cairn/data-seed/postgresql/15/PG_VERSION"))
                .unwrap(),
            "15\n"
        );
        // No fstab line: the generator decides at boot.
        assert_eq!(
            fs::read_to_string(root.join("etc/fstab")).unwrap(),
            "# fstab\n"
        );
        let tmp = fs::read_to_string(root.join("usr/lib/cairn/data.conf")).unwrap();
        assert!(
            tmp.contains("C /data/postgresql - - - - /usr/share/cairn/data-seed/postgresql\n"),
            "{tmp}"
        );
        assert!(tmp.contains("d /data/www 0755 root root -\n"), "{tmp}");
        assert!(root.join("data").is_dir());
        let unit =
            fs::read_to_string(root.join("usr/lib/systemd/system/cairn-data.service")).unwrap();
        assert!(
            unit.contains("Wants=data.mount\nAfter=data.mount\n"),
            "{unit}"
        );
        assert!(
            root.join("etc/systemd/system/local-fs.target.wants/cairn-data.service")
                .is_symlink()
        );
        assert_eq!(mount_unit("my-data"), "my\\x2ddata.mount");
        // Again on the same tree (an upgrade whose profile changed): the
        // same records, the seed kept; a new path joins them.
        let mut more = data.clone();
        more.push(DataPath {
            path: "/srv/new".into(),
            partition: "data".into(),
            dir: "srv-new".into(),
        });
        data_paths(root, &more).unwrap();
        let again = fs::read_to_string(root.join("usr/lib/cairn/data.conf")).unwrap();
        assert_eq!(again, format!("{tmp}d /data/srv-new 0755 root root -\n"));
        assert!(
            root.join("usr/share/cairn/data-seed/postgresql/15/PG_VERSION")
                .is_file()
        );
        assert_eq!(
            escape_path("/dev/disk/by-label/my.data"),
            "dev-disk-by\\x2dlabel-my.data"
        );
    }

    /// A data path below a symlink of the tree (Debian's /var/run -> /run)
    /// is made in the tree's /run, never in the build host's.
    #[test]
    fn data_paths_stay_in_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        let name = format!("cairn-test-{}", std::process::id());
        let data = vec![DataPath {
            path: format!("/var/run/{name}"),
            partition: "data".into(),
            dir: "x".into(),
        }];
        data_paths(root, &data).unwrap();
        assert!(
            !Path::new("/run").join(&name).exists(),
            "the host's /run was touched"
        );
        assert_eq!(
            fs::read_link(root.join("run").join(&name)).unwrap(),
            Path::new("/data/x")
        );
        assert!(root.join("var/run").is_symlink());
    }

    /// The initramfs script's own functions, run with the kernel command
    /// line and the reboot replaced, by `sh` and (when installed) by
    /// busybox's shell, the initramfs's: what it says and whether it
    /// refuses — both shells alike.
    fn initramfs(cmdline: &str, then: &str) -> (bool, String) {
        let script = format!(
            "{}\ncairn_say() {{ echo \"cairn: $*\"; }}\ncairn_reboot() {{ exit 3; }}\n\
             cairn_cmdline() {{ echo \"$CMDLINE\"; }}\n{then}\n",
            include_str!("assets/live-verify.sh")
        );
        let mut results = Vec::new();
        for shell in [&["sh"][..], &["busybox", "sh"][..]] {
            if crate::cmd::which(shell[0]).is_none() {
                continue;
            }
            let out = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .arg("-c")
                .arg(&script)
                .env("CMDLINE", cmdline)
                .output()
                .unwrap();
            assert!(
                out.status.success() || out.status.code() == Some(3),
                "{out:?}"
            );
            results.push((
                out.status.code() == Some(3),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
        results.remove(0)
    }

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn good_line() -> String {
        format!(
            "BOOT_IMAGE=/images/web/1/vmlinuz boot=live quiet cairn.image=web/1 \
             cairn.verity=filesystem.squashfs:{H},layer-2.squashfs:{H} \
             live-media-path=/images/web/1 cairn.boot=1234-abcd cairn.entry=rollback>web-1-ram toram"
        )
    }

    /// An upgrade brings this cairn's initramfs checks into an image made
    /// by another cairn: a tree without them, or with other ones, differs;
    /// once written, it does not.
    #[test]
    fn initramfs_files_of_another_cairn_are_noticed() {
        let d = tempfile::tempdir().unwrap();
        assert!(live_verify_differs(d.path()).unwrap());
        live_verify(d.path()).unwrap();
        assert!(!live_verify_differs(d.path()).unwrap());
        let p = d.path().join("usr/lib/live/boot/9995-cairn.sh");
        let mut old = fs::read(&p).unwrap();
        old.extend_from_slice(b"# an older cairn\n");
        fs::write(&p, old).unwrap();
        assert!(live_verify_differs(d.path()).unwrap());
    }

    /// Before live-boot's DHCP on a network boot: only real devices that
    /// are down, with a name cairn takes (passed to `ip` as one word), and
    /// only those ethdevice= names; the wait for a carrier ends with one,
    /// or after 50 rounds; what got no IPv4 address goes down again.
    #[test]
    fn a_network_boot_brings_up_only_its_devices_and_waits_a_bounded_time() {
        let net = good_line().replace("cairn.boot=1234-abcd", "cairn.fetch=http://10.0.2.2:8080");
        let run = |vars: &str| {
            initramfs(
                &net,
                &format!(
                    "udevadm() {{ :; }}\nsleep() {{ :; }}\nip() {{ echo \"IP $*\"; }}\n\
                     cairn_nics() {{ printf 'ens3\\nwlan0\\nup0\\n$(reboot)\\n-x\\n'; }}\n\
                     cairn_nic_is_up() {{ [ \"$1\" = up0 ]; }}\n\
                     cairn_has_ipv4() {{ [ \"$1\" = ens3 ]; }}\n\
                     cairn_carrier() {{ [ \"$1\" = wlan0 ] && [ \"$_w\" -ge 3 ]; }}\n\
                     {vars}\n\
                     cairn_links_up; echo \"RAISED$CAIRN_RAISED after $_w\"; cairn_links_down"
                ),
            )
            .1
        };
        assert_eq!(
            run(""),
            "IP link set dev ens3 up\nIP link set dev wlan0 up\nRAISED ens3 wlan0 after 3\n\
             IP link set dev wlan0 down\n"
        );
        // No carrier ever: 50 rounds, then live-boot's DHCP all the same.
        assert!(
            run("cairn_carrier() { false; }").contains("after 50"),
            "the wait is bounded"
        );
        // ethdevice= (live-boot's) names the devices to use.
        assert_eq!(
            run("ETHDEVICE=wlan0,up0"),
            "IP link set dev wlan0 up\nRAISED wlan0 after 3\nIP link set dev wlan0 down\n"
        );
        // Nothing to bring up: no wait.
        assert_eq!(run("cairn_nics() { echo up0; }"), "RAISED after 0\n");
    }

    /// A layer opened through dm-verity is checked before any is mounted:
    /// a SHA-256 tree of format 1; its device the whole file (a tree's
    /// superblock may claim fewer blocks and keep the root hash) and the
    /// squashfs in its first block fitting in it (a file cut short to
    /// match); fetched over the network, read whole, and a read error, or
    /// a dd that stops at one and says nothing while the kernel marked
    /// the device corrupted, is a refusal. From a disk nothing more is read.
    #[test]
    fn a_layer_is_checked_whole_before_it_is_mounted() {
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("filesystem.squashfs");
        fs::write(&layer, vec![0u8; 8192]).unwrap();
        let read = d.path().join("read");
        let sb = d.path().join("superblock");
        let superblock = |magic: &[u8; 4], used: u64| {
            let mut b = vec![0u8; 4096];
            b[..4].copy_from_slice(magic);
            b[40..48].copy_from_slice(&used.to_le_bytes());
            fs::write(&sb, b).unwrap();
        };
        let net = good_line()
            .replace("cairn.boot=1234-abcd", "cairn.fetch=http://10.0.2.2:8080")
            .replace(" toram", "");
        // The tree's hash (@HASH@), what the kernel says once the layer was
        // read (@STATUS@), the device's size (@COVERED@), the full read's
        // exit status (@DD@); the first block is the superblock file.
        let check = |line: &str, hash: &str, status: &str, covered: &str, dd: u8| {
            let script = r#"rm -f '@READ@'
veritysetup() { s=@STATUS@; [ -e '@READ@' ] || s=verified
    printf '  status:      %s\n  hash type:   1\n  hash name:   @HASH@\n' "$s"; }
blockdev() { echo @COVERED@; }
dd() {
    case "$*" in
        *count=1*) for a; do case "$a" in of=*) cat '@SB@' > "${a#of=}" || return 1 ;; esac; done; return 0 ;;
    esac
    : > '@READ@'; echo 'dd: /dev/mapper/cairn-layer-0: I/O error' >&2; return @DD@; }
cairn_parse
cairn_check_layer filesystem.squashfs cairn-layer-0 '@LAYER@'
echo CHECKED; [ -e '@READ@' ] && echo WAS-READ; :"#
                .replace("@HASH@", hash)
                .replace("@STATUS@", status)
                .replace("@COVERED@", covered)
                .replace("@DD@", &dd.to_string())
                .replace("@READ@", &read.display().to_string())
                .replace("@SB@", &sb.display().to_string())
                .replace("@LAYER@", &layer.display().to_string());
            initramfs(line, &script)
        };
        let ok = |(refused, out): (bool, String)| {
            assert!(!refused && out.contains("CHECKED"), "{out}");
            out
        };
        let refused = |(refused, out): (bool, String), why: &str| {
            assert!(
                refused && out.contains(why) && !out.contains("CHECKED"),
                "{why}: {out}"
            );
        };
        superblock(b"hsqs", 5000);
        // From a disk: the sizes agree, the squashfs fits, nothing more read.
        let out = ok(check(&good_line(), "sha256", "verified", "8192", 0));
        assert!(
            !out.contains("WAS-READ") && !out.contains("every block"),
            "{out}"
        );
        let disk = "filesystem.squashfs: it differs from what was signed";
        refused(
            check(&good_line(), "sha256", "verified", "4096", 0),
            &format!("{disk} (its hash tree covers 4096 bytes of 8192)"),
        );
        refused(
            check(&good_line(), "sha1", "verified", "8192", 0),
            "filesystem.squashfs: its hash tree is not a SHA-256 dm-verity tree of format 1",
        );
        // Over the network: read whole, then said.
        let out = ok(check(&net, "sha256", "verified", "8192", 0));
        assert!(out.contains("WAS-READ"), "{out}");
        assert!(
            out.contains("filesystem.squashfs: fetched; every block matches its signed root hash"),
            "{out}"
        );
        let differs = "filesystem.squashfs: fetched, but it differs from what was signed";
        for (status, covered, dd, why) in [
            (
                "corrupted",
                "8192",
                1,
                "(dd: /dev/mapper/cairn-layer-0: I/O error)",
            ),
            ("corrupted", "8192", 0, "(dm-verity status: corrupted)"),
            (
                "verified",
                "4096",
                0,
                "(its hash tree covers 4096 bytes of 8192)",
            ),
        ] {
            refused(
                check(&net, "sha256", status, covered, dd),
                &format!("{differs} {why}"),
            );
        }
        for covered in ["", "81x2", "-8192"] {
            refused(
                check(&net, "sha256", "verified", covered, 0),
                "filesystem.squashfs: the sizes of its device and file are unknown",
            );
        }
        // Cut short with a tree that claims as much: the squashfs says so.
        superblock(b"hsqs", 9000);
        refused(
            check(&net, "sha256", "verified", "8192", 0),
            &format!("{differs} (its squashfs needs 9000 bytes, its hash tree covers 8192)"),
        );
        // Something else served as the layer (a tree's own blocks, say).
        superblock(b"\x12\x34\x56\x78", 5000);
        refused(
            check(&good_line(), "sha256", "verified", "8192", 0),
            &format!("{disk} (no squashfs in its first block)"),
        );
        // The first block itself refused by dm-verity.
        fs::remove_file(&sb).unwrap();
        refused(
            check(&good_line(), "sha256", "verified", "8192", 0),
            "filesystem.squashfs: dm-verity refused its blocks: it differs from what was signed \
             (its first block)",
        );
    }

    /// A network boot names its server (cairn.fetch=) instead of a boot
    /// partition, once, well formed, and never both.
    #[test]
    fn the_initramfs_takes_a_network_boot_only_well_formed() {
        let net = good_line()
            .replace("cairn.boot=1234-abcd", "cairn.fetch=http://10.0.2.2:8080")
            .replace(" toram", "");
        let (refused, out) = initramfs(&net, "cairn_parse; echo \"OK $CAIRN_FETCH $CAIRN_DIR\"");
        assert!(!refused, "{out}");
        assert!(
            out.contains("OK http://10.0.2.2:8080 /images/web/1"),
            "{out}"
        );
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{net} cairn.boot=1234-abcd"),
                "both cairn.boot= and cairn.fetch=",
            ),
            (
                format!("{net} cairn.fetch=http://evil"),
                "the fetch argument appears 2 times",
            ),
            (
                format!("{net} findiso=/x.iso"),
                "both findiso= and cairn.fetch=",
            ),
            (
                net.replace("http://10.0.2.2:8080", "https://10.0.2.2"),
                "bad server",
            ),
            (
                net.replace("http://10.0.2.2:8080", "http://10.0.2.2/x"),
                "bad server",
            ),
            (
                net.replace("http://10.0.2.2:8080", "http://a:1:2"),
                "bad server",
            ),
            (
                net.replace("http://10.0.2.2:8080", "http://$(reboot)"),
                "bad server",
            ),
            (net.replace("http://10.0.2.2:8080", "http://"), "bad server"),
            (
                net.replace("http://10.0.2.2:8080", "http://x:"),
                "bad server",
            ),
            (
                net.replace("live-media-path=/images/web/1", "live-media-path=/live"),
                "for a network boot",
            ),
            // Another signed image's directory than its boot.cfg's.
            (
                net.replace(
                    "live-media-path=/images/web/1",
                    "live-media-path=/images/web/2",
                ),
                "is not that of the signed image web/1",
            ),
            (format!("{net} fetch=http://10.0.2.2/x"), "is not allowed"),
        ];
        for (line, why) in cases {
            let (refused, out) = initramfs(&line, "cairn_parse; echo PARSED");
            assert!(refused, "not refused: {line}\n{out}");
            assert!(out.contains(why), "{line}: wanted {why:?} in\n{out}");
        }
    }

    /// Every cairn argument exactly once and well formed; nothing that would
    /// take layers from elsewhere: else the boot is refused, with the reason.
    #[test]
    fn the_initramfs_refuses_bad_command_lines() {
        let (refused, out) = initramfs(
            &good_line(),
            "cairn_parse; echo \"OK $CAIRN_IMAGE $CAIRN_BOOT $CAIRN_ENTRY $CAIRN_LAYERS\"",
        );
        assert!(!refused, "{out}");
        assert!(
            out.contains(&format!(
                "OK web/1 1234-abcd rollback>web-1-ram filesystem.squashfs:{H},layer-2.squashfs:{H}"
            )),
            "{out}"
        );
        let g = good_line();
        let cases: Vec<(String, &str)> = vec![
            (
                g.replace(
                    &format!(" cairn.verity=filesystem.squashfs:{H},layer-2.squashfs:{H}"),
                    "",
                ),
                "no verity argument",
            ),
            (
                format!("{g} cairn.verity="),
                "the verity argument appears 2 times",
            ),
            (
                g.replace(
                    &format!("cairn.verity=filesystem.squashfs:{H},layer-2.squashfs:{H}"),
                    "cairn.verity=",
                ),
                "cairn.verity= names no layer",
            ),
            (
                format!("{g} live-media-path=/evil"),
                "the live-media-path argument appears 2 times",
            ),
            (
                g.replace("live-media-path=/images/web/1", "live-media-path=/evil"),
                "bad image directory /evil",
            ),
            (
                g.replace(
                    "live-media-path=/images/web/1",
                    "live-media-path=/images/web/../../x",
                ),
                "bad image directory",
            ),
            (g.replace(" cairn.boot=1234-abcd", ""), "no boot argument"),
            (
                g.replace("cairn.boot=1234-abcd", "cairn.boot=../sda"),
                "bad boot partition UUID",
            ),
            (
                g.replace("cairn.image=web/1", "cairn.image=web"),
                "bad image name",
            ),
            (format!("{g} cairn.entry=x"), "cairn.entry= appears 2 times"),
            (
                format!("{g} module=evil"),
                "argument module=evil is not allowed",
            ),
            (
                format!("{g} persistence"),
                "argument persistence is not allowed",
            ),
            (format!("{g} toram=filesystem.squashfs"), "is not allowed"),
            (format!("{g} fetch=http://10.0.2.2/x"), "is not allowed"),
            (format!("{g} live-media=/dev/sdb1"), "is not allowed"),
            (
                format!("{g} init=/bin/sh"),
                "argument init=/bin/sh is not allowed",
            ),
            (format!("{g} rdinit=/bin/sh"), "is not allowed"),
            (format!("{g} break"), "argument break is not allowed"),
            (format!("{g} break=top"), "is not allowed"),
            (format!("{g} systemd.debug_shell"), "is not allowed"),
            (format!("{g} swap"), "argument swap is not allowed"),
            (
                format!("{g} MODULETORAMFILE=x"),
                "would become an environment variable",
            ),
            (
                format!("{g} PERSISTENCE=true"),
                "would become an environment variable",
            ),
            (
                format!("{g} cairn.sha256=x"),
                "unknown argument cairn.sha256=x",
            ),
            (
                g.replace(&format!("layer-2.squashfs:{H}"), "layer-2.squashfs:xyz"),
                "bad root hash for layer-2.squashfs",
            ),
            (
                g.replace(
                    &format!("layer-2.squashfs:{H}"),
                    &format!("../x.squashfs:{H}"),
                ),
                "bad layer name ../x.squashfs",
            ),
            (
                g.replace(&format!("layer-2.squashfs:{H}"), &format!("evil.ext4:{H}")),
                "layer evil.ext4 is not a squashfs",
            ),
        ];
        for (line, want) in cases {
            let (refused, out) = initramfs(&line, "cairn_parse; echo PARSED");
            assert!(refused && !out.contains("PARSED"), "{line}: {out}");
            assert!(
                out.contains("REFUSING TO BOOT") && out.contains(want),
                "{line}: want {want:?}: {out}"
            );
        }
    }

    /// The image directory may hold the signed layers, their trees and the
    /// other image files; a layer-like file or a directory besides them
    /// refuses the boot, named.
    #[test]
    fn the_initramfs_refuses_unsigned_layers_in_the_image_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for f in [
            "filesystem.squashfs",
            "filesystem.squashfs.verity",
            "layer-2.squashfs",
            "layer-2.squashfs.verity",
            "vmlinuz",
            "vmlinuz.sig",
            "initrd.img",
            "initrd.img.sig",
            "boot.cfg",
            "boot.cfg.sig",
            "BOOTSUMS",
            "BOOTSUMS.sig",
            "manifest.json",
            "SHA256SUMS",
            "SHA256SUMS.sig",
            "SHA512SUMS",
            "SHA512SUMS.sig",
            "web.iso",
            "web.iso.sig",
        ] {
            fs::write(dir.join(f), "x").unwrap();
        }
        let check = format!("cairn_parse; cairn_check_dir {}; echo CLEAN", dir.display());
        let (refused, out) = initramfs(&good_line(), &check);
        assert!(!refused && out.contains("CLEAN"), "{out}");
        for (extra, dir_too) in [
            ("evil.squashfs", false),
            ("web.module", false),
            ("filesystem.web.module", false),
            ("x.squashfs.verity", false),
            (".hidden.squashfs", false),
            ("sub.dir", true),
        ] {
            let p = dir.join(extra);
            if dir_too {
                fs::create_dir(&p).unwrap();
            } else {
                fs::write(&p, "x").unwrap();
            }
            let (refused, out) = initramfs(&good_line(), &check);
            assert!(
                refused
                    && out.contains(&format!(
                        "files no signature covers in the image directory: {extra}"
                    )),
                "{extra}: {out}"
            );
            if dir_too {
                fs::remove_dir(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
    }

    /// The generator, run as systemd runs it, with a `blkid` and a /sys of
    /// the test's: the partition with the label on the boot disk is mounted
    /// (by its file system UUID, nosuid,nodev) and a look-alike elsewhere
    /// is not; two look-alikes and none on the boot disk: none; an absent
    /// label: none; without a boot disk (netboot), the only one.
    #[test]
    fn data_mounts_generator_picks_the_boot_disks_partition() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let bin = p.join("bin");
        fs::create_dir_all(&bin).unwrap();
        // vda: the boot disk (vda3 boot, vda4 data); sdb1: a USB stick
        // labelled data; sdc1: another.
        fs::write(
            bin.join("blkid"),
            "#!/bin/sh
case \"$*\" in
             *UUID=b007*) echo /dev/vda3 ;;
             *LABEL=data*) echo /dev/sdb1; echo /dev/vda4; [ -e \"$STICK2\" ] && echo /dev/sdc1 ;;
             *LABEL=logs*) ;;
             *'-s UUID /dev/vda4'*) echo 1111-da7a ;;
             *'-s UUID /dev/sdb1'*) echo 2222-57ac ;;
             esac
",
        )
        .unwrap();
        fs::set_permissions(bin.join("blkid"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sys = p.join("sys/class/block");
        for (disk, part) in [
            ("vda", "vda3"),
            ("vda", "vda4"),
            ("sdb", "sdb1"),
            ("sdc", "sdc1"),
        ] {
            fs::create_dir_all(sys.join(disk).join(part)).unwrap();
            fs::write(sys.join(disk).join(part).join("partition"), "1").unwrap();
            let l = sys.join(part);
            if !l.exists() {
                symlink(format!("{disk}/{part}"), &l).unwrap();
            }
        }
        let g = p.join("gen");
        fs::write(&g, mounts_generator(&["data", "logs"])).unwrap();
        let run = |cmdline: &str, stick2: bool| -> Option<String> {
            let out = p.join("out");
            let _ = fs::remove_dir_all(&out);
            fs::create_dir_all(&out).unwrap();
            fs::write(p.join("cmdline"), cmdline).unwrap();
            let st = std::process::Command::new("sh")
                .arg(&g)
                .arg(&out)
                .arg(&out)
                .arg(&out)
                .arg(p.join("sys"))
                .arg(p.join("cmdline"))
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("STICK2", if stick2 { "/" } else { "/nonexistent" })
                .status()
                .unwrap();
            assert!(st.success());
            assert!(!out.join("logs.mount").exists());
            let unit = fs::read_to_string(out.join("data.mount")).ok()?;
            assert_eq!(
                fs::read_link(out.join("local-fs.target.wants/data.mount")).unwrap(),
                Path::new("../data.mount")
            );
            Some(unit)
        };
        let unit = run("quiet cairn.boot=b007 x", false).unwrap();
        assert!(
            unit.contains("What=/dev/disk/by-uuid/1111-da7a\nWhere=/data\nOptions=nosuid,nodev\n")
                && unit
                    .contains("Requires=systemd-fsck@dev-disk-by\\x2duuid-1111\\x2dda7a.service")
                && !unit.contains("timeout"),
            "{unit}"
        );
        // No boot disk (netboot): two candidates, neither is taken.
        assert_eq!(run("quiet", false), None);
        // No boot disk and one candidate: it.
        fs::write(
            bin.join("blkid"),
            "#!/bin/sh
case \"$*\" in
*LABEL=data*) echo /dev/sdb1 ;;
*'-s UUID /dev/sdb1'*) echo 2222-57ac ;;
esac
",
        )
        .unwrap();
        assert!(
            run("quiet", false)
                .unwrap()
                .contains("What=/dev/disk/by-uuid/2222-57ac\n")
        );
    }
}

#[cfg(test)]
mod root_tests {
    use super::*;

    #[test]
    fn root_password_hash_and_keys() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/shadow"),
            "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        )
        .unwrap();
        let mut p = crate::profile::builtin_default("bookworm");
        p.root.password_hash = Some("$6$salt$abc".into());
        p.root.ssh_keys = vec!["ssh-ed25519 AAAA test".into()];
        root_access(d.path(), &p).unwrap();
        assert_eq!(
            fs::read_to_string(d.path().join("etc/shadow")).unwrap(),
            "root:$6$salt$abc:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
        );
        assert_eq!(
            fs::read_to_string(d.path().join("root/.ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAA test\n"
        );
    }
}

#[cfg(test)]
mod package_tests {
    use super::*;

    /// A .deb with nothing but its control file.
    fn deb(dir: &Path, package: &str, version: &str, arch: &str) -> std::path::PathBuf {
        let tree = dir.join(format!("{package}-{version}-{arch}"));
        fs::create_dir_all(tree.join("DEBIAN")).unwrap();
        fs::write(
            tree.join("DEBIAN/control"),
            format!(
                "Package: {package}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@example.org>\nDescription: test\n"
            ),
        )
        .unwrap();
        let out = dir.join(format!("{package}_{version}_{arch}.deb"));
        let st = std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&tree)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        out
    }

    /// The package an image gets is cairn of this very version for the
    /// image's architecture; anything else, or nothing, is refused with
    /// the path looked at and how to make the right one.
    #[test]
    fn only_this_cairns_package_goes_into_an_image() {
        if crate::cmd::which("dpkg-deb").is_none() {
            eprintln!("SKIPPED: dpkg-deb is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let v = env!("CARGO_PKG_VERSION");
        let missing = package_in_store(d.path(), "amd64");
        assert_eq!(
            missing,
            d.path().join(format!("packages/cairn_{v}_amd64.deb"))
        );
        let e = check_package(&missing, v, "amd64", "web").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("no cairn package at {}", missing.display()))
                && e.contains("profile web has `cairn = true`")
                && e.contains("./scripts/package")
                && e.contains("<store>/packages/")
                && e.contains("CAIRN_PACKAGE=PATH"),
            "{e}"
        );
        let good = deb(d.path(), "cairn", v, "amd64");
        let p = check_package(&good, v, "amd64", "web").unwrap();
        assert_eq!((p.path, p.version.as_str()), (good, v));
        for (pkg, ver, arch, said) in [
            (
                "cairn",
                "0.0.1",
                "amd64",
                "is cairn 0.0.1 (amd64), not cairn",
            ),
            ("cairn", v, "arm64", "(arm64), not cairn"),
            ("other", v, "amd64", "is other "),
        ] {
            let bad = deb(d.path(), pkg, ver, arch);
            let e = format!("{:#}", check_package(&bad, v, "amd64", "web").unwrap_err());
            assert!(e.contains(said) && e.contains("./scripts/package"), "{e}");
        }
    }
}

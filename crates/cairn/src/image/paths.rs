//! Where things are inside a cairn image and on the system it runs: one
//! place for the paths the build writes and the running system's cairn
//! (pull, status, apply-live, reboot) reads.

/// cairn itself, from its package (`cairn = true`).
pub const CAIRN_BIN: &str = "/usr/bin/cairn";
/// The public key that signed the image: cairn on the running system
/// (`pull`, `apply-live`, `reboot --kexec`) checks images with it; also
/// the default of `key.public` in /etc/cairn/cairn.toml.
pub const SIGNING_KEY: &str = "/etc/cairn/signing.pub";
/// The profile's `[fleet]`, as the image carries it (`FleetFile`).
pub const FLEET_FILE: &str = "/etc/cairn/fleet.toml";
/// The profile's `[health]` command, and its time limit.
pub const HEALTH_SCRIPT: &str = "/etc/cairn/health";
pub const HEALTH_ENV: &str = "/etc/cairn/health.env";
/// The machine's timer and service that pull newer images.
pub const PULL_TIMER: &str = "/usr/lib/systemd/system/cairn-pull.timer";
pub const PULL_SERVICE: &str = "/usr/lib/systemd/system/cairn-pull.service";
pub const REPORT_TIMER: &str = "/usr/lib/systemd/system/cairn-report.timer";
pub const REPORT_SERVICE: &str = "/usr/lib/systemd/system/cairn-report.service";
/// The generator that mounts data partitions by label at each boot.
pub const DATA_GENERATOR: &str = "/usr/lib/systemd/system-generators/cairn-data-mounts";
/// Which image booted: a link in the image to the file written at boot.
pub const IMAGE_ENV: &str = "/etc/cairn/image.env";
/// cairn's own state on the running system, gone at the next boot.
pub const RUN_DIR: &str = "/run/cairn";
pub const RUN_IMAGE_ENV: &str = "/run/cairn/image.env";
/// The command line this userspace runs by, when `cairn reboot --soft`
/// switched to it (systemd's soft-reboot: the kernel, and its
/// /proc/cmdline, stay those of an earlier image): written into the new
/// root's own RAM overlay before the switch, so only that root has it.
/// Absent after a boot (an image never carries it).
pub const SOFT_CMDLINE: &str = "/etc/cairn/cmdline";
/// Marks that this boot has reported (its first report is the boot's).
pub const REPORTED: &str = "/run/cairn/reported";
/// The last health check's outcome, this boot.
pub const HEALTH_FILE: &str = "/run/cairn/health";
/// What `cairn apply-live` applied, kept across its runs.
pub const APPLIED_LOG: &str = "/var/lib/cairn/applied-live.json";
/// dpkg's setting for a build alone: no fsync of every file it unpacks (a
/// tree that is packed into squashfs, or thrown away if the build fails,
/// needs no crash safety). Written before the first package and removed by
/// the last hook: never in an image (a finished tree that has it is
/// refused, and so is a profile file of that name).
pub const BUILD_DPKG_CFG: &str = "/etc/dpkg/dpkg.cfg.d/cairn-build";

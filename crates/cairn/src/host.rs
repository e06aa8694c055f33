//! What this machine is, as cairn asks it: its Debian architecture and
//! whether it is a virtual machine. Used by profiles (host type `auto`,
//! the architecture) and by the mirror (which architectures to fetch).

use crate::cmd::Cmd;

/// The Debian architecture of this machine.
pub fn debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "arm" => "armhf",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Whether this machine is a virtual machine: systemd-detect-virt, or, where
/// it is missing, the kernel's `hypervisor` CPU flag.
pub fn is_virtual() -> bool {
    match Cmd::new("systemd-detect-virt").output_any_status() {
        Ok(o) => o.status.success() && String::from_utf8_lossy(&o.stdout).trim() != "none",
        Err(_) => fs_err::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .contains(" hypervisor"),
    }
}

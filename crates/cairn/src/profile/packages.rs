//! Package policy: what every image gets by host type and role, before the
//! profile's own packages.

use super::{Bootstrap, HostType, Profile};

impl Profile {
    /// Packages chosen by host type and role, then the profile's own.
    pub fn all_packages(&self, host: HostType) -> Vec<String> {
        let arch = &self.architecture;
        let mut v: Vec<String> = ["systemd-sysv", "live-boot", "zstd", "cryptsetup-bin"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match host {
            HostType::Virtual => {
                v.push(format!("linux-image-cloud-{arch}"));
                v.push("qemu-guest-agent".into());
            }
            _ => {
                v.push(format!("linux-image-{arch}"));
                v.push("firmware-linux-free".into());
            }
        }
        if self.builder {
            v.extend(BUILDER_PACKAGES.iter().map(|s| s.to_string()));
        }
        if self.cairn {
            v.push("kexec-tools".into());
        }
        if self.fleet.is_some() {
            // Names in fleet.urls resolve (networkd configures the address).
            // dbus by name: systemd-resolved needs a system bus through a
            // virtual package, which debootstrap cannot resolve.
            v.push("systemd-resolved".into());
            v.push("dbus".into());
        }
        if self.bootstrap == Bootstrap::Debootstrap {
            // debootstrap always installs it on merged-/usr suites.
            v.push("usr-is-merged".into());
        }
        for p in &self.packages {
            if !v.contains(p) {
                v.push(p.clone());
            }
        }
        v
    }
}

/// What an image needs to build other images.
pub const BUILDER_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "squashfs-tools",
    "xorriso",
    "grub-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "mtools",
    "gpg",
    "gpgv",
    "ca-certificates",
];

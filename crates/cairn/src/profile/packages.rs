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
                if self.non_free_firmware {
                    v.extend(PHYSICAL_FIRMWARE.iter().map(|s| s.to_string()));
                }
            }
        }
        if self.builder {
            v.extend(BUILDER_PACKAGES.iter().map(|s| s.to_string()));
        }
        if self.cairn {
            v.push("kexec-tools".into());
            // cairn checks images with gpgv on the machine (pull, reboot,
            // apply-live); Debian 13's apt verifies with sqv and no longer
            // brings gpgv along.
            v.push("gpgv".into());
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

/// What a physical host's image carries from Debian's `non-free-firmware`
/// component (the installer's default since Debian 12): CPU microcode
/// (security fixes on real hardware) and the firmware most network cards,
/// wireless cards and GPUs need to work at all.
pub const PHYSICAL_FIRMWARE: &[&str] = &[
    "intel-microcode",
    "amd64-microcode",
    "firmware-linux-nonfree",
    "firmware-realtek",
    "firmware-iwlwifi",
    "firmware-bnx2",
    "firmware-bnx2x",
];

/// The archive component `PHYSICAL_FIRMWARE` lives in.
pub const FIRMWARE_COMPONENT: &str = "non-free-firmware";

impl Profile {
    /// The archive components this profile's packages come from, besides
    /// `main`, for a host of type `host`.
    pub fn components(&self, host: HostType) -> Vec<&'static str> {
        if host != HostType::Virtual && self.non_free_firmware {
            vec![FIRMWARE_COMPONENT]
        } else {
            Vec::new()
        }
    }
}

impl Profile {
    /// What this profile needs of a mirror when its images are built for
    /// `host_types` (none: its own, `auto` being this build host's).
    pub fn mirror_needs(&self, host_types: &[HostType]) -> crate::mirror::config::Needs {
        let hosts = if host_types.is_empty() {
            vec![self.resolved_host_type()]
        } else {
            host_types.to_vec()
        };
        let mut packages: Vec<String> = Vec::new();
        let mut components: Vec<String> = Vec::new();
        for h in hosts {
            for p in self.all_packages(h) {
                if !packages.contains(&p) {
                    packages.push(p);
                }
            }
            for c in self.components(h) {
                if !components.iter().any(|x| x == c) {
                    components.push(c.to_string());
                }
            }
        }
        crate::mirror::config::Needs {
            what: format!("profile {}", self.name),
            suite: self.suite.clone(),
            packages,
            components,
        }
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

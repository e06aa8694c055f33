//! Boot: cairn's own GRUB (BIOS and UEFI, the signing key embedded, every
//! file it opens checked against its signature), the signed multi-image menu,
//! the environment block that counts boot attempts, and boot disks.

pub mod disk;
pub mod env;
pub mod grub;
pub mod menu;
pub mod model;
pub mod netboot;

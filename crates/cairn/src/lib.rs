//! cairn: signed, layered live images for Debian machines.
//!
//! The chain, one module per link: `mirror` (local verified copies of Debian
//! repositories), then profiles, build, image, boot and upgrade as they land.
//! Shared pieces: `cmd` (running programs), `trust` (hashes, signatures),
//! `fsutil` (atomic files), `parallel`, `progress`.

pub mod boot;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod fleet;
pub mod fsutil;
pub mod host;
pub mod image;
pub mod live;
pub mod mirror;
pub mod names;
pub mod parallel;
pub mod profile;
pub mod progress;
pub mod rootfs;
pub mod span;
pub mod trust;
pub mod upgrade;
pub mod vm;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

//! cairn's integration tests: one binary, a sandbox per test. Tiers that need
//! root, tools or the network say so and skip — except under CI=true, where a
//! skip fails.

mod boot;
mod build;
mod cli;
mod fleet;
mod fleet_loop;
mod fleet_vm;
mod grub;
mod image;
mod mirror;
mod netboot;
mod package;
mod real_archive;
mod reproducible;
mod shape;
mod support;
mod upgrade;

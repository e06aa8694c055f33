//! `cairn netboot`: the files a network boot serves, from the store.

use anyhow::{Context, Result};
use clap::Args;

use super::{Cli, show};

#[derive(Args, Debug)]
pub struct NetbootArgs {
    /// Where machines reach the store's web server: http://HOST[:PORT]/,
    /// the store at its root (GRUB speaks plain HTTP: everything it loads
    /// is checked by signature)
    #[arg(long, required_unless_present = "dnsmasq_config", value_name = "URL")]
    pub url: Option<String>,
    /// Profiles in the menu (repeat) [default: every profile with an image]
    #[arg(long = "profile", value_name = "PROFILE")]
    pub profiles: Vec<String>,
    /// Print a dnsmasq configuration (proxy DHCP on this IPv4 network,
    /// e.g. 192.168.1.0, and TFTP of <store>/netboot) and write nothing
    #[arg(long, value_name = "NETWORK")]
    pub dnsmasq_config: Option<String>,
    /// Profile booted by default [default: boot.default-profile, or the
    /// newest image's]
    #[arg(long, value_name = "PROFILE")]
    pub default: Option<String>,
    /// MAC=PROFILE: the machine with that MAC address boots that profile
    /// by default (repeat; the choice is in the signed menu)
    #[arg(long = "machine", value_name = "MAC=PROFILE")]
    pub machines: Vec<String>,
    /// Seconds the menu waits [default: boot.timeout, or 5]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    #[command(flatten)]
    pub secure_boot: super::SecureBootArgs,
}

pub(super) fn run_netboot(cli: &Cli, a: &NetbootArgs) -> Result<i32> {
    if let Some(net) = &a.dnsmasq_config {
        let root = std::path::absolute(&cli.store)?.join(crate::boot::netboot::NETBOOT_DIR);
        let text = crate::boot::netboot::dnsmasq_config(&root, net)?;
        super::print_text(cli, "dnsmasq-config", &text)?;
        return Ok(0);
    }
    let machines = a
        .machines
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(mac, p)| (mac.to_ascii_lowercase(), p.to_string()))
                .with_context(|| format!("--machine {m}: MAC=PROFILE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let r = crate::boot::netboot::prepare(
        &cli.store,
        &crate::boot::netboot::NetbootOptions {
            url: a.url.clone().unwrap_or_default(),
            profiles: a.profiles.clone(),
            default_profile: a
                .default
                .clone()
                .or_else(|| cli.config.settings.boot.default_profile.clone()),
            machines,
            timeout: a
                .timeout
                .or(cli.config.settings.boot.timeout)
                .unwrap_or(crate::boot::menu::MenuOptions::default().timeout),
            secure_boot: a.secure_boot.get(),
        },
    )?;
    show(cli, "netboot", &r, |r| {
        outln!(
            "{}: GRUB for BIOS PXE ({}) and UEFI ({}), the signed menu (generation {}); files from http://{}/",
            r.dir.display(),
            crate::boot::netboot::BIOS_FILE,
            r.efi.file_name().unwrap_or_default().to_string_lossy(),
            r.generation,
            r.server
        );
        for e in &r.entries {
            outln!(
                "  {}{}",
                e.id,
                if e.id == r.default { "  (default)" } else { "" }
            );
        }
        for l in &r.left_out {
            outln!("  left out {}: {}", l.path, l.problem);
        }
        Ok(())
    })?;
    Ok(0)
}

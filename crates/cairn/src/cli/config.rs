//! `cairn config show`: the effective configuration and where each value
//! came from.

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Cli, show};
use crate::config::{self, Origin};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from (a
    /// flag, the environment, a file and line, or the built-in default).
    ///
    /// Precedence: flags > environment (CAIRN_STORE) > files
    /// (/etc/cairn/cairn.toml, then /etc/cairn/cairn.toml.d/*.toml in name
    /// order; CAIRN_CONFIG names another main file) > built-in defaults.
    Show,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Setting {
    key: String,
    /// null: unset, and the default is a behaviour (`means` says which).
    value: Value,
    #[serde(flatten)]
    origin: Origin,
    /// What an unset value means.
    #[serde(skip_serializing_if = "Option::is_none")]
    means: Option<&'static str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Shown {
    files: Vec<std::path::PathBuf>,
    settings: Vec<Setting>,
}

pub(super) fn run_config(cli: &Cli, c: &ConfigCommand) -> Result<i32> {
    let ConfigCommand::Show = c;
    let cf = &cli.config;
    let s = &cf.settings;
    let (store, store_origin) = cf.store(cli.store_flag.as_deref())?;
    // (key, value from the files, built-in default, what unset means)
    let file = |key: &str, v: Option<Value>, default: Value, means: Option<&'static str>| {
        let from_file = v.is_some();
        Setting {
            key: key.to_string(),
            value: v.unwrap_or(default),
            origin: if from_file {
                cf.origin(key)
            } else {
                Origin::Default
            },
            means: if from_file { None } else { means },
        }
    };
    let d = crate::boot::menu::MenuOptions::default();
    let mut settings = vec![
        Setting {
            key: "store".into(),
            value: json!(store),
            origin: store_origin,
            means: None,
        },
        file(
            "key.public",
            s.key.public.as_ref().map(|p| json!(p)),
            json!(config::DEFAULT_PUBLIC_KEY),
            None,
        ),
        file(
            "mirror.config",
            s.mirror.config.as_ref().map(|p| json!(p)),
            Value::Null,
            Some("the host's apt sources (/etc/apt/sources.list and sources.list.d)"),
        ),
        file(
            "mirror.profiles",
            s.mirror.profiles.as_ref().map(|p| json!(p)),
            json!(["default"]),
            None,
        ),
        file(
            "mirror.jobs",
            s.mirror.jobs.map(|j| json!(j)),
            json!(super::mirror::DEFAULT_JOBS),
            None,
        ),
        file(
            "build.profile-dir",
            s.build.profile_dir.as_ref().map(|p| json!(p)),
            json!(config::DEFAULT_PROFILE_DIR),
            None,
        ),
        file(
            "boot.timeout",
            s.boot.timeout.map(|t| json!(t)),
            json!(d.timeout),
            None,
        ),
        file(
            "boot.tries",
            s.boot.tries.map(|t| json!(t)),
            json!(d.tries),
            None,
        ),
        file(
            "boot.default-profile",
            s.boot.default_profile.as_ref().map(|p| json!(p)),
            Value::Null,
            Some("the newest image's profile"),
        ),
    ];
    // [fleet] (a machine's overrides of its image's) and [cycle] (the build
    // host's round): only what the files set.
    for section in ["fleet", "cycle"] {
        for (k, v) in cf.section(section).into_iter().flatten() {
            let key = format!("{section}.{k}");
            settings.push(Setting {
                origin: cf.origin(&key),
                key,
                value: serde_json::to_value(v)?,
                means: None,
            });
        }
    }
    let shown = Shown {
        files: cf.files.clone(),
        settings,
    };
    show(cli, "settings", &shown, |shown| {
        if shown.files.is_empty() {
            outln!("# no configuration file ({} does not exist)", config_main());
        } else {
            for f in &shown.files {
                outln!("# read {}", f.display());
            }
        }
        for st in &shown.settings {
            let v = match &st.value {
                Value::Null => "(unset)".to_string(),
                v => v.to_string(),
            };
            let means = st.means.map(|m| format!(": {m}")).unwrap_or_default();
            outln!("{} = {v}  # {}{means}", st.key, st.origin);
        }
        Ok(())
    })?;
    Ok(0)
}

fn config_main() -> String {
    std::env::var(config::CONFIG_ENV).unwrap_or_else(|_| config::MAIN.to_string())
}

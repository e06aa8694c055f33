//! The fleet at a glance, from the reports taken: `cairn fleet status`
//! (every machine, its image, health, last report's age, rollout stage;
//! stale machines flagged) and `--html DIR`, a static page the same nginx
//! serves: the fleet's versions over time as a plot (SVG, no script), each
//! rollout's stages and outcome, the failing machines with their health
//! output. Everything a machine said is escaped: its words are its own.

use fs_err as fs;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::inbox::{self, Refusal};
use super::report::Report;
use super::rollout::{self, RolloutStatus};
use crate::boot::model::ImageId;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MachineRow {
    pub machine: String,
    pub profile: Option<String>,
    pub booted: Option<String>,
    pub next_boot: Option<String>,
    pub last_good: Option<String>,
    /// `passed`, `failed: …`, `rolled back: …`, or unknown.
    pub health: String,
    pub last_report_at: Option<i64>,
    pub last_report_age_seconds: Option<i64>,
    pub stale: bool,
    /// Its place in its profile's current rollout.
    pub rollout: Option<String>,
    pub last_failure: Option<String>,
    pub free_bytes: Option<u64>,
    pub kernel: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Overview {
    pub generated_at: i64,
    pub stale_after_seconds: i64,
    pub machines: Vec<MachineRow>,
    pub rollouts: Vec<RolloutStatus>,
    /// The last refusals of reports (at most 20).
    pub refused: Vec<Refusal>,
}

fn health_of(r: &Report) -> String {
    if let Some(h) = &r.health {
        return h.clone();
    }
    if r.on_trial.is_some() && r.tries_left == Some(0) && !r.trial_passed {
        return format!(
            "rolled back: {} used up its trial",
            r.on_trial.as_deref().unwrap_or("?")
        );
    }
    if r.last_good.is_some() {
        return "passed (last good boot)".into();
    }
    "unknown".into()
}

pub fn overview(store: &Path, now: i64, stale: i64) -> Result<Overview> {
    let mut rollouts = Vec::new();
    for p in rollout::profiles(store)? {
        if let Some(r) = rollout::current(store, &p)? {
            rollouts.push(rollout::status(store, &r)?);
        }
    }
    let mut machines = Vec::new();
    for e in inbox::enrolled(store)? {
        let last = inbox::last_report(store, &e.machine)?;
        // The profile it was enrolled for (its reports' word is not taken).
        let profile = e.profile.clone();
        let place = profile.as_deref().and_then(|p| {
            let s = rollouts.iter().find(|s| s.rollout.profile == p)?;
            let r = &s.rollout;
            Some(match s.in_stage.iter().find(|m| m.machine == e.machine) {
                Some(m) => format!(
                    "{}: {:?}, in stage {} ({}%): {}",
                    r.version,
                    r.state,
                    r.stage + 1,
                    r.stage_percent(),
                    m.verdict
                ),
                None => format!("{}: {:?}, not in its stages yet", r.version, r.state),
            })
        });
        machines.push(MachineRow {
            machine: e.machine.clone(),
            profile,
            booted: last.as_ref().and_then(|r| r.booted.clone()),
            next_boot: last.as_ref().and_then(|r| r.next_boot.clone()),
            last_good: last.as_ref().and_then(|r| r.last_good.clone()),
            health: last.as_ref().map_or("no report yet".into(), health_of),
            last_report_at: last.as_ref().map(|r| r.sent_at),
            last_report_age_seconds: last.as_ref().map(|r| now.saturating_sub(r.sent_at)),
            stale: last
                .as_ref()
                .is_none_or(|r| now.saturating_sub(r.sent_at) > stale),
            rollout: place,
            last_failure: last.as_ref().and_then(|r| r.last_failure.clone()),
            free_bytes: last.as_ref().and_then(|r| r.free_bytes),
            kernel: last.as_ref().and_then(|r| r.kernel.clone()),
        });
    }
    let mut refused = inbox::refusals(store)?;
    let cut = refused.len().saturating_sub(20);
    refused.drain(..cut);
    Ok(Overview {
        generated_at: now,
        stale_after_seconds: stale,
        machines,
        rollouts,
        refused,
    })
}

pub fn age(s: Option<i64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}min ago", s / 60),
        Some(s) if s < 172_800 => format!("{}h ago", s / 3600),
        Some(s) => format!("{}d ago", s / 86400),
    }
}

/// Text made safe for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// A colour per version, stable.
fn colour(v: &str) -> String {
    let h = crate::trust::hash::sha256_hex(v.as_bytes());
    let hue = u32::from_str_radix(&h[..4], 16).unwrap_or(0) % 360;
    format!("hsl({hue},65%,50%)")
}

/// The fleet's versions over time: a lane per machine, a segment per
/// report coloured by the version it ran (red outline: unhealthy).
fn plot(store: &Path, o: &Overview) -> Result<String> {
    let mut lanes = Vec::new();
    let (mut t0, mut t1) = (i64::MAX, i64::MIN);
    for m in &o.machines {
        let h = inbox::history(store, &m.machine)?;
        for r in &h {
            t0 = t0.min(r.sent_at);
            t1 = t1.max(r.sent_at);
        }
        lanes.push((m.machine.clone(), h));
    }
    if lanes.iter().all(|(_, h)| h.is_empty()) {
        return Ok("<p>No reports yet.</p>".into());
    }
    let span = t1.saturating_sub(t0).max(1) as f64;
    let (w, lane_h, left) = (900.0, 22.0, 220.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"versions over time\">",
        left + w + 10.0,
        lane_h * lanes.len() as f64 + 40.0
    );
    let mut versions: BTreeMap<String, ()> = BTreeMap::new();
    for (i, (id, h)) in lanes.iter().enumerate() {
        let y = 10.0 + lane_h * i as f64;
        svg += &format!(
            "<text x=\"0\" y=\"{}\" font-size=\"12\" font-family=\"monospace\">{}</text>",
            y + 14.0,
            esc(&id.chars().take(28).collect::<String>())
        );
        for (j, r) in h.iter().enumerate() {
            let v = r
                .booted
                .clone()
                .or(r.last_good.clone())
                .unwrap_or_else(|| "?".into());
            let v = ImageId::parse(&v).map_or(v, |id| id.to_string());
            versions.insert(v.clone(), ());
            let x0 = left + r.sent_at.saturating_sub(t0) as f64 / span * w;
            let x1 = h.get(j + 1).map_or(left + w, |n| {
                left + n.sent_at.saturating_sub(t0) as f64 / span * w
            });
            let bad = health_of(r).starts_with("failed") || health_of(r).starts_with("rolled back");
            svg += &format!(
                "<rect class=\"seg\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"16\" fill=\"{}\" stroke=\"{}\"><title>{}</title></rect>",
                (x1 - x0).max(2.0),
                colour(&v),
                if bad { "#d00" } else { "none" },
                esc(&format!("{v} ({})", health_of(r)))
            );
        }
    }
    let y = 10.0 + lane_h * lanes.len() as f64 + 14.0;
    svg += &format!(
        "<text x=\"{left}\" y=\"{y}\" font-size=\"11\">{}</text><text x=\"{}\" y=\"{y}\" font-size=\"11\" text-anchor=\"end\">{}</text></svg>",
        esc(&cairn_debian::date::format_release_date(t0)),
        left + w,
        esc(&cairn_debian::date::format_release_date(t1))
    );
    let legend: String = versions
        .keys()
        .map(|v| {
            format!(
                "<li><span class=\"sw\" style=\"background:{}\"></span>{}</li>",
                colour(v),
                esc(v)
            )
        })
        .collect();
    Ok(format!("{svg}<ul class=\"legend\">{legend}</ul>"))
}

/// Writes `DIR/index.html`: the page of the fleet.
pub fn write_html(store: &Path, o: &Overview, dir: &Path) -> Result<()> {
    let mut rows = String::new();
    for m in &o.machines {
        rows += &format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if m.stale { "stale" } else { "" },
            esc(&m.machine),
            esc(m.profile.as_deref().unwrap_or("?")),
            esc(m
                .booted
                .as_deref()
                .or(m.last_good.as_deref())
                .unwrap_or("?")),
            esc(m.next_boot.as_deref().unwrap_or("menu default")),
            esc(&m.health),
            esc(&format!(
                "{}{}",
                age(m.last_report_age_seconds),
                if m.stale { " (stale)" } else { "" }
            )),
            esc(m.rollout.as_deref().unwrap_or("")),
        );
    }
    let mut outs = String::new();
    for s in &o.rollouts {
        let r = &s.rollout;
        let events: String = r
            .events
            .iter()
            .map(|e| {
                format!(
                    "<li>{}: {}</li>",
                    esc(&cairn_debian::date::format_release_date(e.at)),
                    esc(&e.what)
                )
            })
            .collect();
        outs += &format!(
            "<section class=\"rollout {}\"><h3>{}/{}: {:?}</h3><p>stages {:?}, now stage {} at {}%</p><ol>{events}</ol></section>",
            format!("{:?}", r.state).to_ascii_lowercase(),
            esc(&r.profile),
            esc(&r.version),
            r.state,
            r.policy.stages,
            r.stage + 1,
            r.percent
        );
    }
    let mut failing = String::new();
    for m in o.machines.iter().filter(|m| {
        m.health.starts_with("failed")
            || m.health.starts_with("rolled back")
            || m.last_failure.is_some()
    }) {
        failing += &format!(
            "<section class=\"failing\"><h3>{}</h3><p>{}</p><pre>{}</pre></section>",
            esc(&m.machine),
            esc(&m.health),
            esc(m.last_failure.as_deref().unwrap_or(""))
        );
    }
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cairn fleet</title>\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}\
         tr.stale{{background:#fee}}.sw{{display:inline-block;width:1em;height:1em;margin-right:4px}}.legend{{list-style:none}}\
         .halted h3,.aborted h3{{color:#b00}}.done h3{{color:#070}}pre{{background:#f6f6f6;white-space:pre-wrap}}</style></head><body>\
         <h1>cairn fleet</h1><p>{} machine(s), made {}</p>\
         <h2>Versions over time</h2>{}\
         <h2>Machines</h2><table><tr><th>machine</th><th>profile</th><th>runs</th><th>next boot</th><th>health</th><th>last report</th><th>rollout</th></tr>{rows}</table>\
         <h2>Rollouts</h2>{outs}<h2>Failing machines</h2>{}</body></html>\n",
        o.machines.len(),
        esc(&cairn_debian::date::format_release_date(o.generated_at)),
        plot(store, o)?,
        if failing.is_empty() {
            "<p>None.</p>".to_string()
        } else {
            failing
        }
    );
    fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&dir.join("index.html"), page.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_machine_says_cannot_become_markup() {
        let e = super::esc("<script>alert('x')</script>\"&\u{7}");
        assert!(
            !e.contains('<') && !e.contains('"') && !e.contains('\''),
            "{e}"
        );
        assert!(e.contains("&lt;script&gt;") && e.contains("&amp;"));
    }
}

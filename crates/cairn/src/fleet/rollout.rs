//! Rollouts that gate themselves: a new version reaches the profile's
//! machines stage by stage (`fleet.rollout.stages`, e.g. 1 → 10 → 50 →
//! 100 %); a stage advances only when the reports of its machines show the
//! version booted and healthy, and the rollout halts by itself when too
//! many of them report it failed — the index is signed again with the
//! version at 0 %, so machines that do not have it never take it.
//!
//! `<store>/fleet/rollouts/<profile>/<version>.json` keeps each rollout's
//! state and its events (stages, halt, resume, abort).

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::inbox::{self, Enrolled};
use super::index::{self, PublishOptions};
use super::report::Report;
use crate::boot::model::ImageId;
use crate::profile::RolloutPolicy;
use crate::trust::keys::SigningKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    /// Stopped by failures (or by hand: aborted): at 0 %.
    Halted,
    Aborted,
    /// Every stage passed: at 100 %.
    Done,
    /// A newer version's rollout started: this one stays where it was.
    Superseded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    pub at: i64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Rollout {
    pub schema_version: u32,
    pub profile: String,
    pub version: String,
    pub policy: RolloutPolicy,
    /// Index into `policy.stages`.
    pub stage: usize,
    /// The share published for this stage: at least the stage's, more
    /// when that is needed for the stage to hold one machine.
    pub percent: u8,
    pub state: State,
    pub reason: Option<String>,
    pub started_at: i64,
    pub stage_started_at: i64,
    /// Machines whose failure a resume accepted.
    pub waived: Vec<String>,
    /// The share published before a halt (a resume goes on from it: the
    /// machines that have the version stay in its stage).
    #[serde(default)]
    pub before_halt: u8,
    pub events: Vec<Event>,
}

/// A machine of the current stage and what its last report says.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StageMachine {
    pub machine: String,
    /// `healthy`, `failed`, `pending`.
    pub verdict: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RolloutStatus {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// Machines of the profile, and of them in the current stage.
    pub machines: usize,
    pub in_stage: Vec<StageMachine>,
}

fn dir(store: &Path, profile: &str) -> PathBuf {
    inbox::fleet_dir(store).join("rollouts").join(profile)
}

fn path(store: &Path, profile: &str, version: &str) -> PathBuf {
    dir(store, profile).join(format!("{version}.json"))
}

impl Rollout {
    fn save(&self, store: &Path) -> Result<()> {
        fs::create_dir_all(dir(store, &self.profile))?;
        crate::fsutil::write_atomic(
            &path(store, &self.profile, &self.version),
            &serde_json::to_vec_pretty(self)?,
        )
    }

    fn event(&mut self, at: i64, what: String) {
        self.events.push(Event { at, what });
    }

    pub fn stage_percent(&self) -> u8 {
        self.policy.stages[self.stage]
    }
}

/// Every rollout of `profile`, oldest version first.
pub fn all(store: &Path, profile: &str) -> Result<Vec<Rollout>> {
    crate::names::check("profile", profile)?;
    let d = dir(store, profile);
    let rd = match fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let r: Rollout = serde_json::from_slice(&fs::read(&p)?)
                .with_context(|| format!("{}: not a rollout", p.display()))?;
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(out)
}

/// The profile's newest rollout.
pub fn current(store: &Path, profile: &str) -> Result<Option<Rollout>> {
    Ok(all(store, profile)?.pop())
}

/// The profiles that have rollouts.
pub fn profiles(store: &Path) -> Result<Vec<String>> {
    let d = inbox::fleet_dir(store).join("rollouts");
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(&d) {
        for e in rd {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The machines enrolled for `profile`, with their last reports. A
/// machine counts in the profile it was enrolled for, whatever its
/// reports say (a machine never moves itself into another profile's
/// rollout).
pub fn machines_of(store: &Path, profile: &str) -> Result<Vec<(Enrolled, Option<Report>)>> {
    let mut out = Vec::new();
    for e in inbox::enrolled(store)? {
        if e.profile.as_deref() == Some(profile) {
            let last = inbox::last_report(store, &e.machine)?;
            out.push((e, last));
        }
    }
    Ok(out)
}

/// The smallest share at or above `stage` that takes at least the
/// stage's part of `ids` (one machine at least): with few machines, a 1 %
/// stage still has a machine to learn from.
pub fn share(ids: &[&str], profile: &str, version: &str, stage: u8) -> u8 {
    if ids.is_empty() || stage >= 100 {
        return stage.min(100);
    }
    let need = (usize::from(stage) * ids.len()).div_ceil(100).max(1);
    (stage..=100)
        .find(|&p| {
            ids.iter()
                .filter(|i| index::in_rollout(i, profile, version, p))
                .count()
                >= need
        })
        .unwrap_or(100)
}

/// The share of `stage` for the machines enrolled for `profile` now.
fn share_now(store: &Path, profile: &str, version: &str, stage: u8) -> Result<u8> {
    let ms = machines_of(store, profile)?;
    let ids: Vec<&str> = ms.iter().map(|(e, _)| e.machine.as_str()).collect();
    Ok(share(&ids, profile, version, stage))
}

/// What a machine's last report says of `target`.
pub fn verdict(r: Option<&Report>, target: &ImageId) -> (&'static str, String) {
    let Some(r) = r else {
        return ("pending", "no report yet".into());
    };
    if r.profile.as_deref() != Some(target.profile()) {
        return (
            "pending",
            format!(
                "reports profile {:?}, enrolled for {}: not counted",
                r.profile.as_deref().unwrap_or("none"),
                target.profile()
            ),
        );
    }
    let name = target.to_string();
    let sel = |s: &Option<String>| s.as_deref().is_some_and(|e| target.is_selected_by(e));
    let health = r.health.clone().unwrap_or_default();
    if r.booted.as_deref() == Some(name.as_str()) && health.starts_with("failed") {
        return ("failed", format!("booted {name}: health {health}"));
    }
    if sel(&r.last_good) {
        return (
            "healthy",
            format!("{name} booted and passed its health check"),
        );
    }
    if sel(&r.on_trial) && r.tries_left == Some(0) && !r.trial_passed {
        let out = r.last_failure.clone().unwrap_or_default();
        return (
            "failed",
            format!("rolled back: {name} used up its trial without a healthy boot; {out}")
                .trim_end_matches("; ")
                .to_string(),
        );
    }
    if sel(&r.refused) {
        return ("failed", format!("{name} was refused at boot (its checks)"));
    }
    if let Some(p) = &r.last_pull
        && p.outcome == "gave-up"
        && p.version.as_deref() == Some(target.version())
    {
        return ("failed", format!("gave {name} up after its trial"));
    }
    (
        "pending",
        format!(
            "runs {}, {}",
            r.booted
                .as_deref()
                .or(r.last_good.as_deref())
                .unwrap_or("?"),
            if sel(&r.on_trial) {
                "the version on trial"
            } else {
                "not the version yet"
            }
        ),
    )
}

/// The rollout and its current stage's machines with their verdicts.
pub fn status(store: &Path, r: &Rollout) -> Result<RolloutStatus> {
    let ms = machines_of(store, &r.profile)?;
    let target = ImageId::parse(&format!("{}/{}", r.profile, r.version))?;
    let in_stage = ms
        .iter()
        .filter(|(e, _)| index::in_rollout(&e.machine, &r.profile, &r.version, r.percent))
        .map(|(e, last)| {
            let (mut v, mut detail) = verdict(last.as_ref(), &target);
            // Healthy is this stage's evidence: a report sent since it
            // began (a machine silent since cannot vouch for now).
            if v == "healthy"
                && last
                    .as_ref()
                    .is_some_and(|l| l.sent_at < r.stage_started_at)
            {
                v = "pending";
                detail = format!("{detail}, but not reported since this stage began");
            }
            let waived = r.waived.contains(&e.machine);
            StageMachine {
                machine: e.machine.clone(),
                verdict: if waived && v == "failed" { "waived" } else { v }.to_string(),
                detail,
            }
        })
        .collect();
    Ok(RolloutStatus {
        rollout: r.clone(),
        machines: ms.len(),
        in_stage,
    })
}

/// Publishes `profile` with `version` at `percent`.
fn publish(store: &Path, key: &SigningKey, r: &Rollout, valid_for: i64, now: i64) -> Result<()> {
    index::publish(
        store,
        key,
        &r.profile,
        &PublishOptions {
            valid_for,
            rollout: {
                let mut all = shares(store, &r.profile)?;
                all.insert(r.version.clone(), r.percent);
                all
            },
            now,
        },
    )
    .with_context(|| format!("publishing {} for its rollout", r.profile))?;
    Ok(())
}

/// Starts a gated rollout of `version` (its first stage published); a
/// running rollout of an older version is superseded.
pub fn start(
    store: &Path,
    key: &SigningKey,
    profile: &str,
    version: &str,
    policy: &RolloutPolicy,
    valid_for: i64,
    now: i64,
) -> Result<Rollout> {
    policy.check()?;
    crate::names::check("version", version)?;
    if !crate::image::list(store)?
        .iter()
        .any(|e| e.profile == profile && e.version == version)
    {
        bail!("{profile}/{version}: no such image in the store");
    }
    for mut old in all(store, profile)? {
        if old.version == version {
            bail!(
                "{profile}/{version} has a rollout already ({:?}): cairn rollout resume or abort",
                old.state
            );
        }
        if old.state == State::Running {
            old.state = State::Superseded;
            old.event(now, format!("superseded by {version}"));
            old.save(store)?;
        }
    }
    let mut r = Rollout {
        schema_version: 1,
        profile: profile.into(),
        version: version.into(),
        policy: policy.clone(),
        stage: 0,
        percent: share_now(store, profile, version, policy.stages[0])?,
        state: State::Running,
        reason: None,
        started_at: now,
        stage_started_at: now,
        waived: Vec::new(),
        before_halt: 0,
        events: Vec::new(),
    };
    let what = format!(
        "stage 1 ({}%): published at {}%",
        r.stage_percent(),
        r.percent
    );
    r.event(now, what);
    publish(store, key, &r, valid_for, now)?;
    r.save(store)?;
    Ok(r)
}

/// What a step did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Step {
    pub profile: String,
    pub version: String,
    /// `advanced`, `halted`, `done`, `waiting`.
    pub did: String,
    pub detail: String,
}

/// One look at the running rollout of `profile`: halt it when its stage's
/// failures pass the threshold, advance it when enough of the stage is
/// healthy and the soak time passed, else wait.
pub fn step(
    store: &Path,
    key: &SigningKey,
    profile: &str,
    valid_for: i64,
    now: i64,
) -> Result<Option<Step>> {
    let Some(mut r) = current(store, profile)? else {
        return Ok(None);
    };
    if r.state != State::Running {
        return Ok(None);
    }
    let st = status(store, &r)?;
    // Waived machines are out of the count both ways.
    let n = st.in_stage.iter().filter(|m| m.verdict != "waived").count();
    let failed: Vec<&StageMachine> = st
        .in_stage
        .iter()
        .filter(|m| m.verdict == "failed")
        .collect();
    let healthy = st
        .in_stage
        .iter()
        .filter(|m| m.verdict == "healthy")
        .count();
    let mut step = Step {
        profile: profile.into(),
        version: r.version.clone(),
        did: "waiting".into(),
        detail: format!(
            "stage {} ({}%): {healthy} of {n} healthy, {} failed",
            r.stage + 1,
            r.stage_percent(),
            failed.len()
        ),
    };
    if !failed.is_empty() && failed.len() * 100 > usize::from(r.policy.halt) * n {
        let why = failed
            .iter()
            .map(|m| format!("{}: {}", m.machine, m.detail))
            .collect::<Vec<_>>()
            .join("; ");
        r.state = State::Halted;
        r.reason = Some(format!(
            "stage {} ({}%): {} of {n} machine(s) failed (more than {}%): {why}",
            r.stage + 1,
            r.stage_percent(),
            failed.len(),
            r.policy.halt
        ));
        r.before_halt = r.percent;
        r.percent = 0;
        publish(store, key, &r, valid_for, now)?;
        let what = format!("halted: {}", r.reason.clone().unwrap_or_default());
        r.event(now, what);
        r.save(store)?;
        step.did = "halted".into();
        step.detail = r.reason.clone().unwrap_or_default();
        return Ok(Some(step));
    }
    let soak = super::parse_duration(&r.policy.soak)?;
    // Evidence, never its absence: a stage with no machine that reports
    // does not advance.
    let enough = healthy > 0 && healthy * 100 >= usize::from(r.policy.advance) * n;
    if !enough || now - r.stage_started_at < soak {
        if enough {
            step.detail += &format!(
                ", soaking until {}",
                cairn_debian::date::format_release_date(r.stage_started_at + soak)
            );
        }
        return Ok(Some(step));
    }
    if r.stage + 1 == r.policy.stages.len() {
        r.state = State::Done;
        let what = format!("done: {healthy} of {n} machine(s) healthy at 100%");
        r.event(now, what.clone());
        r.save(store)?;
        step.did = "done".into();
        step.detail = what;
        return Ok(Some(step));
    }
    r.stage += 1;
    r.percent = share_now(store, profile, &r.version, r.stage_percent())?.max(r.percent);
    r.stage_started_at = now;
    publish(store, key, &r, valid_for, now)?;
    let what = format!(
        "stage {} ({}%): published at {}% ({healthy} of {n} healthy before)",
        r.stage + 1,
        r.stage_percent(),
        r.percent
    );
    r.event(now, what.clone());
    r.save(store)?;
    step.did = "advanced".into();
    step.detail = what;
    Ok(Some(step))
}

/// Every profile's running rollout, one step each (`cairn cycle`).
pub fn step_all(store: &Path, key: &SigningKey, valid_for: i64, now: i64) -> Result<Vec<Step>> {
    let mut out = Vec::new();
    for p in profiles(store)? {
        if let Some(s) = step(store, key, &p, valid_for, now)? {
            out.push(s);
        }
    }
    Ok(out)
}

/// The shares of `profile`'s versions that have rollouts, as their
/// states say: what every publication of the profile signs (a halt stays
/// a halt whoever publishes next).
pub fn shares(store: &Path, profile: &str) -> Result<std::collections::BTreeMap<String, u8>> {
    Ok(all(store, profile)?
        .into_iter()
        .map(|r| (r.version, r.percent))
        .collect())
}

/// `o` with the shares of `profile`'s rollouts; a share given by hand for
/// a version with a rollout is refused (cairn rollout decides it).
pub fn with_shares(store: &Path, profile: &str, o: &PublishOptions) -> Result<PublishOptions> {
    let gated = shares(store, profile)?;
    if let Some(v) = o.rollout.keys().find(|v| gated.contains_key(*v)) {
        bail!(
            "{profile}/{v} has a staged rollout: cairn rollout resume or abort decides its share"
        );
    }
    let mut rollout = o.rollout.clone();
    rollout.extend(gated);
    Ok(PublishOptions {
        valid_for: o.valid_for,
        rollout,
        now: o.now,
    })
}

/// Whether any profile's rollout is running.
pub fn any_running(store: &Path) -> Result<bool> {
    for p in profiles(store)? {
        if current(store, &p)?.is_some_and(|r| r.state == State::Running) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The admin's word: a halted rollout goes on at its stage (the machines
/// that failed so far are waived: their failures no longer count).
pub fn resume(
    store: &Path,
    key: &SigningKey,
    profile: &str,
    valid_for: i64,
    now: i64,
) -> Result<Rollout> {
    let mut r = current(store, profile)?.with_context(|| format!("{profile} has no rollout"))?;
    if r.state != State::Halted {
        bail!(
            "{profile}/{}: {:?}, not halted: nothing to resume",
            r.version,
            r.state
        );
    }
    let st = status(store, &r)?;
    r.waived.extend(
        st.in_stage
            .iter()
            .filter(|m| m.verdict == "failed")
            .map(|m| m.machine.clone()),
    );
    r.percent = share_now(store, profile, &r.version, r.stage_percent())?.max(r.before_halt);
    r.state = State::Running;
    r.reason = None;
    r.stage_started_at = now;
    publish(store, key, &r, valid_for, now)?;
    let what = format!(
        "resumed by hand at stage {} ({}%), {} failure(s) waived",
        r.stage + 1,
        r.percent,
        r.waived.len()
    );
    r.event(now, what);
    r.save(store)?;
    Ok(r)
}

/// The admin's word: the version goes to no machine that lacks it.
pub fn abort(
    store: &Path,
    key: &SigningKey,
    profile: &str,
    valid_for: i64,
    now: i64,
) -> Result<Rollout> {
    let mut r = current(store, profile)?.with_context(|| format!("{profile} has no rollout"))?;
    if matches!(r.state, State::Aborted | State::Done | State::Superseded) {
        bail!("{profile}/{}: {:?}: nothing to abort", r.version, r.state);
    }
    r.state = State::Aborted;
    r.percent = 0;
    r.reason = Some("aborted by hand".into());
    publish(store, key, &r, valid_for, now)?;
    r.event(now, "aborted by hand: published at 0%".into());
    r.save(store)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_stage_still_has_a_machine() {
        let ids = ["m1", "m2", "m3"];
        let p = share(&ids, "web", "2", 1);
        let n = ids
            .iter()
            .filter(|i| index::in_rollout(i, "web", "2", p))
            .count();
        assert!(n >= 1, "{p}%: {n}");
        assert!(p >= 1);
        // The least share that does: one below takes none.
        if p > 1 {
            assert_eq!(
                ids.iter()
                    .filter(|i| index::in_rollout(i, "web", "2", p - 1))
                    .count(),
                0
            );
        }
        assert_eq!(share(&[], "web", "2", 10), 10);
        assert_eq!(share(&ids, "web", "2", 100), 100);
    }
}

//! The file runner: a [`ScenarioSpec`]'s steps, in virtual mode, on a [`Scenario`].

use super::expect::{cell_mismatch, response_mismatch};
use super::format::{Action, Expect, Mode, ScenarioSpec, StepSpec};
use super::http::Response;
use super::run::{run_err, Scenario};
use super::trace::TraceLine;
use super::ScenarioError;

/// The result of running one scenario file.
#[derive(Debug)]
pub struct RunReport {
    /// Scenario name.
    pub name: String,
    /// Mode it ran in.
    pub mode: Mode,
    /// The trace.
    pub trace: Vec<TraceLine>,
}

/// Runs a scenario in virtual mode, with `server` (if given) for its HTTP steps.
pub fn run_spec(spec: &ScenarioSpec, server: Option<super::http::ServerFactory>) -> Result<RunReport, ScenarioError> {
    if !spec.modes.contains(&Mode::Virtual) {
        return Err(ScenarioError::UnsupportedMode(
            spec.name.clone(),
            Mode::Virtual.as_str(),
        ));
    }
    let mut sim = Scenario::new(
        spec.name.clone(),
        spec.seed,
        &spec.keys,
        spec.server.key_grace,
        spec.server.require_attestation,
    )?;
    if let Some(make) = server {
        let target = make(sim.reader().clone()).map_err(|e| run_err(&spec.name, 0, format!("server: {e}")))?;
        sim.attach_server(target);
    }
    for (i, step) in spec.steps.iter().enumerate() {
        sim.set_step(i);
        run_step(&mut sim, spec, i, step)?;
    }
    Ok(RunReport {
        name: spec.name.clone(),
        mode: Mode::Virtual,
        trace: sim.finish(),
    })
}

/// Parses and runs a file in virtual mode (see [`run_spec`]).
pub fn run_file(
    path: &std::path::Path,
    server: Option<super::http::ServerFactory>,
) -> Result<RunReport, ScenarioError> {
    run_spec(&ScenarioSpec::load(path)?, server)
}

fn json_body(v: &Option<toml::Value>) -> Option<serde_json::Value> {
    v.as_ref().and_then(|v| serde_json::to_value(v).ok())
}

fn run_step(sim: &mut Scenario, spec: &ScenarioSpec, i: usize, step: &StepSpec) -> Result<(), ScenarioError> {
    sim.advance_to(step.at);
    let key = step.key.as_deref().unwrap_or_default();
    let mut response = None;
    match step.action {
        Action::Plug => {
            sim.plug(key)?;
        }
        Action::Unplug => {
            sim.unplug(key)?;
        }
        Action::Swap => {
            sim.swap(key, step.to.as_deref().unwrap_or_default())?;
        }
        Action::Contend => {
            sim.contend(key, step.duration.unwrap_or_default())?;
        }
        Action::IoError => {
            sim.io_error(key)?;
        }
        Action::Stall => {
            sim.stall(key, step.duration.unwrap_or_default())?;
        }
        Action::RestartServer => {
            sim.restart_server()?;
        }
        Action::Advance => {
            sim.record("advance".into(), None);
        }
        Action::RestartPcscd => {
            return Err(ScenarioError::UnsupportedMode(
                spec.name.clone(),
                Mode::Virtual.as_str(),
            ));
        }
        Action::Http => {
            let h = step
                .http
                .as_ref()
                .ok_or_else(|| run_err(&spec.name, i, "http step without request"))?;
            let (resp, _) = sim.http(&h.method, &h.path, json_body(&h.body).as_ref())?;
            response = Some(resp);
        }
        Action::Flap => {
            flap(sim, spec, i, step)?;
        }
    }
    if let Some(expect) = &step.expect {
        check(sim, spec, i, step, expect, response.as_ref())?;
    }
    Ok(())
}

/// `cycles` × (unplug, request, plug, request), each half cycle `period / 2` apart. Every
/// response must be a success while the key was valid and `hardware_key_not_accessible`
/// while it was not (never a 5xx), and the server must count exactly the successes.
fn flap(sim: &mut Scenario, spec: &ScenarioSpec, i: usize, step: &StepSpec) -> Result<(), ScenarioError> {
    let key = step.key.as_deref().unwrap_or_default();
    let half = step.period.unwrap_or_default() / 2;
    let cycles = step.cycles.unwrap_or(0);
    let check_invariants = step.expect.as_ref().is_some_and(|e| e.flap_invariants);
    let mut t = sim.now();
    for c in 0..cycles {
        for plug in [false, true] {
            sim.advance_to(t);
            if plug {
                sim.plug(key)?;
            } else {
                sim.unplug(key)?;
            }
            if let Some(h) = &step.http {
                let valid_now = sim.reader().check().valid_key().is_some();
                let (resp, _) = sim.http(&h.method, &h.path, json_body(&h.body).as_ref())?;
                if check_invariants {
                    let ok = if valid_now {
                        (200..300).contains(&resp.status)
                    } else {
                        resp.status == 400 && resp.code().as_deref() == Some("hardware_key_not_accessible")
                    };
                    if !ok {
                        return Err(expectation(
                            spec,
                            i,
                            step,
                            format!(
                                "flap cycle {c} ({}): key {} but the server answered {} {}",
                                if plug { "plugged" } else { "unplugged" },
                                if valid_now { "valid" } else { "not valid" },
                                resp.status,
                                resp.body
                            ),
                        ));
                    }
                }
            }
            t += half;
        }
    }
    Ok(())
}

fn expectation(spec: &ScenarioSpec, i: usize, step: &StepSpec, message: String) -> ScenarioError {
    ScenarioError::Expectation {
        scenario: spec.name.clone(),
        step: i,
        action: format!("{:?}", step.action).to_lowercase(),
        at: humantime::format_duration(step.at).to_string(),
        message,
    }
}

fn check(
    sim: &Scenario,
    spec: &ScenarioSpec,
    i: usize,
    step: &StepSpec,
    expect: &Expect,
    response: Option<&Response>,
) -> Result<(), ScenarioError> {
    let snap = sim.reader().snapshot();
    let mismatch = cell_mismatch(expect, &snap, &sim.hardware_id_label(), None)
        .or_else(|| response_mismatch(expect, response))
        .or_else(|| {
            let want = expect.server_exited?;
            (sim.server_exited() != want).then(|| format!("expected server_exited={want}"))
        });
    match mismatch {
        Some(m) => Err(expectation(spec, i, step, m)),
        None => Ok(()),
    }
}

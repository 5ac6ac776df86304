//! Runs every shipped scenario in virtual mode twice and checks that one seed gives one trace.

use std::path::{Path, PathBuf};

use keyfloat_simulator::scenario::{run_spec, Mode, ScenarioError, ScenarioSpec};

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenarios dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
}

#[test]
fn every_virtual_scenario_passes_and_is_deterministic() {
    let mut ran = 0;
    for path in scenario_files() {
        let spec = ScenarioSpec::load(&path).unwrap_or_else(|e| panic!("{e}"));
        if !spec.modes.contains(&Mode::Virtual) {
            continue;
        }
        let first =
            run_spec(&spec, keyfloat_simulator::scenario::in_process_server(&spec)).unwrap_or_else(|e| panic!("{e}"));
        let second =
            run_spec(&spec, keyfloat_simulator::scenario::in_process_server(&spec)).unwrap_or_else(|e| panic!("{e}"));
        if let Some(i) = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b) {
            panic!("{}", ScenarioError::NotDeterministic(spec.name.clone(), i));
        }
        assert_eq!(first.trace.len(), second.trace.len(), "{}", spec.name);
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} virtual scenarios ran");
}

#[test]
fn a_broken_expectation_names_scenario_and_step() {
    let text = r#"
name = "broken-on-purpose"
seed = 1
[[keys]]
name = "alpha"
serial = 1
[[steps]]
at = "0ms"
action = "plug"
key = "alpha"
expect = { hardware_id = "alpha" }
[[steps]]
at = "1ms"
action = "unplug"
key = "alpha"
expect = { hardware_id = "alpha" }
"#;
    let spec = ScenarioSpec::parse(text).unwrap();
    let err = run_spec(&spec, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken-on-purpose") && msg.contains("step 1"), "{msg}");
    assert!(msg.contains("expected hardware_id=alpha, got machine"), "{msg}");
}

#[test]
fn inconsistent_files_are_refused_with_a_clear_error() {
    for (text, needle) in [
        (
            "name='x'\n[[steps]]\nat='0ms'\naction='plug'\nkey='nope'\n",
            "unknown key",
        ),
        (
            "name='x'\n[[steps]]\nat='5ms'\naction='advance'\n[[steps]]\nat='1ms'\naction='advance'\n",
            "time order",
        ),
        ("name='x'\n[[steps]]\nat='soon'\naction='advance'\n", "invalid scenario"),
        ("name='x'\nbogus=1\n", "unknown field"),
    ] {
        let err = ScenarioSpec::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

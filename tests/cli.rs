//! `sluice check-config` / `sluice run` refuse bad configuration before any I/O: a message that
//! names the key, and exit code 64.

use std::process::Command;

fn check(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "[source]\ntype = \"dynamodb_streams\"\ntable = \"Posts\"\n[sink]\nurl = \"http://127.0.0.1:9200\"\nindex = \"posts\"\n";

#[test]
fn a_valid_file_passes() {
    let (code, out, err) = check(GOOD, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration OK"));
}

#[test]
fn the_example_config_is_valid() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sluice.example.toml"
    ))
    .unwrap();
    let (code, _, err) = check(&example, &[]);
    assert_eq!(
        code,
        Some(0),
        "config/sluice.example.toml must pass check-config: {err}"
    );
}

#[test]
fn an_unknown_key_is_named() {
    let (code, _, err) = check(&format!("{GOOD}max_docs = 5\n"), &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("max_docs"), "{err}");
}

#[test]
fn a_bad_duration_is_named() {
    let (code, _, err) = check(
        &GOOD.replace("[sink]", "poll_interval = \"fast\"\n[sink]"),
        &[],
    );
    assert_eq!(code, Some(64));
    assert!(
        err.contains("poll_interval") && err.contains("fast"),
        "{err}"
    );
}

#[test]
fn a_missing_table_is_named() {
    let (code, _, err) = check(&GOOD.replace("table = \"Posts\"\n", ""), &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("source.table"), "{err}");
}

#[test]
fn a_wrong_type_is_named() {
    let (code, _, err) = check(&format!("{GOOD}[batch]\nmax_documents = \"many\"\n"), &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("max_documents"), "{err}");
}

#[test]
fn environment_overrides_are_validated_too() {
    let (code, _, err) = check(GOOD, &[("SLUICE__BATCH__MAX_WAIT", "eventually")]);
    assert_eq!(code, Some(64));
    assert!(err.contains("max_wait"), "{err}");
    let (code, _, err) = check(GOOD, &[("SLUICE__SINK__URL", "http://127.0.0.1:9999")]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn run_refuses_bad_config_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "{GOOD}[checkpoint]\npath = \"{}/never.db\"\nbogus = 1\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    assert!(!dir.path().join("never.db").exists(), "no file was created");
}

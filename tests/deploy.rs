//! `deploy/` is checked with the tools its ecosystem uses, offline: the ECS task definition
//! against botocore's `RegisterTaskDefinition` input model, and every IAM action named against
//! botocore's service models (scripts/validate_deploy.py, run with the test virtualenv's python).

mod common;

use std::process::Command;

#[test]
fn the_task_definition_and_iam_policies_validate_against_botocore_models() {
    let python = common::moto_server_path()
        .parent()
        .expect("the virtualenv's bin directory")
        .join("python");
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/validate_deploy.py"
        ))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run the README's test command, which installs it)",
                python.display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok: ecs/task-definition.json"), "{text}");
    let policies = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/iam"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(text.matches("ok: iam/").count(), policies, "{text}");
    assert!(text.contains("ok: compose.yaml"), "{text}");
}

fn task_definition() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/ecs/task-definition.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_task_definition_matches_what_sluice_needs_on_fargate() {
    let task = task_definition();
    let c = &task["containerDefinitions"][0];
    let env: std::collections::HashMap<&str, &str> = c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    // ECS kills stopTimeout seconds after SIGTERM: sluice's deadline must end before
    let shutdown = sluice::config::parse_duration(env["SLUICE__SHUTDOWN__TIMEOUT"]).unwrap();
    assert!(shutdown.as_secs() < c["stopTimeout"].as_u64().unwrap());
    // the health check needs no shell: sluice's own subcommand
    assert_eq!(c["healthCheck"]["command"][0], "CMD");
    assert_eq!(c["healthCheck"]["command"][2], "healthcheck");
    // SQLite over EFS: the rollback journal, never WAL
    assert_eq!(env["SLUICE__CHECKPOINT__JOURNAL_MODE"], "delete");
    assert_eq!(env["SLUICE__HTTP__LISTEN"], "0.0.0.0:9464");
    assert_eq!(c["readonlyRootFilesystem"], true);
}

/// The configuration baked into the image, with the task definition's environment applied, is
/// valid: `sluice check-config` as the container would run it.
#[test]
fn the_image_config_with_the_task_environment_passes_check_config() {
    let task = task_definition();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args([
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sluice.toml"),
    ]);
    for e in task["containerDefinitions"][0]["environment"]
        .as_array()
        .unwrap()
    {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    // what the secret would hold
    cmd.env("SLUICE__SINK__PASSWORD", "from-secrets-manager");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CloudFormation stack passes `cfn-lint` (installed with moto in the test virtualenv,
/// pinned by scripts/moto-constraints.txt).
#[test]
fn the_cloudformation_stack_passes_cfn_lint() {
    let cfn_lint = common::moto_server_path()
        .parent()
        .expect("the virtualenv's bin directory")
        .join("cfn-lint");
    let out = Command::new(&cfn_lint)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/cloudformation/sluice.yaml"
        ))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cfn_lint.display()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

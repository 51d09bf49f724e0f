"""Offline checks of deploy/ against botocore's service models (run by tests/deploy.rs with the
test virtualenv's python, which has botocore through moto):

* the ECS task definition is valid RegisterTaskDefinition input (botocore parameter validation);
* every IAM action in deploy/iam/*.json names an operation of its service, and none is a wildcard;
* compose.yaml parses, every image has an explicit version, and every file it mounts or builds
  from exists.

Prints one line per check; exits 1 with the problems otherwise."""
import json
import pathlib
import sys

import botocore.session
from botocore.validate import ParamValidator

ROOT = pathlib.Path(__file__).resolve().parent.parent / "deploy"
session = botocore.session.get_session()
problems = []

ecs = session.get_service_model("ecs")
task = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
report = ParamValidator().validate(task, ecs.operation_model("RegisterTaskDefinition").input_shape)
if report.has_errors():
    problems.append("ecs/task-definition.json: " + report.generate_report())
else:
    print("ok: ecs/task-definition.json is valid RegisterTaskDefinition input")

# IAM prefix -> botocore services whose operations it covers (DynamoDB Streams actions use the
# "dynamodb:" prefix).
SERVICES = {
    "dynamodb": ["dynamodb", "dynamodbstreams"],
    "kinesis": ["kinesis"],
    "kms": ["kms"],
    "es": ["es", "opensearch"],
    "s3": ["s3"],
}
# Data-plane actions IAM defines for OpenSearch Service that are not API operations (documented
# in "Identity and Access Management in Amazon OpenSearch Service").
IAM_ONLY = {f"es:ESHttp{m}" for m in ["Get", "Head", "Post", "Put", "Delete", "Patch"]}
# S3's IAM action for ListObjects/ListObjectsV2 is named after the bucket, not the operation.
IAM_ONLY |= {"s3:ListBucket"}

for path in sorted((ROOT / "iam").glob("*.json")):
    policy = json.loads(path.read_text())
    for statement in policy["Statement"]:
        actions = statement["Action"]
        for action in [actions] if isinstance(actions, str) else actions:
            if "*" in action:
                problems.append(f"iam/{path.name}: `{action}` is a wildcard")
                continue
            if action in IAM_ONLY:
                continue
            prefix, op = action.split(":", 1)
            names = [n for s in SERVICES.get(prefix, []) for n in session.get_service_model(s).operation_names]
            if op not in names:
                problems.append(f"iam/{path.name}: `{action}` is not an operation of {SERVICES.get(prefix, prefix)}")
    print(f"ok: iam/{path.name} actions checked")

import yaml

compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
for name, service in compose["services"].items():
    image = service.get("image")
    if image:
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            problems.append(f"compose.yaml: {name}: image `{image}` has no pinned version")
    build = service.get("build")
    if build:
        context = (ROOT / build["context"]).resolve()
        if not (context / build["dockerfile"]).is_file():
            problems.append(f"compose.yaml: {name}: {build['dockerfile']} not found in {context}")
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            if not (ROOT / source).exists():
                problems.append(f"compose.yaml: {name}: `{source}` does not exist")
        elif source not in (compose.get("volumes") or {}):
            problems.append(f"compose.yaml: {name}: volume `{source}` is not declared")
for extra in ["compose/prometheus.yml", "compose/grafana/provisioning/datasources/prometheus.yaml",
              "compose/grafana/provisioning/dashboards/sluice.yaml"]:
    yaml.safe_load((ROOT / extra).read_text())
print("ok: compose.yaml images pinned, mounted files present")

if problems:
    print("\n".join(problems))
    sys.exit(1)

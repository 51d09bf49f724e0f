"""Offline checks of deploy/ against botocore's service models (run by tests/deploy.rs with the
test virtualenv's python, which has botocore through moto):

* the ECS task definition is valid RegisterTaskDefinition input (botocore parameter validation);
* every IAM action in deploy/iam/*.json names an operation of its service, and none is a wildcard.

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
}
# Data-plane actions IAM defines for OpenSearch Service that are not API operations (documented
# in "Identity and Access Management in Amazon OpenSearch Service").
IAM_ONLY = {f"es:ESHttp{m}" for m in ["Get", "Head", "Post", "Put", "Delete", "Patch"]}

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

if problems:
    print("\n".join(problems))
    sys.exit(1)

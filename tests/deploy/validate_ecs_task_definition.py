"""Validates ECS task definition files as RegisterTaskDefinition input.

Uses the ECS API model that botocore ships and botocore's own parameter validation (the check
the AWS CLI and boto3 run before sending `aws ecs register-task-definition --cli-input-json`):
unknown keys (for example `taskDefinitionArn`, `revision` or `status` from describe output),
missing required members, wrong types and out-of-range values. botocore does not check enum
values, so they are checked here against the same model. No AWS call, no credentials.

Usage: python3 tests/deploy/validate_ecs_task_definition.py FILE...   (exit 1 on any error)
"""

import json
import sys

import botocore
import botocore.session
import botocore.validate

OPERATION = "RegisterTaskDefinition"


def no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def enum_errors(value, shape, path):
    """Values outside an enum of the model, anywhere in value (botocore skips these)."""
    errors = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                errors += enum_errors(value[name], member, f"{path}.{name}" if path else name)
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            errors += enum_errors(item, shape.member, f"{path}[{i}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            errors += enum_errors(key, shape.key, f"{path} (key {key!r})")
            errors += enum_errors(item, shape.value, f"{path}.{key}")
    elif shape.type_name == "string" and isinstance(value, str):
        allowed = shape.enum
        if allowed and value not in allowed:
            errors.append(f"Invalid value for parameter {path or 'input'}, value: {value!r}, valid values: {', '.join(allowed)}")
    return errors


def validate(path, input_shape):
    with open(path) as f:
        try:
            params = json.load(f, object_pairs_hook=no_duplicate_keys)
        except ValueError as e:
            return [f"not valid JSON: {e}"]
    if not isinstance(params, dict):
        return ["the top level is not a JSON object"]
    report = botocore.validate.ParamValidator().validate(params, input_shape)
    errors = report.generate_report().splitlines() if report.has_errors() else []
    return [e.strip() for e in errors if e.strip()] + enum_errors(params, input_shape, "")


def main(paths):
    if not paths:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    model = botocore.session.get_session().get_service_model("ecs")
    input_shape = model.operation_model(OPERATION).input_shape
    failed = False
    for path in paths:
        errors = validate(path, input_shape)
        if errors:
            failed = True
            print(f"FAIL {path}: not valid ECS {OPERATION} input (botocore {botocore.__version__}, ecs {model.api_version}):")
            for error in errors:
                print(f"  {error}")
        else:
            print(f"ok   {path}: valid ECS {OPERATION} input (botocore {botocore.__version__}, ecs {model.api_version})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

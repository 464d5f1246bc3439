"""AWS rules the embedded engine does not enforce, checked on every rendered file and the template.

The engine runs our ASL, but it is not AWS: it accepts definitions AWS rejects and
raises errors AWS never does. Each rule here states what AWS requires and cites where
AWS says so (a documentation page) or where AWS was seen doing it (LocalStack's
snapshot tests, recorded against AWS). `check_definition` and `check_template` return
findings; the test suite requires none (tests/test_aws_rules.py shows each rule
failing on a fixture that breaks it).
"""
from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import intrinsics
from .errors import ERRORS, SERVICE_ERRORS

__all__ = ["Finding", "check_definition", "check_template", "check_mock_config", "processing_request_findings",
           "states", "STATES_ERRORS", "MAX_STACK_NAME"]


@dataclass(frozen=True)
class Finding:
    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.message}"


#: Error names Step Functions itself raises.
#: Source: https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html
#: ("Error names": States.ALL, States.DataLimitExceeded, States.ExceedToleratedFailureThreshold,
#: States.HeartbeatTimeout, States.Http.Socket, States.IntrinsicFailure, States.ItemReaderFailed,
#: States.NoChoiceMatched, States.ParameterPathFailure, States.Permissions, States.ResultPathMatchFailure,
#: States.ResultWriterFailed, States.Runtime, States.Timeout, States.TaskFailed, States.BranchFailed,
#: States.QueryEvaluationError).
STATES_ERRORS = frozenset({
    "States.ALL", "States.DataLimitExceeded", "States.ExceedToleratedFailureThreshold", "States.HeartbeatTimeout",
    "States.Http.Socket", "States.IntrinsicFailure", "States.ItemReaderFailed", "States.NoChoiceMatched",
    "States.ParameterPathFailure", "States.Permissions", "States.ResultPathMatchFailure",
    "States.ResultWriterFailed", "States.Runtime", "States.Timeout", "States.TaskFailed", "States.BranchFailed",
    "States.QueryEvaluationError",
})

#: Stack names are at most 128 characters, but our state machine names are derived from the stack
#: name plus a suffix and must fit 80: the README documents stack names of at most this length.
MAX_STACK_NAME = 64


# --- walking a definition ---------------------------------------------------------------------

def states(definition: dict, where: str = "") -> Iterator[tuple[str, str, dict]]:
    """(path, name, state) for every state, those inside Map and Parallel included."""
    for name, state in definition.get("States", {}).items():
        path = f"{where}{name}"
        yield path, name, state
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from states(processor, f"{path} > ")
        for i, branch in enumerate(state.get("Branches", [])):
            yield from states(branch, f"{path} > [{i}] ")


def _fields(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every object below `node`."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _fields(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _fields(v, f"{path}[{i}]")


_PAYLOAD_FIELDS = ("Parameters", "ResultSelector", "ItemSelector", "Assign", "Arguments", "Output")


def _intrinsic_fields(state: dict) -> Iterator[tuple[str, str]]:
    """(field path, expression) of every field of a state that holds an intrinsic function."""
    for block in _PAYLOAD_FIELDS:
        if block in state:
            for path, key, value in _fields(state[block], block):
                if key.endswith(".$") and intrinsics.is_intrinsic(value):
                    yield path, value
    for rule in state.get("Choices", []):
        if "Assign" in rule:
            for path, key, value in _fields(rule["Assign"], f"Choices[{rule.get('Next')}].Assign"):
                if key.endswith(".$") and intrinsics.is_intrinsic(value):
                    yield path, value
    for key in ("CausePath", "ErrorPath"):
        if intrinsics.is_intrinsic(state.get(key)):
            yield key, state[key]


# --- rules on one definition --------------------------------------------------------------------

MAX_INTRINSIC_CALLS = 10
MAX_DEFINITION_BYTES = 1_048_576
MAX_STATE_NAME = 80


def _rule_intrinsic_calls(where: str, definition: dict) -> Iterator[Finding]:
    """At most 10 intrinsic function calls in one field, and every expression well formed.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/intrinsic-functions.html
    ("You can nest up to 10 intrinsic functions within a field"; its own example of nine calls
    five deep is called "nine nested", so AWS counts calls, not depth)."""
    for path, _, state in states(definition):
        for field_path, expr in _intrinsic_fields(state):
            try:
                n = intrinsics.calls(intrinsics.parse(expr))
            except intrinsics.IntrinsicSyntaxError as exc:
                yield Finding("intrinsic-syntax", f"{where}: {path}: {field_path}", str(exc))
                continue
            if n > MAX_INTRINSIC_CALLS:
                yield Finding("intrinsic-calls", f"{where}: {path}: {field_path}",
                              f"{n} intrinsic function calls (AWS allows {MAX_INTRINSIC_CALLS} per field)")


def _rule_no_intrinsics_in_choice(where: str, definition: dict) -> Iterator[Finding]:
    """Choice rules compare paths; intrinsic functions are not allowed there.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/intrinsic-functions.html
    (intrinsics are for Parameters, ResultSelector, ItemSelector and Assign payloads)."""
    for path, _, state in states(definition):
        for rule in state.get("Choices", []):
            text = json.dumps({k: v for k, v in rule.items() if k != "Assign"})
            if "States." in text:
                yield Finding("intrinsic-in-choice", f"{where}: {path}", "a Choice rule uses an intrinsic function")


def _rule_state_names(where: str, definition: dict) -> Iterator[Finding]:
    """State names are at most 80 characters.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/statemachine-structure.html
    ("The name of a state ... must be 80 Unicode characters or fewer")."""
    for path, name, _ in states(definition):
        if len(name) > MAX_STATE_NAME:
            yield Finding("state-name", f"{where}: {path}", f"{len(name)} characters (at most {MAX_STATE_NAME})")


def _rule_definition_size(where: str, text: str) -> Iterator[Finding]:
    """A definition is at most 1 MB.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html
    ("Maximum request size ... state machine definition: 1 MB")."""
    size = len(text.encode())
    if size > MAX_DEFINITION_BYTES:
        yield Finding("definition-size", where, f"{size} bytes (at most {MAX_DEFINITION_BYTES})")


def allowed_error(name: str) -> bool:
    return name in STATES_ERRORS or name in ERRORS or name in SERVICE_ERRORS


def _rule_error_names(where: str, definition: dict) -> Iterator[Finding]:
    """Every name in ErrorEquals is one AWS can raise: a States.* name, one of ours (errors.ERRORS),
    or an integration error `<Service>.<SDK exception class>` evidenced in errors.SERVICE_ERRORS.
    Our own Fail errors never take the States. prefix.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html ;
    the integration names: errors.SERVICE_ERRORS, one row of evidence each."""
    for path, _, state in states(definition):
        for kind in ("Retry", "Catch"):
            for rule in state.get(kind, []):
                for name in rule.get("ErrorEquals", []):
                    if not allowed_error(name):
                        yield Finding("error-name", f"{where}: {path}: {kind}",
                                      f"{name!r} is neither States.*, ours, nor an evidenced integration error")
        if state.get("Type") == "Fail" and "Error" in state:
            if state["Error"].startswith("States.") or state["Error"] not in ERRORS:
                yield Finding("error-name", f"{where}: {path}", f"Fail error {state['Error']!r} is not one of ours")


_COMPARATOR = r"(?:=|<>|<=|>=|<|>)"
_VALUE_VS_VALUE = re.compile(rf"(?<![\w#.])(:\w+)\s*{_COMPARATOR}\s*(:\w+)")
_VALUE_FIRST = re.compile(rf"(?:^|\(|\bAND\b|\bOR\b|\bNOT\b)\s*(:\w+)\s*(?:{_COMPARATOR}|\bBETWEEN\b|\bIN\b)", re.I)


def _rule_dynamodb_expressions(where: str, definition: dict) -> Iterator[Finding]:
    """A DynamoDB condition compares an item attribute (a path) with a value, never two values.

    Source: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.OperatorsAndFunctions.html
    (the syntax is `operand comparator operand`, and AWS documents no case of two expression
    attribute values compared; whether DynamoDB accepts `:a = :b` is unverified, so we never
    rely on it)."""
    for path, _, state in states(definition):
        if "dynamodb:" not in str(state.get("Resource", "")):
            continue
        for key in ("ConditionExpression", "KeyConditionExpression", "FilterExpression"):
            expr = state.get("Parameters", {}).get(key)
            if isinstance(expr, str) and (_VALUE_VS_VALUE.search(expr) or _VALUE_FIRST.search(expr)):
                yield Finding("dynamodb-value-comparison", f"{where}: {path}: {key}",
                              f"{expr!r} compares an expression attribute value where an attribute is expected")


def _rule_distributed_map_tolerance(where: str, definition: dict) -> Iterator[Finding]:
    """A Distributed Map sets its tolerated failure explicitly: by default a single failed child
    execution fails the whole map run (States.ExceedToleratedFailureThreshold).

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/maprun-fail-threshold.html"""
    keys = ("ToleratedFailurePercentage", "ToleratedFailureCount", "ToleratedFailurePercentagePath",
            "ToleratedFailureCountPath")
    for path, _, state in states(definition):
        processor = state.get("ItemProcessor") or {}
        if state.get("Type") == "Map" and processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            if not any(k in state for k in keys):
                yield Finding("map-tolerance", f"{where}: {path}",
                              "a Distributed Map without ToleratedFailurePercentage/Count fails on its first failed item")


def check_definition(where: str, text: str) -> list[Finding]:
    """Every definition rule on one rendered ASL file (its text, placeholders unsubstituted)."""
    definition = json.loads(text)
    out: list[Finding] = []
    for rule in (_rule_intrinsic_calls, _rule_no_intrinsics_in_choice, _rule_state_names, _rule_error_names,
                 _rule_dynamodb_expressions, _rule_distributed_map_tolerance):
        out += rule(where, definition)
    out += _rule_definition_size(where, text)
    return out


def check_mock_config(where: str, config: dict) -> list[Finding]:
    """Every error a mocked response throws is one AWS can raise (the same rule as ErrorEquals):
    a mock throwing an invented name makes a Retry on that name look tested when AWS never fires it."""
    out = []
    for response_name, ranges in config.get("MockedResponses", {}).items():
        for key, response in ranges.items():
            name = response.get("Throw", {}).get("Error")
            if name is not None and not allowed_error(name):
                out.append(Finding("error-name", f"{where}: {response_name}/{key}",
                                   f"mock throws {name!r}, which AWS never raises"))
    return out


# --- SageMaker CreateProcessingJob request limits -------------------------------------------------

def _tag_chars_ok(value: str) -> bool:
    """Tag keys and values match [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*."""
    return all(unicodedata.category(c)[0] in "LZN" or c in "_.:/=+-@" for c in value)


_JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_S3_URI = re.compile(r"(https|s3)://([^/]+)/?(.*)")


def processing_request_findings(request: dict) -> list[str]:
    """What in a CreateProcessingJob request AWS would refuse.

    Source: https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateProcessingJob.html
    (ProcessingJobName 1-63 of [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}; Environment at most 100 entries,
    keys and values at most 256 characters; Tags at most 50), API_AppSpecification.html
    (ContainerArguments and ContainerEntrypoint: at most 256 items of at most 256 characters),
    API_ProcessingS3Input.html / API_ProcessingS3Output.html (S3Uri at most 1024 characters,
    (https|s3)://([^/]+)/?(.*)), API_Tag.html (Key 1-128, Value 0-256 characters, both
    [\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*)."""
    out = []
    name = request.get("ProcessingJobName", "")
    if not (_JOB_NAME.fullmatch(name) and len(name) <= 63):
        out.append(f"ProcessingJobName {name!r} is not 1-63 characters of [a-zA-Z0-9-] starting alphanumeric")
    env = request.get("Environment", {})
    if len(env) > 100:
        out.append(f"Environment has {len(env)} entries (at most 100)")
    for k, v in env.items():
        if len(k) > 256 or len(str(v)) > 256:
            out.append(f"Environment {k}: {len(str(v))} characters (at most 256)")
    app = request.get("AppSpecification", {})
    for key in ("ContainerArguments", "ContainerEntrypoint"):
        items = app.get(key, [])
        if len(items) > 256:
            out.append(f"{key} has {len(items)} items (at most 256)")
        out += [f"{key}[{i}]: {len(a)} characters (at most 256)" for i, a in enumerate(items) if len(a) > 256]
    uris = [("ProcessingInputs", i.get("S3Input", {}).get("S3Uri")) for i in request.get("ProcessingInputs", [])]
    uris += [("ProcessingOutputConfig", o.get("S3Output", {}).get("S3Uri"))
             for o in request.get("ProcessingOutputConfig", {}).get("Outputs", [])]
    for where, uri in uris:
        if uri is None:
            continue
        if len(uri) > 1024 or not _S3_URI.fullmatch(uri):
            out.append(f"{where} S3Uri of {len(uri)} characters is not an S3 URI of at most 1024")
    tags = request.get("Tags", [])
    if len(tags) > 50:
        out.append(f"{len(tags)} tags (at most 50)")
    for tag in tags:
        k, v = tag.get("Key", ""), tag.get("Value", "")
        if not (1 <= len(k) <= 128 and _tag_chars_ok(k)) or not (len(v) <= 256 and _tag_chars_ok(v)):
            out.append(f"tag {k!r}={v[:40]!r}... does not match the tag pattern or length")
    return out


# --- rules on the template -------------------------------------------------------------------------

#: IAM actions each integration needs, beyond the call itself. `{resource}` is the ARN the Task names.
#: Sources: https://docs.aws.amazon.com/step-functions/latest/dg/service-integration-iam-templates.html,
#: .../dynamo-iam.html, .../stepfunctions-iam.html (startExecution.sync:2 needs DescribeExecution,
#: StopExecution and the managed rule StepFunctionsGetEventsForStepFunctionsExecutionRule),
#: .../sagemaker-iam.html (createProcessingJob.sync: CreateProcessingJob, DescribeProcessingJob,
#: StopProcessingJob, ListTags, AddTags, iam:PassRole and the managed rule
#: StepFunctionsGetEventsForSageMakerProcessingJobsRule), .../iam-policies-eg-dist-map.html.
_EVENTS_RULE = "arn:aws:events:{region}:{account}:rule/{rule}"


@dataclass
class Grant:
    action: str
    resource: str | None  # None: decided at run time, only the action is checked
    why: str


#: aws-sdk integration service names whose IAM prefix differs
_IAM_PREFIX = {"sfn": "states"}


def _required_for_task(state: dict, ctx: "_Machine") -> Iterator[Grant]:
    resource = state["Resource"]
    params = ctx.resolve_payload(state.get("Parameters", {}))
    m = re.fullmatch(r"arn:aws:states:::([a-z0-9-]+):([A-Za-z]+)(\.sync(?::2)?|\.waitForTaskToken)?", resource)
    if m is None:
        m2 = re.fullmatch(r"arn:aws:states:::aws-sdk:([a-z0-9]+):([A-Za-z]+)", resource)
        if m2 is None:
            yield Grant("?", resource, f"unknown integration {resource}")
            return
        service, api = m2.groups()
        action = f"{_IAM_PREFIX.get(service, service)}:{api[0].upper()}{api[1:]}"
        if service == "s3" and params.get("Bucket") and params.get("Key"):
            yield Grant(action, f"arn:aws:s3:::{params['Bucket']}/{params['Key']}", resource)
        else:
            yield Grant(action, None, resource)
        return
    service, api, pattern = m.groups()
    action = f"{service}:{api[0].upper()}{api[1:]}"
    if service == "dynamodb":
        table = params.get("TableName", "*")
        yield Grant(action, f"arn:aws:dynamodb:{ctx.region}:{ctx.account}:table/{table}", resource)
    elif service == "states" and api == "startExecution":
        target = str(params.get("StateMachineArn", "*")).split("#")[0]
        yield Grant("states:StartExecution", target, resource)
        if pattern and pattern.startswith(".sync"):
            execution = target.replace(":stateMachine:", ":execution:") + ":x"
            yield Grant("states:DescribeExecution", execution, resource)
            yield Grant("states:StopExecution", execution, resource)
            rule = _EVENTS_RULE.format(region=ctx.region, account=ctx.account,
                                       rule="StepFunctionsGetEventsForStepFunctionsExecutionRule")
            for a in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
                yield Grant(a, rule, resource)
    elif service == "sagemaker" and api == "createProcessingJob":
        job = f"arn:aws:sagemaker:{ctx.region}:{ctx.account}:processing-job/{params.get('ProcessingJobName') or 'x'}"
        yield Grant("sagemaker:CreateProcessingJob", job, resource)
        if params.get("Tags"):
            yield Grant("sagemaker:AddTags", job, resource)
        if params.get("RoleArn"):
            yield Grant("iam:PassRole", params["RoleArn"], resource)
        if pattern == ".sync":
            for a in ("sagemaker:DescribeProcessingJob", "sagemaker:StopProcessingJob", "sagemaker:ListTags"):
                yield Grant(a, job, resource)
            rule = _EVENTS_RULE.format(region=ctx.region, account=ctx.account,
                                       rule="StepFunctionsGetEventsForSageMakerProcessingJobsRule")
            for a in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
                yield Grant(a, rule, resource)
    else:
        yield Grant(action, "*", resource)


def _required_for_map(state: dict, ctx: "_Machine") -> Iterator[Grant]:
    processor = state.get("ItemProcessor") or {}
    if processor.get("ProcessorConfig", {}).get("Mode") != "DISTRIBUTED":
        return
    own = ctx.arn
    yield Grant("states:StartExecution", own, "Distributed Map child executions")
    own_executions = own.replace(":stateMachine:", ":execution:") + "/x"
    yield Grant("states:DescribeExecution", own_executions, "Distributed Map child executions")
    yield Grant("states:StopExecution", own_executions, "Distributed Map child executions")
    reader = state.get("ItemReader")
    if reader:
        params = ctx.resolve_payload(reader.get("Parameters", {}))
        where = f"arn:aws:s3:::{params['Bucket']}/{params['Key']}" if params.get("Bucket") and params.get("Key") else None
        yield Grant("s3:GetObject", where, "ItemReader (a manifest named by the input: action only)")
    writer = state.get("ResultWriter")
    if writer:
        params = ctx.resolve_payload(writer.get("Parameters", {}))
        obj = f"arn:aws:s3:::{params.get('Bucket', '*')}/{params.get('Prefix', '')}/x"
        for a in ("s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"):
            yield Grant(a, obj, "ResultWriter")


#: What a state machine's Logging and Tracing settings need (the delivery APIs have no resource-level
#: permissions). Source: https://docs.aws.amazon.com/step-functions/latest/dg/cw-logs.html and
#: https://docs.aws.amazon.com/step-functions/latest/dg/concepts-xray-tracing.html
LOGGING_ACTIONS = ("logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
                   "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
                   "logs:DescribeResourcePolicies", "logs:DescribeLogGroups")
TRACING_ACTIONS = ("xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
                   "xray:GetSamplingTargets")


class _Machine:
    """One state machine of the template with its substitutions resolved."""

    def __init__(self, template, logical: str):
        self.template, self.logical = template, logical
        self.region, self.account = template.region, template.account
        self.subs = template.substitutions(logical)
        self.arn = template.arn(logical)
        self.definition = json.loads(template.definition(logical))
        #: every workflow variable's defining expression (for representative values)
        self.assigns: dict[str, str] = {}
        for _, _, state in states(self.definition):
            for block in [state.get("Assign", {})] + [r.get("Assign", {}) for r in state.get("Choices", [])]:
                self.assigns.update({k[:-2]: v for k, v in block.items() if k.endswith(".$")})

    def resolve_payload(self, payload: dict) -> dict:
        """Static parameter values, with dynamic ones (`.$`) replaced by a representative value
        (None when it comes from the input: decided at run time)."""
        out = {}
        for k, v in payload.items():
            if k.endswith(".$"):
                out[k[:-2]] = _representative(v, self.assigns)
            else:
                out[k] = v
        return out

    def statements(self) -> list[dict]:
        props = self.template.state_machines[self.logical]["Properties"]
        return [self.template.resolve(st) for policy in props.get("Policies", []) for st in policy["Statement"]]

    def required(self) -> list[Grant]:
        out: list[Grant] = []
        for _, _, state in states(self.definition):
            if state.get("Type") == "Task":
                out += _required_for_task(state, self)
            elif state.get("Type") == "Map":
                out += _required_for_map(state, self)
        props = self.template.state_machines[self.logical]["Properties"]
        if props.get("Logging"):
            out += [Grant(a, "*", "Logging") for a in LOGGING_ACTIONS]
        if props.get("Tracing", {}).get("Enabled"):
            out += [Grant(a, "*", "Tracing") for a in TRACING_ACTIONS]
        return out


def _representative(value: Any, assigns: dict[str, str], depth: int = 0) -> str | None:
    """A stand-in for a value computed at run time: Format fills its holes with 'x', a variable
    stands for what its Assign computes; a plain input path is None (unknown until run time)."""
    if not isinstance(value, str) or depth > 5:
        return None
    if intrinsics.is_intrinsic(value):
        try:
            return _eval_representative(intrinsics.parse(value), assigns, depth)
        except intrinsics.IntrinsicSyntaxError:
            return None
    name = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)$", value)
    if name and name.group(1) in assigns:
        return _representative(assigns[name.group(1)], assigns, depth + 1)
    return None


def _eval_representative(node, assigns: dict[str, str], depth: int) -> str:
    if isinstance(node, intrinsics.Literal):
        return str(node.value)
    if isinstance(node, intrinsics.Path):
        return _representative(node.path, assigns, depth + 1) or "x"
    if node.name == "States.Format":
        fmt, *args = node.args
        text = str(fmt.value) if isinstance(fmt, intrinsics.Literal) else "x"
        for a in args:
            text = text.replace("{}", _eval_representative(a, assigns, depth), 1)
        return text
    if node.name == "States.Hash":
        return "0" * 32
    return "x"


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _allows(statements: list[dict], action: str, resource: str, any_resource: bool = False) -> bool:
    for st in statements:
        if st.get("Effect") != "Allow":
            continue
        actions = [a.lower() for a in _as_list(st.get("Action", []))]
        if not any(fnmatch.fnmatchcase(action.lower(), a) for a in actions):
            continue
        if any_resource or any(fnmatch.fnmatchcase(resource, str(r)) for r in _as_list(st.get("Resource", []))):
            return True
    return False


def _rule_iam(template) -> Iterator[Finding]:
    """Every service action a state machine's Tasks (and its Map, logging and tracing) perform is
    allowed by its role's policy on that resource, and the role grants no action the machine never
    performs. Sources: the IAM pages cited on _required_for_task / _required_for_map."""
    for logical in template.state_machines:
        machine = _Machine(template, logical)
        statements = machine.statements()
        required = machine.required()
        for grant in required:
            if grant.action == "?":
                yield Finding("iam-unknown-integration", logical, grant.why)
            elif not _allows(statements, grant.action, grant.resource or "*", any_resource=grant.resource is None):
                yield Finding("iam-missing", logical, f"{grant.action} on {grant.resource} ({grant.why})")
        needed = {g.action.lower() for g in required}
        for st in statements:
            for action in _as_list(st.get("Action", [])):
                if action.lower() not in needed:
                    yield Finding("iam-unused", f"{logical}/{st.get('Sid')}", f"{action} is never used by the machine")


def _rule_alarm_topics(template) -> Iterator[Finding]:
    """Alarm actions go to a topic CloudWatch can publish to: not one encrypted with the AWS-managed
    key alias/aws/sns (its key policy cannot be changed to let cloudwatch.amazonaws.com use it), and a
    customer-managed key's policy must allow cloudwatch.amazonaws.com kms:Decrypt and
    kms:GenerateDataKey*.

    Source: https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services"""
    resources = template.doc["Resources"]
    for logical, res in resources.items():
        if res["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = res.get("Properties", {})
        for action in props.get("AlarmActions", []) + props.get("OKActions", []):
            topic = action.get("Ref") if isinstance(action, dict) else None
            if topic not in resources or resources[topic]["Type"] != "AWS::SNS::Topic":
                continue
            key = resources[topic].get("Properties", {}).get("KmsMasterKeyId")
            if key is None:
                continue
            if key == "alias/aws/sns":
                yield Finding("alarm-topic", f"{logical} -> {topic}", "encrypted with alias/aws/sns: alarms cannot publish")
                continue
            key_logical = key.get("Ref") or (key.get("Fn::GetAtt") or [None])[0] if isinstance(key, dict) else None
            if key_logical not in resources:
                yield Finding("alarm-topic", f"{logical} -> {topic}", f"cannot read the policy of key {key!r}")
                continue
            policy = resources[key_logical].get("Properties", {}).get("KeyPolicy", {})
            if not _service_may_use_key(policy, "cloudwatch.amazonaws.com"):
                yield Finding("alarm-topic", f"{logical} -> {topic}",
                              f"key {key_logical} does not let cloudwatch.amazonaws.com Decrypt and GenerateDataKey*")


def _service_may_use_key(policy: dict, service: str) -> bool:
    for st in policy.get("Statement", []):
        principal = st.get("Principal", {})
        services = _as_list(principal.get("Service", [])) if isinstance(principal, dict) else []
        actions = set(_as_list(st.get("Action", [])))
        if st.get("Effect") == "Allow" and service in services and "kms:Decrypt" in actions and (
                "kms:GenerateDataKey*" in actions or "kms:GenerateDataKey" in actions):
            return True
    return False


_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")


def _rule_state_machine_names(template) -> Iterator[Finding]:
    """State machine names are 1-80 characters (we keep to [A-Za-z0-9_-], which CloudWatch logging
    also needs), for every stack name up to MAX_STACK_NAME characters, and unique per stack (names are
    unique per account and region).

    Source: https://docs.aws.amazon.com/step-functions/latest/apireference/API_CreateStateMachine.html
    (name: Length 1-80; no whitespace, brackets, wildcards or special characters)."""
    long_stack, other = template.with_stack_name("s" * MAX_STACK_NAME), template.with_stack_name("other")
    for logical in long_stack.state_machines:
        name = long_stack.physical_name(logical)
        if not _NAME.fullmatch(name):
            yield Finding("state-machine-name", logical, f"{name!r} ({len(name)} characters) is not a valid name")
        if other.physical_name(logical) == template.physical_name(logical):
            yield Finding("state-machine-name", logical, f"{name!r} does not depend on the stack name: two stacks "
                          "in one account and region would collide (derive it from AWS::StackName)")


_UNSAFE_IN_LITERAL = ("'", "{", "}", "\\")


def _rule_substitutions_in_literals(template) -> Iterator[Finding]:
    """A template parameter substituted inside an intrinsic string literal cannot hold ' { } or \\
    (they end the literal or are escapes; AWS requires them escaped as \\' \\{ \\} \\\\): its
    AllowedPattern must refuse them.

    Source: https://docs.aws.amazon.com/step-functions/latest/dg/intrinsic-functions.html
    ("Reserved characters in intrinsic functions")."""
    params = template.doc.get("Parameters", {})
    for logical, res in template.state_machines.items():
        text = template.definition_path(logical).read_text()
        subs = res["Properties"].get("DefinitionSubstitutions", {})
        definition = json.loads(text)
        for path, _, state in states(definition):
            for field_path, expr in _intrinsic_fields(state):
                for _, literal in intrinsics.literals(intrinsics.parse(expr)):
                    for name in re.findall(r"\$\{([A-Za-z0-9]+)\}", literal):
                        source = subs.get(name)
                        param = source.get("Ref") if isinstance(source, dict) else None
                        if param not in params:
                            continue  # resource names and ARNs hold none of those characters
                        pattern = params[param].get("AllowedPattern")
                        if params[param].get("Type") == "Number":
                            continue
                        if not pattern or any(re.fullmatch(pattern, f"a{c}b") for c in _UNSAFE_IN_LITERAL):
                            yield Finding("substitution-in-literal", f"{logical}: {path}: {field_path}",
                                          f"parameter {param} may hold ' {{ }} or \\ but lands in a string literal")


def check_template(template) -> list[Finding]:
    """Every template rule (template: mlbatch.template.Template with example parameters)."""
    out: list[Finding] = []
    for rule in (_rule_iam, _rule_alarm_topics, _rule_state_machine_names, _rule_substitutions_in_literals):
        out += rule(template)
    return out

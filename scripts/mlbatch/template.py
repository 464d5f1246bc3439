"""template.yaml as the harness sees it: resources, key schemas and DefinitionSubstitutions.

Read with cfn-lint's decoder (it understands !Ref, !Sub, !GetAtt); resolved for
the small subset of intrinsics the template uses, so the local resources are
built from the same declarations that `sam deploy` deploys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from .settings import REGION, ROOT

__all__ = ["Template", "load", "ACCOUNT"]

ACCOUNT = "123456789012"
_NO_VALUE = object()  # Ref AWS::NoValue: the property is left out
#: ${Name} or ${Resource.Attribute}; ${!Literal} stands for the text ${Literal} (Fn::Sub's escape)
_SUB = re.compile(r"\$\{(![^}]*|[A-Za-z0-9:._]+)\}")
#: ARN of a resource the harness creates, by type
_ARNS = {
    "AWS::DynamoDB::Table": "arn:aws:dynamodb:{region}:{account}:table/{name}",
    "AWS::Serverless::StateMachine": "arn:aws:states:{region}:{account}:stateMachine:{name}",
    "AWS::S3::Bucket": "arn:aws:s3:::{name}",
    "AWS::IAM::Role": "arn:aws:iam::{account}:role/{name}",
    "AWS::SQS::Queue": "arn:aws:sqs:{region}:{account}:{name}",
    "AWS::Logs::LogGroup": "arn:aws:logs:{region}:{account}:log-group:{name}:*",
    "AWS::CloudWatch::Alarm": "arn:aws:cloudwatch:{region}:{account}:alarm:{name}",
}


@dataclass
class Template:
    path: Path
    doc: dict[str, Any]
    parameters: dict[str, str] = field(default_factory=dict)
    region: str = REGION
    account: str = ACCOUNT
    stack_name: str = "mlbatch"

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        """The resources of a type that this deployment creates (their Condition holds)."""
        return {k: v for k, v in self.doc["Resources"].items()
                if v["Type"] == type_ and ("Condition" not in v or self.condition(v["Condition"]))}

    def condition(self, name: str) -> bool:
        """A named condition of the template, for these parameters."""
        return self._holds(self.doc.get("Conditions", {})[name])

    def _holds(self, expr: Any) -> bool:
        (fn, arg), = expr.items()
        if fn == "Fn::Equals":
            return self.resolve(arg[0]) == self.resolve(arg[1])
        if fn == "Fn::Not":
            return not self._holds(arg[0])
        if fn == "Fn::And":
            return all(self._holds(a) for a in arg)
        if fn == "Fn::Or":
            return any(self._holds(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        raise ValueError(f"condition function {fn} is not supported by the harness")

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        return self.resources("AWS::DynamoDB::Table")

    @property
    def state_machines(self) -> dict[str, dict[str, Any]]:
        return self.resources("AWS::Serverless::StateMachine")

    # physical names: the logical id, as a stack would prefix it, minus the random suffix
    def physical_name(self, logical: str) -> str:
        props = self.doc["Resources"][logical].get("Properties", {})
        explicit = (props.get("TableName") or props.get("Name") or props.get("BucketName")
                    or props.get("DashboardName"))
        name = self.resolve(explicit) if explicit else f"{self.stack_name}-{logical}"
        return name.lower() if self.doc["Resources"][logical]["Type"] == "AWS::S3::Bucket" else name

    def arn(self, logical: str) -> str:
        kind = self.doc["Resources"][logical]["Type"]
        if kind not in _ARNS:
            raise KeyError(f"no ARN rule for {kind} ({logical})")
        return _ARNS[kind].format(region=self.region, account=self.account, name=self.physical_name(logical))

    def _ref(self, name: str) -> str:
        pseudo = {"AWS::Partition": "aws", "AWS::Region": self.region, "AWS::AccountId": self.account,
                  "AWS::StackName": self.stack_name}
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.doc.get("Parameters", {}):
            default = self.doc["Parameters"][name].get("Default")
            if default is None:
                raise KeyError(f"parameter {name} has no default and no value was given")
            return str(default)
        kind = self.doc["Resources"][name]["Type"]
        return self.arn(name) if kind == "AWS::Serverless::StateMachine" else self.physical_name(name)

    def with_stack_name(self, stack_name: str) -> "Template":
        """The same template as deployed under another stack name."""
        return Template(self.path, self.doc, dict(self.parameters), self.region, self.account, stack_name)

    def event_rules(self, logical: str) -> list[dict[str, Any]]:
        """The EventBridge patterns that start a state machine (its SAM `EventBridgeRule` events)."""
        events = self.state_machines[logical]["Properties"].get("Events", {})
        return [self.resolve(e["Properties"]["Pattern"]) for e in events.values() if e["Type"] == "EventBridgeRule"]

    def _get_att(self, logical: str, attr: str) -> str:
        if attr == "Arn":
            return self.arn(logical)
        if attr in ("Name", "QueueName"):
            return self.physical_name(logical)
        raise KeyError(f"GetAtt {logical}.{attr} is not supported by the harness")

    def resolve(self, value: Any) -> Any:
        """Resolve Ref / Sub / GetAtt in a template value."""
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return [r for r in (self.resolve(v) for v in value) if r is not _NO_VALUE]
        if isinstance(value, dict) and len(value) == 1:
            (fn, arg), = value.items()
            if fn == "Ref" and arg == "AWS::NoValue":
                return _NO_VALUE
            if fn == "Ref":
                return self._ref(arg)
            if fn == "Fn::If":
                cond, if_true, if_false = arg
                return self.resolve(if_true if self.condition(cond) else if_false)
            if fn == "Fn::GetAtt":
                logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self._get_att(logical, attr)
            if fn == "Fn::Sub":
                text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])

                def sub(m: re.Match) -> str:
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    if name in local:
                        return self.resolve(local[name])
                    if "." in name and not name.startswith("AWS::"):
                        return self._get_att(*name.split(".", 1))
                    return self._ref(name)
                return _SUB.sub(sub, text)
        if isinstance(value, dict):
            return {k: r for k, r in ((k, self.resolve(v)) for k, v in value.items()) if r is not _NO_VALUE}
        if isinstance(value, (int, float, bool)):
            return value
        raise ValueError(f"cannot resolve {value!r}")

    def substitutions(self, logical: str) -> dict[str, str]:
        props = self.state_machines[logical]["Properties"]
        return {k: self.resolve(v) for k, v in props.get("DefinitionSubstitutions", {}).items()}

    def definition_path(self, logical: str) -> Path:
        return self.path.parent / self.state_machines[logical]["Properties"]["DefinitionUri"]

    def definition(self, logical: str, overrides: dict[str, str] | None = None) -> str:
        """The ASL with its ${Name} placeholders substituted, as CloudFormation does."""
        subs = {**self.substitutions(logical), **(overrides or {})}
        text = self.definition_path(logical).read_text()
        return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: subs[m.group(1)], text)


def load(path: Path | None = None, parameters: dict[str, str] | None = None) -> Template:
    path = path or ROOT / "template.yaml"
    doc, matches = decode(str(path))
    if doc is None:
        raise ValueError(f"{path} does not parse: {matches}")
    return Template(path=path, doc=doc, parameters=dict(parameters or {}))

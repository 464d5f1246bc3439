"""Small, named fixes for defects of moto 5.2.5's Step Functions engine.

One fix per defect (docs/backends.md, "Engine fixes", lists them). Each can be applied and
reverted, so its test can show the defect without it and the behaviour with it;
when a newer moto no longer has the defect, that test says so.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import botocore.session
import moto

__all__ = ["Fix", "FIXES", "apply_all", "suspended", "MOTO_VERSION", "MockConfigError"]

#: The moto version these fixes were written for (pinned in pyproject.toml).
MOTO_VERSION = "5.2.5"


@dataclass
class Fix:
    """A patch of named attributes, applied and reverted as a unit."""

    name: str
    defect: str
    _patch: Callable[[], list[tuple[Any, str, Any]]]
    _saved: list[tuple[Any, str, Any]] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return bool(self._saved)

    def apply(self) -> None:
        if self.applied:
            return
        for owner, attr, new in self._patch():
            self._saved.append((owner, attr, owner.__dict__.get(attr)))
            setattr(owner, attr, new)

    def revert(self) -> None:
        for owner, attr, old in reversed(self._saved):
            setattr(owner, attr, old)
        self._saved.clear()


# --- service request/response normalisation -------------------------------------------

@functools.cache
def _service_model(service: str):
    return botocore.session.get_session().get_service_model(service)


def _operation(task, boto_service_name: str | None, action: str | None):
    """The botocore operation model of a Task's API action (startExecution -> StartExecution)."""
    service = _service_model(task._get_boto_service_name(boto_service_name))
    wanted = (action or task.resource.api_action).replace("_", "").lower()
    for op_name in service.operation_names:
        if op_name.lower() == wanted:
            return service.operation_model(op_name)
    return None


def _patch_normalisation():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service import (
        StateTaskService,
    )

    def _normalise_parameters(self, parameters, boto_service_name=None, service_action_name=None):
        # ASL writes request members in PascalCase (StateMachineArn); boto's model may
        # spell them otherwise (stateMachineArn). Map them through the service model.
        op = _operation(self, boto_service_name, service_action_name)
        if op is not None and op.input_shape is not None:
            self._to_boto_request(parameters, op.input_shape)

    def _normalise_response(self, response, boto_service_name=None, service_action_name=None):
        # ...and responses back to the PascalCase the ASL reads (executionArn -> ExecutionArn).
        op = _operation(self, boto_service_name, service_action_name)
        if op is not None and op.output_shape is not None:
            self._from_boto_response(response, op.output_shape)

    return [(StateTaskService, "_normalise_parameters", _normalise_parameters),
            (StateTaskService, "_normalise_response", _normalise_response)]


# --- nameless StartExecution -------------------------------------------------------------

def _patch_execution_name():
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution

    def start_execution(self, state_machine_arn, name=None, execution_input=None, trace_header=None):
        # AWS names a nameless execution with a UUID; the engine used the literal "None".
        return original(self, state_machine_arn, name or str(uuid.uuid4()), execution_input, trace_header)

    return [(StepFunctionsParserBackend, "start_execution", start_execution)]


# --- atomic conditional writes -------------------------------------------------------------

_WRITE_LOCK = threading.RLock()


def _patch_atomic_writes():
    from moto.dynamodb.models import DynamoDBBackend

    def serialised(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            # DynamoDB evaluates a condition (or an if_not_exists) and writes atomically; the
            # engine read and wrote without a lock, so two racing executions could both win.
            with _WRITE_LOCK:
                return method(*args, **kwargs)
        return wrapper

    return [(DynamoDBBackend, m, serialised(getattr(DynamoDBBackend, m)))
            for m in ("put_item", "update_item", "delete_item", "transact_write_items")]


# --- definite paths through an array index ------------------------------------------

_DEFINITE_PATH = re.compile(r"\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\['[^'\\]*'\])*")


def _patch_definite_paths():
    from jsonpath_ng.ext import parse

    import moto.stepfunctions.parser.asl.parse.asl_parser  # noqa: F401 (loads every component)
    import moto.stepfunctions.parser.models  # noqa: F401
    from moto.stepfunctions.parser.asl.utils import json_path

    original = json_path.extract_json
    compiled = functools.lru_cache(maxsize=4096)(parse)

    def extract_json(path, data):
        # A definite path (fields and literal indexes only) names one node, and AWS
        # returns that node: `$[0].body` is the body string. The engine wrapped any
        # value reached through an index in a list, so IsString on it was false.
        if _DEFINITE_PATH.fullmatch(path):
            matches = compiled(path).find(data)
            if len(matches) == 1:
                return matches[0].value
        return original(path, data)

    # rebind the name in every engine module that imported it
    return [(module, "extract_json", extract_json)
            for name, module in list(sys.modules.items())
            if name.startswith("moto.stepfunctions.parser") and module is not None
            and module.__dict__.get("extract_json") is original]


# --- a definition parsed once, not per execution -----------------------------------------

def _patch_program_cache():
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    @functools.lru_cache(maxsize=64)
    def program(definition: str):
        return AmazonStateLanguageParser.parse(definition)[0]

    def _get_evaluation_entrypoint(self):
        # The parsed program is an immutable tree (executions keep their state in their
        # Environment), so one parse serves every execution of a definition.
        return program(self._evaluation_details.state_machine_details.definition)

    return [(ExecutionWorker, "_get_evaluation_entrypoint", _get_evaluation_entrypoint)]


# --- Step Functions Local MockConfigFile test cases ---------------------------------------

class MockConfigError(ValueError):
    """The mock configuration file or the `<stateMachineArn>#<TestCase>` it is asked for is wrong."""


_PENDING_CASE = threading.local()


def load_test_case(state_machine_name: str, test_case: str, path: str | None = None):
    """A MockConfigFile.json test case (Step Functions Local format) as the engine's MockTestCase."""
    from moto.stepfunctions.parser.mocking.mock_config import (
        MockedResponseReturn,
        MockedResponseThrow,
        MockTestCase,
        StateMockedResponses,
    )
    path = path or os.environ.get("SFN_MOCK_CONFIG")
    if not path:
        raise MockConfigError(f"test case {test_case!r} asked for, but SFN_MOCK_CONFIG names no mock file")
    config = json.loads(open(path).read())
    cases = config.get("StateMachines", {}).get(state_machine_name, {}).get("TestCases", {})
    if test_case not in cases:
        raise MockConfigError(f"{path}: no test case {test_case!r} for state machine {state_machine_name!r}")
    states = []
    for state_name, response_name in cases[test_case].items():
        ranges = config.get("MockedResponses", {}).get(response_name)
        if not ranges:
            raise MockConfigError(f"{path}: test case {test_case!r} names unknown response {response_name!r}")
        responses = []
        for key, response in ranges.items():
            first, _, last = key.partition("-")
            lo, hi = int(first), int(last or first)
            if "Return" in response:
                responses.append(MockedResponseReturn(lo, hi, response["Return"]))
            elif "Throw" in response:
                responses.append(MockedResponseThrow(lo, hi, response["Throw"]["Error"],
                                                     response["Throw"].get("Cause", "")))
            else:
                raise MockConfigError(f"{path}: response {response_name!r}/{key} has neither Return nor Throw")
        states.append(StateMockedResponses(state_name, response_name, responses))
    return MockTestCase(state_machine_name, test_case, states)


def _patch_mock_config():
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (
        StateTaskServiceCallback,
    )
    from moto.stepfunctions.parser.backend.execution import Execution
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    start_execution = StepFunctionsParserBackend.start_execution
    worker = Execution._get_start_execution_worker
    eval_body = StateTaskServiceCallback._eval_body

    def start_execution_with_case(self, state_machine_arn, name=None, execution_input=None, trace_header=None):
        # Step Functions Local: StartExecution on `<stateMachineArn>#<TestCase>` runs the
        # machine with that test case's mocked responses (the engine stubbed the loader).
        arn, _, case = state_machine_arn.partition("#")
        _PENDING_CASE.value = load_test_case(arn.rsplit(":", 1)[-1], case) if case else None
        try:
            return start_execution(self, arn, name, execution_input, trace_header)
        finally:
            _PENDING_CASE.value = None

    def worker_with_case(self):
        w = worker(self)
        w._mock_test_case = getattr(_PENDING_CASE, "value", None)
        return w

    def eval_body_mockable(self, env):
        # A mocked Task never runs its integration pattern, so a .sync the engine cannot
        # run for real (sagemaker) must not be refused before the mock answers.
        if env.is_mocked_mode() and self.resource.condition not in self._supported_integration_patterns:
            return super(StateTaskServiceCallback, self)._eval_body(env)
        return eval_body(self, env)

    return [(StepFunctionsParserBackend, "start_execution", start_execution_with_case),
            (Execution, "_get_start_execution_worker", worker_with_case),
            (StateTaskServiceCallback, "_eval_body", eval_body_mockable)]


#: the integrations whose _from_error rebuilds every exception that is not a botocore ClientError
_SERVICES_REBUILDING_ERRORS = ("dynamodb", "sns", "sqs", "events", "batch", "glue", "api_gateway")


def _patch_mock_throw_names():
    import importlib

    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import FailureEventException

    patches = []
    for service in _SERVICES_REBUILDING_ERRORS:
        module = importlib.import_module(
            f"moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_{service}")
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__ and "_from_error" in vars(cls):
                def from_error(self, env, ex, _original=vars(cls)["_from_error"]):
                    # Step Functions Local: a mocked Throw fails the Task with exactly its Error and
                    # Cause. These integrations rebuilt any non-ClientError, the mock's failure included,
                    # as <Service>.Amazon...Exception with an empty cause (DynamoDB.AmazonDynamoDBException).
                    if isinstance(ex, FailureEventException):
                        return ex.failure_event
                    return _original(self, env, ex)
                patches.append((cls, "_from_error", from_error))
    return patches


def _patch_states_error_names():
    from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import iteration_worker
    from moto.stepfunctions.parser.asl.component.state.exec.state_parallel import branches_decl
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import mock_eval_utils

    def error_name(error_name=None):
        # An error AWS itself raises (States.TaskFailed of a failed .sync job, States.Timeout)
        # keeps its States.* name when re-raised; the engine forced it through the custom-name
        # constructor, which refuses that prefix, and crashed with States.Runtime instead.
        if error_name and error_name.startswith("States."):
            try:
                return StatesErrorName(typ=StatesErrorNameType.from_name(error_name))
            except ValueError:
                pass
        return CustomErrorName(error_name)

    return [(module, "CustomErrorName", error_name)
            for module in (mock_eval_utils, branches_decl, iteration_worker)]


# --- ItemReader InputType JSONL -------------------------------------------------------------

def _patch_jsonl_reader():
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader import item_reader_decl
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader.eval.resource_output_transformer.transformer_json import (  # noqa: E501
        ResourceOutputTransformerJson,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.item_reader.reader_config.input_type import (
        InputType,
    )

    init, factory = InputType.__init__, item_reader_decl.resource_output_transformer_for

    class JsonLines(ResourceOutputTransformerJson):
        # AWS ItemReader InputType "JSONL": one JSON value per line, blank lines ignored.
        def _eval_body(self, env):
            reader_config = env.stack.pop()
            text = env.stack.pop()
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
            env.stack.append(items[:reader_config["MaxItemsValue"]])

    def input_type_init(self, input_type: str):
        if input_type == "JSONL":
            self.input_type_value = "JSONL"
        else:
            init(self, input_type)

    def transformer_for(input_type):
        return JsonLines() if input_type.input_type_value == "JSONL" else factory(input_type)

    return [(InputType, "__init__", input_type_init),
            (item_reader_decl, "resource_output_transformer_for", transformer_for)]


# --- workflow variables read in JSONPath states ---------------------------------------------

_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)(.*)", re.DOTALL)


def _patch_jsonpath_variables():
    from moto.stepfunctions.parser.asl.component.common.query_language import QueryLanguageMode
    from moto.stepfunctions.parser.asl.component.common.string.string_expression import StringVariableSample
    from moto.stepfunctions.parser.asl.utils import json_path

    original = StringVariableSample._eval_body

    def _eval_body(self, env):
        # AWS: in JSONPath states `$name` reads the workflow variable `name` and `$name.a.b`
        # a path inside it. The engine evaluated every variable reference with JSONata,
        # whose evaluator it ships stubbed out (None), so any read failed with a TypeError.
        if self.query_language_mode != QueryLanguageMode.JSONPath:
            return original(self, env)
        match = _VARIABLE.fullmatch(self.expression)
        if match is None:
            return original(self, env)
        name, rest = match.groups()
        value = env.variable_store.get(name)
        env.stack.append(json_path.extract_json("$" + rest, value) if rest else value)

    return [(StringVariableSample, "_eval_body", _eval_body)]


# --- an integer ToleratedFailurePercentage ------------------------------------------------------

_INT_PERCENTAGE = re.compile(r'("ToleratedFailurePercentage"\s*:\s*)(\d+)(?=\s*[,}])')


def _patch_tolerance_integers():
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    original = AmazonStateLanguageParser.parse

    def parse(definition: str):
        # AWS accepts "ToleratedFailurePercentage": 100 (an integer; recorded, LocalStack's
        # test_map_state_tolerated_failure_values); the engine's grammar takes only decimals.
        return original(_INT_PERCENTAGE.sub(r"\g<1>\g<2>.0", definition))

    return [(AmazonStateLanguageParser, "parse", staticmethod(parse))]


FIXES: dict[str, Fix] = {f.name: f for f in [
    Fix("service_normalisation",
        "states:startExecution fails with States.Runtime 'StateMachineArn': request/response "
        "normalisation through the service model is stubbed out.", _patch_normalisation),
    Fix("execution_name_default",
        "StartExecution without a name gets the literal name 'None', so a second one collides.",
        _patch_execution_name),
    Fix("atomic_conditional_writes",
        "DynamoDB conditional writes check then write without a lock: concurrent lock "
        "acquisitions can both succeed, and two if_not_exists writes (the batch binding) can each "
        "read back their own value.", _patch_atomic_writes),
    Fix("definite_index_paths",
        "A definite JSONPath through an index ($[0].body) yields a one-element list, so Choice "
        "rules such as IsString on it are false where AWS reads the value.", _patch_definite_paths),
    Fix("program_cache",
        "Performance: every execution re-parses its definition with ANTLR (~0.4 s for the "
        "intake), dwarfing the run itself.", _patch_program_cache),
    Fix("mock_config_loader",
        "Step Functions Local test cases (`<stateMachineArn>#<TestCase>`, SFN_MOCK_CONFIG) are "
        "ignored: the loader is stubbed, executions get no test case, and a mocked .sync of a "
        "service the engine cannot run (sagemaker) is refused.", _patch_mock_config),
    Fix("mock_throw_names",
        "A MockConfigFile Throw in a DynamoDB Task (or SNS, SQS, EventBridge, Batch, Glue, API Gateway) "
        "fails it as DynamoDB.AmazonDynamoDBException with an empty cause, not the mocked Error and Cause: "
        "those integrations rebuild every error that is not a botocore ClientError.", _patch_mock_throw_names),
    Fix("states_error_names",
        "A States.* error (States.TaskFailed of a failed job) thrown by a mock, or leaving a "
        "Parallel branch or Map iteration, crashes the execution with States.Runtime: the engine "
        "rebuilds it as a custom error name, which may not start with 'States.'.",
        _patch_states_error_names),
    Fix("jsonl_item_reader",
        "ItemReader InputType JSONL (JSON Lines manifests) is unknown: CreateStateMachine fails "
        "with \"'JSONL' is not a valid InputTypeValue\".", _patch_jsonl_reader),
    Fix("jsonpath_variables",
        "Workflow variables ($name, $name.path) cannot be read in JSONPath states: the engine "
        "evaluates every variable reference with JSONata, whose evaluator it ships stubbed out "
        "(TypeError 'NoneType' object is not callable).", _patch_jsonpath_variables),
    Fix("tolerance_integers",
        "A Distributed Map's integer ToleratedFailurePercentage (100) is a syntax error: the grammar "
        "takes only decimals (100.0), where AWS accepts both.", _patch_tolerance_integers),
]}


@contextlib.contextmanager
def suspended(name: str):
    """Run without one fix. Fixes can wrap the same method, so the later ones come off and go
    back on around it, leaving every other fix in force."""
    order = list(FIXES)
    later = [FIXES[n] for n in order[order.index(name):] if FIXES[n].applied]
    for fix in reversed(later):
        fix.revert()
    for fix in later[1:]:
        fix.apply()
    try:
        yield
    finally:
        for fix in reversed(later[1:]):
            fix.revert()
        for fix in later:
            fix.apply()


def apply_all() -> None:
    """Apply every fix (idempotent); refuse a moto the fixes were not written for."""
    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"engine fixes are written for moto {MOTO_VERSION}, found {moto.__version__}")
    for fix in FIXES.values():
        fix.apply()

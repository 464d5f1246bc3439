"""User errors in one line: SDK, service and file errors turned into messages naming the
problem and the fix (the CLI prints them and exits 1; a traceback is for bugs only)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from .settings import ENDPOINT_ENV

__all__ = ["Failure", "explain", "where", "about_table", "is_error_page", "TABLES"]

#: what the CLI calls each table: (its key, the variable naming it, the stack output)
TABLES = {
    "lock": ("lock_key", "MLBATCH_LOCK_TABLE", "LockTableName"),
    "project-defaults": ("project_name", "MLBATCH_DEFAULTS_TABLE", "ProjectDefaultsTableName"),
    "backfill runs": ("run_id, entry", "MLBATCH_RUNS_TABLE", "BackfillRunsTableName"),
}
_LOCAL_HINT = 'for the local stack: eval "$(mlbatch local status --shell)"'


#: what only the `engine` extra installs (render, run, bench, local)
_ENGINE_MODULES = {"moto", "jinja2", "cfnlint"}


class Failure(Exception):
    """A command cannot go on; the message names the problem and the fix (exit 1)."""


def where() -> str:
    """The endpoint the SDK talks to, as a user would name it."""
    if os.environ.get(ENDPOINT_ENV):
        return f"{ENDPOINT_ENV}={os.environ[ENDPOINT_ENV]}"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return f"AWS ({region})" if region else "AWS"


def is_error_page(exc: ClientError) -> bool:
    """Did the endpoint answer with an (HTML) error page or nothing, instead of an AWS error?
    (What an endpoint that lacks the operation does.)"""
    message = (exc.response.get("Error", {}).get("Message") or "").strip()
    return not message or message.startswith("<")


def _client_error(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", "?"), (error.get("Message") or "").strip()
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if is_error_page(exc):
        message = f"HTTP {status}: the endpoint answered with an error page instead of an AWS error"
    hint = {
        "UnrecognizedClientException": "the credentials are not valid here: check AWS_PROFILE / AWS_ACCESS_KEY_ID",
        "InvalidSignatureException": "the credentials are not valid here: check AWS_SECRET_ACCESS_KEY",
        "ExpiredTokenException": "the session expired: log in again (aws sso login, or new keys)",
        "AccessDeniedException": "the identity lacks this permission: use a role allowed to call it",
        "AccessDenied": "the identity lacks this permission: use a role allowed to call it",
    }.get(code, f"at {where()}")
    from .clients import throttle_hint
    return f"{exc.operation_name} failed: {code}: {message} ({hint}){throttle_hint(exc)}"


def explain(exc: BaseException) -> str | None:
    """One line for an error a user can fix, or None (anything else is a bug: let it show)."""
    if isinstance(exc, Failure):
        return str(exc)
    if isinstance(exc, NoRegionError):
        return f"no AWS region configured: set AWS_DEFAULT_REGION (e.g. us-east-1) or a profile's region; {_LOCAL_HINT}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
                f"{_LOCAL_HINT}")
    if isinstance(exc, ProfileNotFound):
        return f"{exc}: check AWS_PROFILE and ~/.aws/config"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        url = exc.kwargs.get("endpoint_url", "the endpoint")
        if os.environ.get(ENDPOINT_ENV):
            return (f"cannot reach {url} ({ENDPOINT_ENV}={os.environ[ENDPOINT_ENV]}): is the local stack "
                    "running? `mlbatch local status` tells, `mlbatch local up` starts it; unset "
                    f"{ENDPOINT_ENV} to use AWS")
        return f"cannot reach {url}: check the network and the region (AWS_DEFAULT_REGION)"
    if isinstance(exc, ClientError):
        return _client_error(exc)
    if isinstance(exc, ParamValidationError):
        return f"invalid request: {exc}"
    if isinstance(exc, BotoCoreError):
        return f"AWS SDK: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in _ENGINE_MODULES:
        return (f"this command needs the embedded engine and renderer ({exc.name} is not installed): "
                "pip install 'mlbatch[engine]' (the extractor image installs only the extractor)")
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}): pass a JSON file"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror or exc}"
    return None


@contextlib.contextmanager
def about_table(table: str, kind: str, ddb=None) -> Iterator[None]:
    """Name the table, and what to do, when a DynamoDB call on it fails for a reason the user
    can fix: no such table, or a table of another kind (its key is not `kind`'s)."""
    key, var, output = TABLES[kind]
    fix = f"name the {kind} table with --table or {var} (stack output {output})"
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            raise Failure(f"no table {table!r} at {where()}: {fix}") from None
        if code == "ValidationException" and ("key" in message.lower() and ("schema" in message.lower()
                                                                          or "missing" in message.lower())):
            raise Failure(f"table {table!r} is not a {kind} table ({_key_of(table, ddb)}; a {kind} table's key "
                          f"is {key}): {fix}") from None
        raise


def _key_of(table: str, ddb) -> str:
    if ddb is None:
        return "its key differs"
    try:
        schema = ddb.describe_table(TableName=table)["Table"]["KeySchema"]
    except (ClientError, BotoCoreError):
        return "its key differs"
    return "its key is " + ", ".join(k["AttributeName"] for k in schema)

"""Every AWS client an `mlbatch` command makes, with one retry policy fit for throttling.

botocore's own default is standard mode with 3 attempts (4 for DynamoDB): an audit of a
throttled ledger gives up when one call is throttled 4 times in a row. The commands' clients get
:data:`DEFAULT_MAX_ATTEMPTS` attempts in :data:`DEFAULT_RETRY_MODE` mode instead, unless the
user chose: the CLI's `--aws-max-attempts` / `--aws-retry-mode` (:func:`configure`), else
AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, else `max_attempts` / `retry_mode` in the profile.

Standard and adaptive mode also spend a per-client retry quota (500 tokens, 5 per throttled
retry, paid back only in part): under sustained throttling it runs out and every later throttle
fails at its first attempt, whatever the attempt budget (measured: 50 % of GetItem calls
throttled, 10 attempts, the quota was gone after ~250 calls). For throttling, and only for it,
mlbatch keeps the attempt budget: :class:`_ThrottleBudget` retries a throttled call botocore
would give up on for lack of quota, with the same backoff, until the budget is spent.
See docs/cli.md, "Retries".
"""
from __future__ import annotations

import os
import random

import boto3
from botocore.config import Config

from .failures import Failure

__all__ = ["DEFAULT_RETRY_MODE", "DEFAULT_MAX_ATTEMPTS", "RETRY_MODES", "THROTTLING_CODES", "client", "configure",
           "retry_settings", "throttled", "throttle_hint"]

#: The retry mode of every command's clients unless chosen otherwise: AWS's recommended default.
DEFAULT_RETRY_MODE = "standard"
#: Attempts per call (the first one included) unless chosen otherwise. A throttled call waits
#: rand(0, 1) x min(2^(i-1), 20) s before attempt i+1: 15 attempts wait at most 211 s in all. With
#: half of all calls throttled at random, a call fails once in 2^15 (32,768); with 10 attempts once
#: in 1,024, which an audit of 35,000 folders (351 ledger reads) would hit 3 times in 10.
DEFAULT_MAX_ATTEMPTS = 15
RETRY_MODES = ("standard", "adaptive", "legacy")

#: Error codes botocore's standard mode treats as throttling (its own list when it has one).
try:
    from botocore.retries.standard import ThrottledRetryableChecker as _Checker
    THROTTLING_CODES = frozenset(_Checker._THROTTLED_ERROR_CODES)
except (ImportError, AttributeError):  # pragma: no cover - another botocore
    THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "ThrottledException",
                                  "RequestThrottledException", "TooManyRequestsException",
                                  "ProvisionedThroughputExceededException", "TransactionInProgressException",
                                  "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException",
                                  "RequestThrottled", "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException"})

_chosen: dict[str, object] = {"max_attempts": None, "mode": None}


def configure(max_attempts: int | None = None, mode: str | None = None) -> None:
    """The CLI's choice for this process (None: not chosen); every call resets both."""
    _chosen.update(max_attempts=max_attempts, mode=mode)


def _profile(name: str) -> str | None:
    try:
        return boto3.session.Session()._session.get_scoped_config().get(name)
    except Exception:  # no such profile: client creation says so in its own words
        return None


def retry_settings() -> tuple[str, int]:
    """(mode, attempts) for the next client: the CLI's choice, else the environment, else the profile,
    else mlbatch's defaults."""
    mode = _chosen["mode"] or os.environ.get("AWS_RETRY_MODE") or _profile("retry_mode") or DEFAULT_RETRY_MODE
    if mode not in RETRY_MODES:
        raise Failure(f"AWS_RETRY_MODE (or the profile's retry_mode) is {mode!r}, not one of {', '.join(RETRY_MODES)}: "
                      f"fix it, or unset it for mlbatch's default ({DEFAULT_RETRY_MODE})")
    raw = _chosen["max_attempts"] or os.environ.get("AWS_MAX_ATTEMPTS") or _profile("max_attempts")
    if raw is None:
        return mode, DEFAULT_MAX_ATTEMPTS
    try:
        attempts = int(raw)
    except (TypeError, ValueError):
        attempts = 0
    if attempts < 1:
        raise Failure(f"AWS_MAX_ATTEMPTS (or the profile's max_attempts) is {raw!r}, not a whole number >= 1: "
                      f"fix it, or unset it for mlbatch's default ({DEFAULT_MAX_ATTEMPTS})")
    return mode, attempts


class _ThrottleBudget:
    """A `needs-retry` handler after botocore's own: when botocore gives up on a throttled call
    before the attempt budget is spent (its retry quota ran out), wait as it would and retry."""

    def __init__(self, attempts: int):
        self.attempts = attempts

    def __call__(self, response=None, attempts: int = 0, **_) -> float | None:
        if response is None or attempts >= self.attempts:
            return None
        code = response[1].get("Error", {}).get("Code")
        if code not in THROTTLING_CODES:
            return None
        return random.random() * min(2 ** (attempts - 1), 20)


def client(service: str, **kwargs):
    """A boto3 client with mlbatch's retry settings (region, credentials and AWS_ENDPOINT_URL as boto3 finds them)."""
    mode, attempts = retry_settings()
    made = boto3.client(service, config=Config(retries={"mode": mode, "total_max_attempts": attempts}), **kwargs)
    if mode != "legacy":  # legacy mode has no retry quota
        made.meta.events.register(f"needs-retry.{made.meta.service_model.service_id.hyphenize()}",
                                  _ThrottleBudget(attempts))
    return made


def throttled(exc: BaseException) -> bool:
    """Is this SDK error a throttle (after the retries)?"""
    return getattr(exc, "response", {}).get("Error", {}).get("Code") in THROTTLING_CODES


def throttle_hint(exc: BaseException) -> str:
    """For a throttling error: what the budget was and how to raise it (else "")."""
    if not throttled(exc):
        return ""
    try:
        mode, attempts = retry_settings()
    except Failure:
        return ""
    capacity = ", or the table's capacity," if getattr(exc, "response", {})["Error"]["Code"] == \
        "ProvisionedThroughputExceededException" else ""
    return (f"; throttled past the retry budget ({attempts} attempts, {mode} mode): raise it with "
            f"--aws-max-attempts N (or AWS_MAX_ATTEMPTS){capacity} and run again")

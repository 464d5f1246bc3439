"""The few settings every part of mlbatch derives from."""
from __future__ import annotations

from pathlib import Path

__all__ = ["CRON", "YEAR_MIN", "YEAR_MAX", "ROOT", "REGION", "ENDPOINT_ENV", "INTAKE_TIMEOUT_SECONDS",
           "PIPELINE_BACKSTOP_SECONDS", "MAX_PROCESSING_SECONDS", "MAX_PROVISIONING_MARGIN_SECONDS",
           "EXTRACTOR_MAX_RUNTIME_SECONDS", "PIPELINE_TIMEOUT_SECONDS", "STUCK_AFTER_MINUTES", "MAX_ATTEMPTS"]

#: The EventBridge-style schedule whose minute field defines the window grid.
#: It is the one setting both the ASL lookup tables and the Python reference
#: are generated from.
CRON = "8-59/15 * * * ? *"

#: Years the intake accepts in paths and timestamps (inclusive). ASL has no
#: arithmetic to test a year for leapness, so leap years come from a
#: generated list over this span.
YEAR_MIN = 1900
YEAR_MAX = 2399

#: The project root (the folder holding template.yaml).
ROOT = Path(__file__).resolve().parents[2]

#: The region the embedded engine runs in.
REGION = "us-east-1"

#: The intake makes three service calls with bounded retries (seconds); no execution may hold
#: a window for longer than this (AWS ends it TIMED_OUT).
INTAKE_TIMEOUT_SECONDS = 300

#: Builders run at most SageMaker's 5 days (432,000 s) each; the pipeline stops waiting for one
#: after its max runtime plus ProvisioningMarginSeconds (at most 3,600 s). The whole pipeline is
#: bounded by that and an hour for everything else: a backstop, it should never fire.
MAX_PROCESSING_SECONDS = 432_000
MAX_PROVISIONING_MARGIN_SECONDS = 3_600
PIPELINE_BACKSTOP_SECONDS = MAX_PROCESSING_SECONDS + MAX_PROVISIONING_MARGIN_SECONDS + 3_600

#: The extractor job's own limits (a year of history takes minutes).
EXTRACTOR_MAX_RUNTIME_SECONDS = 86_400

#: The one endpoint setting: the AWS SDKs' own variable. Set, every command (and the
#: test suite) talks to that endpoint -- `mlbatch local up` prints it; unset, AWS.
ENDPOINT_ENV = "AWS_ENDPOINT_URL"

#: How long the pipeline waits for a builder by default: the template's ProcessingMaxRuntimeSeconds
#: (3600) plus ProvisioningMarginSeconds (900); past it the pipeline stops the job and marks the window
#: FAILED (States.Timeout). Per-project max_runtime_seconds overrides move it.
PIPELINE_TIMEOUT_SECONDS = 3600 + 900

#: `mlbatch audit --stuck-after` default, in minutes: the pipeline's timeout plus 15 minutes for the
#: pipeline (or lock_release) to record the outcome, (3600 + 900) s + 15 min = 90 min. A lock IN_PROGRESS and not
#: updated for longer belongs to no live run. Raise it if you raise ProcessingMaxRuntimeSeconds.
STUCK_AFTER_MINUTES = PIPELINE_TIMEOUT_SECONDS // 60 + 15

#: `mlbatch audit --max-attempts` default: a window FAILED this many times is POISONED, never healed
#: automatically.
MAX_ATTEMPTS = 3

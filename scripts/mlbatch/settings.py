"""The few settings every part of mlbatch derives from."""
from __future__ import annotations

from pathlib import Path

__all__ = ["CRON", "YEAR_MIN", "YEAR_MAX", "ROOT", "REGION", "PIPELINE_TIMEOUT_SECONDS", "STUCK_AFTER_MINUTES",
           "MAX_ATTEMPTS"]

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

#: The pipeline's timeout: the builders' ProcessingMaxRuntimeSeconds (3600 s by default) plus a
#: provisioning margin (900 s). No pipeline run lives longer (issue 11: "Nothing runs forever").
PIPELINE_TIMEOUT_SECONDS = 3600 + 900

#: `mlbatch audit --stuck-after` default, in minutes: the pipeline's timeout plus 15 minutes for
#: lock_release to record the timeout, (3600 + 900) s + 15 min = 90 min. A lock IN_PROGRESS and not
#: updated for longer belongs to no live run. Raise it if you raise ProcessingMaxRuntimeSeconds.
STUCK_AFTER_MINUTES = PIPELINE_TIMEOUT_SECONDS // 60 + 15

#: `mlbatch audit --max-attempts` default: a window FAILED this many times is POISONED, never healed
#: automatically.
MAX_ATTEMPTS = 3

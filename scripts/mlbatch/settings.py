"""The few settings every part of mlbatch derives from."""
from __future__ import annotations

from pathlib import Path

__all__ = ["CRON", "YEAR_MIN", "YEAR_MAX", "ROOT", "REGION", "ENDPOINT_ENV"]

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

#: The one endpoint setting: the AWS SDKs' own variable. Set, every command (and the
#: test suite) talks to that endpoint -- `mlbatch local up` prints it; unset, AWS.
ENDPOINT_ENV = "AWS_ENDPOINT_URL"

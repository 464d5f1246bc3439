"""Batch identity from an S3 path: the Python reference of templates/macros/identity.j2."""
from __future__ import annotations

import calendar
from dataclasses import asdict, dataclass

from .settings import YEAR_MAX, YEAR_MIN

__all__ = ["InvalidS3Key", "Identity", "identity_for"]


class InvalidS3Key(ValueError):
    """The S3 path is not a batch file path of the ingestion layout."""


@dataclass(frozen=True)
class Identity:
    bucket: str
    org1: str
    org2: str
    project_name: str
    yyyy: str
    mm: str
    dd: str
    mini_batch_id: str

    @property
    def traffic_s3_prefix(self) -> str:
        return f"s3://{self.bucket}/{self.org1}/{self.org2}/{self.project_name}/{self.yyyy}/{self.mm}/{self.dd}"

    @property
    def mini_batch_s3_prefix(self) -> str:
        return f"{self.traffic_s3_prefix}/{self.mini_batch_id}/"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def identity_for(s3_key: str, default_bucket: str) -> Identity:
    """`s3://bucket/key` or a bare key (bucket = default_bucket) -> Identity."""
    if s3_key.startswith("s3://"):
        bucket, _, key = s3_key[len("s3://"):].partition("/")
    else:
        bucket, key = default_bucket, s3_key
    segments = key.split("/")
    if not bucket or len(segments) != 8 or not all(segments):
        raise InvalidS3Key(f"expected s3://bucket/org1/org2/project/YYYY/MM/dd/mini_batch_id/file: {s3_key!r}")
    org1, org2, project, yyyy, mm, dd, batch, _file = segments
    if not (len(yyyy) == 4 and (yyyy + mm + dd).isascii() and yyyy.isdigit() and YEAR_MIN <= int(yyyy) <= YEAR_MAX
            and len(mm) == 2 and mm.isdigit() and len(dd) == 2 and dd.isdigit()
            and 1 <= int(mm) <= 12 and 1 <= int(dd) <= calendar.monthrange(int(yyyy), int(mm))[1]):
        raise InvalidS3Key(f"not a real YYYY/MM/dd date in {YEAR_MIN}-{YEAR_MAX}: {s3_key!r}")
    return Identity(bucket, org1, org2, project, yyyy, mm, dd, batch)

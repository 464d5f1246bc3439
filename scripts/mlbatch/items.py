"""DynamoDB attribute values <-> plain JSON."""
from __future__ import annotations

from typing import Any

__all__ = ["to_item", "from_item"]


def to_item(value: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON -> DynamoDB attribute values (strings, numbers, bools, maps, lists)."""
    from boto3.dynamodb.types import TypeSerializer
    ser = TypeSerializer()
    return {k: ser.serialize(v) for k, v in value.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values -> plain JSON (integral numbers as int)."""
    from decimal import Decimal

    from boto3.dynamodb.types import TypeDeserializer
    de = TypeDeserializer()

    def plain(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, set)):
            return [plain(x) for x in v]
        return v
    return {k: plain(de.deserialize(v)) for k, v in item.items()}

"""A value that fits a JSON schema: the arguments of simulated tool calls and JSON answers.

Example::

    schema = {"type": "object", "properties": {"city": {"type": "string"},
              "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city"]}
    example_for_schema(schema, text="weather in Paris")
    # {"city": "weather in Paris", "days": 1}

Strings take ``text`` (cut or padded to the length bounds; known ``format`` values get a
fixed example), numbers the smallest value in bounds (1 when unbounded), booleans ``true``,
arrays ``minItems`` items (at least one), objects every declared property. ``enum``,
``const`` and ``default`` win when present; ``anyOf``/``oneOf`` take the first option that
is not ``null``; local ``$ref`` (``#/$defs/...``, ``#/definitions/...``) is followed.

Not done: ``pattern``, ``not``, ``if``/``then``, ``uniqueItems`` beyond one item, and
remote references. Such schemas get a best-effort value that may not validate.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["example_for_schema"]

_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_MAX_DEPTH = 8


def example_for_schema(schema: dict[str, Any], *, text: str = "example") -> Any:
    """A deterministic value that fits ``schema``; strings are filled from ``text``."""
    return _value(schema, root=schema, text=text, depth=0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and seen < _MAX_DEPTH:
        ref = str(schema["$ref"])
        target: Any = root
        if not ref.startswith("#"):
            return {}
        for part in ref.lstrip("#/").split("/"):
            if not part:
                continue
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            if not isinstance(target, dict):
                return {}
        schema = target
        seen += 1
    return schema


def _value(schema: Any, *, root: dict[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, dict):
        return text  # `true` / `{}`-like schemas accept anything
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            chosen = next((o for o in options if _type_of(_resolve(o, root)) != "null"), options[0])
            return _value(chosen, root=root, text=text, depth=depth)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root) if isinstance(part, dict) else {})
        return _value(merged, root=root, text=text, depth=depth)
    kind = _type_of(schema)
    if depth >= _MAX_DEPTH:
        return None if kind == "null" else {} if kind == "object" else [] if kind == "array" else 0
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: _value(sub, root=root, text=text, depth=depth + 1)
            for name, sub in properties.items()
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [_value(s, root=root, text=text, depth=depth + 1) for s in prefix]
        item = _value(schema.get("items", {}), root=root, text=text, depth=depth + 1)
        return [item] * count
    if kind == "integer":
        return int(_number(schema, integer=True))
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, text)


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _number(schema: dict[str, Any], *, integer: bool) -> float:
    # The value nearest to 1 inside the bounds (inclusive and exclusive ones combined).
    low = max(
        float(schema.get("minimum", -math.inf)),
        float(schema.get("exclusiveMinimum", -math.inf)),
    )
    high = min(
        float(schema.get("maximum", math.inf)),
        float(schema.get("exclusiveMaximum", math.inf)),
    )
    low_open = "exclusiveMinimum" in schema and low == float(schema["exclusiveMinimum"])
    high_open = "exclusiveMaximum" in schema and high == float(schema["exclusiveMaximum"])
    if integer:
        if math.isfinite(low):
            low = math.floor(low) + 1.0 if low_open else math.ceil(low)
        if math.isfinite(high):
            high = math.ceil(high) - 1.0 if high_open else math.floor(high)
        return float(min(max(1.0, low), high))
    inside_low = low < 1.0 or (low == 1.0 and not low_open)
    inside_high = high > 1.0 or (high == 1.0 and not high_open)
    if inside_low and inside_high:
        return 1.0
    if not inside_low:  # the interval lies above 1: its lowest allowed value
        if not low_open:
            return low
        return low + 1.0 if high - low > 1.0 else (low + high) / 2
    if not high_open:  # the interval lies below 1: its highest allowed value
        return high
    return high - 1.0 if high - low > 1.0 else (low + high) / 2


def _string(schema: dict[str, Any], text: str) -> str:
    value = _FORMATS.get(str(schema.get("format", "")), text)
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    if len(value) < low:
        value = value + "x" * (low - len(value))
    if high is not None:
        value = value[: int(high)]
    return value

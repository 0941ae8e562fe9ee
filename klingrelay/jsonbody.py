"""JSON as the relay reads it (strictly) and writes it (compactly, like Kling)."""

import json
from typing import Any

# MariaDB's JSON (a CHECK with JSON_VALID) refuses documents with more than 31 nested
# arrays/objects: such a body would fail the insert with a 500. Kling's own bodies nest a
# handful of levels at most.
MAX_DEPTH = 31


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    """How many arrays/objects nest at the deepest point (iterative: no recursion limit)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, level = pending.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in node)
    return deepest


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON that can be stored (MariaDB's JSON, utf8mb4) and sent on unchanged.

    Raises ValueError for invalid JSON, NaN/Infinity, text that is not valid Unicode
    (lone surrogates) and nesting too deep to handle.
    """
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
        if _depth(value) > MAX_DEPTH:
            raise ValueError(f"JSON is nested more than {MAX_DEPTH} levels deep")
        json.dumps(value, ensure_ascii=False).encode()  # a lone surrogate fails here
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
    except UnicodeError:
        raise ValueError("JSON text is not valid Unicode") from None
    return value


def dump_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON, as Kling writes its own bodies (and as passed-through ones are)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

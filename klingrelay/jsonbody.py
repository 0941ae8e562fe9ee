"""Strict JSON parsing for bodies the relay stores and forwards."""

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON that can be stored (MariaDB's JSON, utf8mb4) and sent on unchanged.

    Raises ValueError for invalid JSON, NaN/Infinity, text that is not valid Unicode
    (lone surrogates) and nesting too deep to handle.
    """
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
        json.dumps(value, ensure_ascii=False).encode()  # a lone surrogate fails here
    except RecursionError:
        raise ValueError("JSON is nested too deeply") from None
    except UnicodeError:
        raise ValueError("JSON text is not valid Unicode") from None
    return value

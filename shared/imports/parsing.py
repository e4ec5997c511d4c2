"""Reading an import file's bytes: UTF-8 (a byte-order mark is fine) and JSON, with errors that
say exactly what is wrong and never quote the content."""
from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from shared.imports.types import InputError


def decode(payload: bytes | msgspec.Raw) -> Any:
    """Bytes → JSON value, or an `InputError` that says exactly what is wrong.

    msgspec reads the bytes as they are, into the values `json.loads` would give (integers of any
    size too), with no decoded text and no document tree beside them: for the 37 MB scrape file of
    45,000 therapists, `json.loads` holds a 74 MB text at its peak and orjson an 81 MB tree; this
    holds nothing (bench/therapist_import.py). It refuses what we refuse (invalid UTF-8, NaN and
    infinities, lone surrogates) and a byte-order mark; what it refuses is read again by `json`
    below, which accepts the mark and says what is wrong."""
    try:
        return msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        pass
    data = bytes(payload)  # a copy of a Raw entry's slice; bytes stay as they are
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError as error:
        if error.end == len(data) and error.reason == "unexpected end of data":
            raise InputError("truncated", f"the file ends inside a character (offset {error.start}): "
                                          "the file looks truncated") from None
        raise InputError("not-utf8", f"the file is not UTF-8: invalid byte at offset {error.start}") from None
    try:
        return json.loads(text, parse_constant=_not_finite, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        if not text.strip():
            raise InputError("not-json", "the file is empty") from None
        # A string never closed: the text ended inside it (a line break in it would fail sooner).
        if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
            raise InputError("truncated", f"the JSON ends too early (line {error.lineno}, column "
                                          f"{error.colno}): the file looks truncated") from None
        raise InputError("not-json", f"not valid JSON: {error.msg} at line {error.lineno}, "
                                     f"column {error.colno}") from None
    except ValueError:  # from the two hooks below, or an integer of thousands of digits
        raise InputError("not-json", "not valid JSON: a number is NaN, infinite or has too many digits") from None
    except RecursionError:
        raise InputError("not-json", "not valid JSON for us: nested too deeply") from None


def _not_finite(constant: str) -> float:
    """`NaN`, `Infinity`: Python's json reads them, JSON and PostgreSQL's jsonb do not."""
    raise ValueError("not a finite number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):  # 1e999 is JSON, but no float
        raise ValueError("not a finite number")
    return value

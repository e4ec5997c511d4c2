"""Reading an import file's bytes: UTF-8 (a byte-order mark is fine) and JSON, with errors that
say exactly what is wrong and never quote the content."""
from __future__ import annotations

import json
from typing import Any

from shared.imports.runner import InputError


def decode(payload: bytes) -> Any:
    """Bytes → JSON value, or an `InputError` that says exactly what is wrong."""
    try:
        text = payload.decode("utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError as error:
        if error.end == len(payload) and error.reason == "unexpected end of data":
            raise InputError("truncated", f"the file ends inside a character (offset {error.start}): "
                                          "the file looks truncated") from None
        raise InputError("not-utf8", f"the file is not UTF-8: invalid byte at offset {error.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if not text.strip():
            raise InputError("not-json", "the file is empty") from None
        # A string never closed: the text ended inside it (a line break in it would fail sooner).
        if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
            raise InputError("truncated", f"the JSON ends too early (line {error.lineno}, column "
                                          f"{error.colno}): the file looks truncated") from None
        raise InputError("not-json", f"not valid JSON: {error.msg} at line {error.lineno}, "
                                     f"column {error.colno}") from None

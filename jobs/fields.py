"""Field types every request schema uses, so that whatever is stored can be served back.

A string that cannot be encoded as UTF-8 (a lone surrogate) is accepted by Python and stored,
and then breaks every JSON response that contains it; NUL is refused by PostgreSQL text; NaN,
Infinity and 1e400 are not JSON (PostgreSQL refuses them, SQLite stores non-standard text);
an integer past 64 bits fits no database column. These types refuse all of them at the door,
with a 422 naming the field. `sanitize` is the other side: a record stored before these checks
is shown with its problem instead of failing the whole response.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints

INT_MAX = 2**63 - 1
MAX_DEPTH = 16  # of free-form JSON (kwargs, profiles)
MAX_WARNINGS = 20
MAX_WARNING_CHARS = 500


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length),
                     AfterValidator(check_text)]


Name = _text(200)
Tag = _text(64, 1)
Prefix = _text(200)
Ref = _text(64)  # ids of uploads and cost models named in a spec
Text = _text(1000)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BoundedInt = Annotated[int, Field(ge=-INT_MAX, le=INT_MAX)]


def check_json(value: Any, depth: int = 0) -> Any:
    """Free-form JSON (factory kwargs, a profile): every string and key safe text, every number
    finite and within 64 bits, nesting bounded."""
    if depth > MAX_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -INT_MAX <= value <= INT_MAX:
            raise ValueError(f"integer {value} is outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("object keys must be strings")
            check_text(key)
            check_json(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_json(item, depth + 1)
    else:
        raise ValueError(f"{type(value).__name__} is not a JSON value")
    return value


JsonDict = Annotated[dict[str, Any], AfterValidator(check_json)]


def bounded_warnings(warnings: list[str]) -> list[str]:
    """At most MAX_WARNINGS warnings of at most MAX_WARNING_CHARS each; what is cut is said."""
    out = [w if len(w) <= MAX_WARNING_CHARS else w[: MAX_WARNING_CHARS - 15] + " ... (cut)"
           for w in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        out[-1] = f"... and {len(warnings) - MAX_WARNINGS + 1} more warnings, not shown"
    return out


def sanitize(value: Any, problems: list[str], where: str = "") -> Any:
    """A JSON-safe copy of a stored value: text that cannot be encoded is escaped, non-finite
    numbers become null; each fix is named in `problems`."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value.replace("\x00", "\\x00")
        except UnicodeEncodeError:
            problems.append(f"{where or 'a value'}: text that is not valid Unicode")
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where or 'a value'}: a non-finite number")
        return None
    if isinstance(value, dict):
        return {sanitize(str(k), problems, where): sanitize(v, problems, f"{where}.{k}")
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    return value

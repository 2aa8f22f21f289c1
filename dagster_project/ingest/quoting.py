"""A user's value as an error message quotes it: short, and safe for any JSON a client can send.

`repr` of a list nested 1,000 deep (orjson accepts 1,023) raises RecursionError, and a 500 KB
string makes a 500 KB message in the DLQ, the log and the HTTP answer: either turned one bad value
into a failed request batch or a halted stream.
"""

from __future__ import annotations

import reprlib
from typing import Any

_QUOTING = reprlib.Repr()  # Python 3.11's takes no arguments
_QUOTING.maxlevel, _QUOTING.maxlist, _QUOTING.maxdict = 3, 6, 6
_QUOTING.maxstring, _QUOTING.maxlong, _QUOTING.maxother = 120, 60, 120


def quoted(value: Any) -> str:
    """`repr(value)`, cut to a readable length (nested containers and long strings end in `...`)."""
    return _QUOTING.repr(value)


def described(value: Any) -> str:
    """`value`'s type and value for a "got ..." message. orjson reads an integer beyond 64 bits as a
    float, so a client that sent an integer would be told it sent a float: say what happened instead."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        return f"a number beyond 64 bits ({value:g}; send it as a string)"
    return f"{type(value).__name__} {quoted(value)}"

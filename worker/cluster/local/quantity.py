"""Kubernetes resource quantities ("500m", "2", "1Gi", "1e3"), parsed and printed exactly."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

# The grammar of k8s.io/apimachinery's resource.Quantity: a signed decimal number, then a
# binary suffix, a decimal suffix or a decimal exponent ("1e3"; "1E" alone is exa).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)


def parse(value: str | int | float) -> Decimal:
    """Return a quantity's exact value in base units (cores, bytes); raise ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is not a number")
    if isinstance(value, int | float):
        # YAML and JSON numbers reach the API server as quantities too.
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f"quantity {value!r} does not match '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # the regex admits only valid numbers; kept for safety
        raise ValueError(f"quantity {value!r} is not a number") from exc
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    return number.scaleb(int(suffix[1:]))


def milli(value: str | int | float) -> int:
    """Return a quantity in thousandths, rounded up as Kubernetes does ("0.1" cpu -> 100)."""
    return math.ceil(parse(value) * 1000)


def units(value: str | int | float) -> int:
    """Return a quantity in whole units, rounded up ("1.5" bytes -> 2)."""
    return math.ceil(parse(value))


def format_cpu(millicores: int) -> str:
    """Print millicores the way Kubernetes prints a cpu quantity ("1", "1500m")."""
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"


def format_bytes(count: int) -> str:
    """Print bytes the way Kubernetes prints a binary-SI quantity ("512Mi", "1000")."""
    if count == 0:
        return "0"
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        if count % (1024**power) == 0:
            return f"{count // 1024**power}{suffix}"
    return str(count)

"""Budgets with units: "50ms", "0.05s", "60M", "2G", "200MB", "1.5GiB".

A budget without a unit is refused: "50" could be 50 ms or 50 s, 50 parameters or 50 M, and a
wrong guess silently designs the wrong model. So is one that is not a finite positive number in
its base unit ("1e999", "inf", "nan", "0ms", or "1e308G", which overflows). Every error names an
accepted form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from merino_mobile.errors import UserError

_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-zµ]*)"

_TIME = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_COUNT = {"": None, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}
_BYTES = {
    "B": 1,
    "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
}

_EXAMPLES = {
    "latency": '"50ms", "0.05s" or "800us"',
    "count": '"60M", "2G", "350k" (or a plain integer such as 60000000)',
    "bytes": '"200MB", "1.5GiB" or "512KiB"',
}


@dataclass(frozen=True)
class Range:
    """An inclusive sweep `start:stop:step` of one budget, in base units."""

    start: float
    stop: float
    step: float

    def __post_init__(self) -> None:
        parts = (self.start, self.stop, self.step)
        if not all(math.isfinite(v) and v > 0 for v in parts):
            raise UserError(f"a range needs finite positive start, stop and step, got {parts}")
        if self.stop < self.start:
            raise UserError(f"the range {self.start:g}:{self.stop:g}:{self.step:g} ends before "
                            "it starts")

    def count(self) -> int:
        """How many values the range has (exact: no overflow however small the step)."""
        # the 1e-9 keeps a stop reached by decimal steps (0.1ms:0.3ms:0.1ms) in the range
        q = (Fraction(self.stop) - Fraction(self.start)) / Fraction(self.step)
        return math.floor(q + Fraction(1, 10**9)) + 1

    def values(self) -> list[float]:
        return [self.start + i * self.step for i in range(self.count())]


def _split(text: str, kind: str, what: str) -> tuple[float, str]:
    if re.fullmatch(r"[+-]?(inf(inity)?|nan)\s*[A-Za-zµ]*", text.strip(), re.IGNORECASE):
        raise UserError(f"{what} {text!r} is not a finite number; for example {_EXAMPLES[kind]}")
    m = re.fullmatch(_NUMBER, text.strip())
    if not m:
        raise UserError(
            f"cannot read {what} {text!r}: expected a number with a unit, for example "
            f"{_EXAMPLES[kind]}"
        )
    value = float(m["num"])
    if not math.isfinite(value):
        raise UserError(f"{what} {text!r} is too large to be a number; for example "
                        f"{_EXAMPLES[kind]}")
    if value <= 0:
        raise UserError(f"{what} must be positive, got {text!r}; for example {_EXAMPLES[kind]}")
    return value, m["unit"]


def _scaled(value: float, scale: float, text: str, kind: str, what: str) -> float:
    """value * scale in base units, refused when it overflows or underflows to zero."""
    out = value * scale
    if not math.isfinite(out):
        raise UserError(f"{what} {text!r} is too large; for example {_EXAMPLES[kind]}")
    if out <= 0:
        raise UserError(f"{what} {text!r} is too small to be positive; for example "
                        f"{_EXAMPLES[kind]}")
    return out


def parse_latency_ms(text: str, what: str = "latency budget") -> float:
    """Parse a time such as "50ms" or "0.05s" into milliseconds."""
    value, unit = _split(text, "latency", what)
    if unit == "":
        raise UserError(
            f"{what} {text!r} has no unit: write {text}ms or {text}s (accepted: "
            f"{_EXAMPLES['latency']})"
        )
    if unit not in _TIME:
        raise UserError(f"unknown time unit {unit!r} in {text!r}; accepted: {_EXAMPLES['latency']}")
    return _scaled(value, _TIME[unit], text, "latency", what)


def parse_count(text: str, what: str = "parameter budget") -> float:
    """Parse a count such as "60M" or "2G" (FLOPs, parameters). A bare integer is taken as is."""
    value, unit = _split(text, "count", what)
    if unit not in _COUNT:
        raise UserError(f"unknown unit {unit!r} in {text!r}; accepted: {_EXAMPLES['count']}")
    scale = _COUNT[unit]
    if scale is None:
        if value < 1000:
            raise UserError(
                f"{what} {text!r} looks like it is missing a unit (M for millions, G for "
                f"billions); accepted: {_EXAMPLES['count']}"
            )
        return value
    return _scaled(value, scale, text, "count", what)


def parse_bytes(text: str, what: str = "memory budget") -> float:
    """Parse a size such as "200MB" or "1.5GiB" into bytes."""
    value, unit = _split(text, "bytes", what)
    if unit == "":
        raise UserError(
            f"{what} {text!r} has no unit: write {text}MB or {text}GiB (accepted: "
            f"{_EXAMPLES['bytes']})"
        )
    if unit not in _BYTES:
        raise UserError(f"unknown size unit {unit!r} in {text!r}; accepted: {_EXAMPLES['bytes']}")
    return _scaled(value, _BYTES[unit], text, "bytes", what)


def parse_range(text: str, parse, what: str) -> Range | float:
    """Parse either one budget or a sweep "start:stop:step" with the same units on each part."""
    parts = text.split(":")
    if len(parts) == 1:
        return parse(text, what)
    if len(parts) != 3:
        raise UserError(
            f"{what} range {text!r} must be start:stop:step, for example 10ms:100ms:10ms")
    start, stop, step = (parse(p, what) for p in parts)
    if stop < start:
        raise UserError(f"{what} range {text!r} ends before it starts")
    return Range(start, stop, step)


def human_count(n: float) -> str:
    """60_000_000 -> '60.0M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """200_000_000 -> '200.0MB' (decimal units, as phones and disks report them)."""
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}B"

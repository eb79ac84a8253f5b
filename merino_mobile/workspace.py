"""Where commands read and write: `devices/`, `search/` and `models/` under a workspace folder.

The workspace is `--workspace DIR`, else `$MERINO_MOBILE_HOME`, else the current directory.
Reference cards, device profiles and the default search space also ship inside the package
(`merino_mobile/data/`, links to the repository's top-level folders), so a name such as `opt-350m`
or `host` resolves from any directory: first in the workspace, then in the shipped data.

The files in those folders are written by people, so this module also reads them strictly:
`read_text` (UTF-8 text of a regular file), `parse_json` / `parse_toml`, and `Fields`, the one
typed-field reader that cards, search spaces and device profiles are read with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from merino_mobile.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN = Path(__file__).resolve().parent / "data"
ENV = "MERINO_MOBILE_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, workspace: str | Path | None = None) -> Workspace:
        root = workspace or os.environ.get(ENV) or Path.cwd()
        return cls(Path(root).expanduser().resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def search(self) -> Path:
        return self.root / "search"

    @property
    def state(self) -> Path:
        """Private working state (profiling database, export cache): `.merino-mobile/`."""
        return self.root / ".merino-mobile"

    def find(self, kind: str, name: str, suffix: str) -> Path:
        """A file given as a path, or by name in the workspace, then in the shipped data.

        `kind` is "models", "devices" or "search"; `suffix` is ".json" or ".toml".
        """
        direct = Path(name).expanduser()
        if _is(direct, Path.is_file):
            return direct
        stem = name if name.endswith(suffix) else name + suffix
        for base in (self.root / kind, BUILTIN / kind):
            candidate = base / stem
            if _is(candidate, Path.is_file):
                return candidate
        what = kind[:-1] if kind != "search" else "search space"
        if _is(direct, Path.is_dir):
            file = {"models": "card", "devices": "device profile"}.get(kind, what)
            raise UserError(f"{direct} is a folder, not a {file} file: give the path of a "
                            f"{suffix} file, or a name under {kind}/")
        known = sorted(self.names(kind, suffix))
        raise UserError(
            f"no {what} named {name!r} (looked for "
            f"{self.root / kind / stem} and the shipped {kind}); "
            f"known: {', '.join(known) or 'none'}"
        )

    def names(self, kind: str, suffix: str) -> set[str]:
        """Names of the files of one kind in the workspace and the shipped data."""
        out = set()
        for base in (self.root / kind, BUILTIN / kind):
            if base.is_dir():
                out |= {p.name[: -len(suffix)] for p in base.glob(f"*{suffix}") if p.is_file()}
        return out


def _is(path: Path, test: Callable[[Path], bool]) -> bool:
    """`test(path)`, False where the name cannot be a path here (too long for the system)."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


# -- reading the files a user writes -------------------------------------------------------------
#
# Cards (JSON), search spaces and device profiles (TOML) are hand-edited, so every way one can be
# wrong must end as one UserError that names the file, the field and the fix: never a traceback,
# a hang, or a value quietly turned into another (`"64"` into 64, `1.5` into 1, `"no"` into True).
#
# Types, as JSON and TOML spell them:
# - whole numbers (widths, depths, counts) must be integers: `64`, not `64.0` or `"64"`;
# - real numbers (ratios, seconds) may be written `2` or `2.0` and must be finite (no NaN or
#   infinity, which Python's JSON reader and TOML both accept);
# - flags must be `true` or `false`, not `1`, `0` or `"no"`;
# - unknown keys are refused with the list of known ones (a misspelt key is not ignored).

MAX_FILE_BYTES = 16 << 20  # far above any card, space or profile; stops a stray huge file
_LONG_DIGITS = 100  # a JSON integer longer than this is kept as its digit count, never parsed
REQUIRED: Any = object()  # `Fields.get(key, kind)` without a default: the key must be there


class LongNumber:
    """A JSON integer of absurd length: kept unparsed so the field it sits in can be named."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def read_text(path: Path, what: str, missing: str = "") -> str:
    """The text of a user's file: UTF-8 (a leading byte-order mark is dropped).

    `what` names the kind of file in messages ("card", "search space", "device profile"); a
    missing file says `missing` as the way out. Folders, devices and pipes are refused before
    they are opened (a FIFO would block the read forever).
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"no {what} at {path}{'; ' + missing if missing else ''}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path} is a folder, not a {what} file: give the path of the file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} is not a regular file: give a {what} file")
    if st.st_size > MAX_FILE_BYTES:
        raise UserError(f"{path} is {st.st_size / 1e6:.0f} MB, too large to be a {what} "
                        f"(limit {MAX_FILE_BYTES >> 20} MiB): check the path")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                        f"{e.start}): a {what} is a text file; save it as UTF-8") from None


class _Duplicate(Exception):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _json_int(digits: str) -> int | LongNumber:
    return LongNumber(len(digits.lstrip("-"))) if len(digits) > _LONG_DIGITS else int(digits)


def parse_json(text: str, path: Path | str) -> Any:
    """JSON text as Python values; syntax errors, repeated keys and nesting too deep to read are
    UserErrors naming the file. NaN and Infinity (which Python's reader accepts) come back as
    floats for the field's reader to refuse by name."""
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
                        ) from None
    except _Duplicate as e:
        raise UserError(f"{path}: key {e.args[0]!r} appears twice in one object; keep one"
                        ) from None
    except RecursionError:
        raise UserError(f"{path}: not valid JSON for this tool (nested too deeply)") from None


def parse_toml(text: str, path: Path | str) -> dict[str, Any]:
    """TOML text as a dict; every failure is a UserError naming the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise UserError(f"{path}: not valid TOML for this tool (nested too deeply)") from None
    except ValueError:  # an integer of thousands of digits: TOML integers are 64-bit
        raise UserError(f"{path}: not valid TOML (an integer too long for 64 bits)") from None


_EXPECT = {int: "a whole number", float: "a finite number", bool: "true or false",
           str: "a string"}
_PLURAL = {int: "whole numbers", float: "finite numbers", bool: "booleans", str: "strings"}
# dataclass annotations (strings under `from __future__ import annotations`) -> how to read them:
# (kind, read as a list, null allowed)
_ANNOTATIONS = {
    "int": (int, False, False), "float": (float, False, False), "bool": (bool, False, False),
    "str": (str, False, False), "int | None": (int, False, True),
    "float | None": (float, False, True), "str | None": (str, False, True),
    "tuple[int, ...]": (int, True, False), "tuple[float, ...]": (float, True, False),
    "tuple[str, ...]": (str, True, False),
}


def _encodable(text: str) -> bool:
    """Whether `text` can be written back as UTF-8 (JSON's \\ud800 escapes decode to lone
    surrogates, which cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _accepts(value: Any, kind: type) -> bool:
    if kind is float:
        return type(value) is int or (type(value) is float and math.isfinite(value))
    if kind is str:
        return type(value) is str and _encodable(value)
    return type(value) is kind  # `type is`, not isinstance: True is not the integer 1 here


def _bound(x: float) -> str:
    """A limit as people write it: 2097152, 0.5 (never 2.09715e+06)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _number(value: Any) -> float | None:
    """`value` as a number when it is one in disguise (a string of digits, an integral float)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


class Fields:
    """One JSON object or TOML table of a user's file, read field by field with strict types.

    `source` is the file, `where` the table inside it ("" for the top level, "blocks[0]",
    "[measure]"), `fmt` "JSON" or "TOML" (for how values are shown). Every refusal is a UserError
    that names the file, the field and what a valid value looks like.
    """

    def __init__(self, data: Any, source: str, where: str = "", fmt: str = "JSON") -> None:
        self.source, self.where, self.fmt = str(source), where, fmt
        if not isinstance(data, dict):
            what = where or "the top level"
            raise UserError(f"{self.source}: {what} must be {self._table_word()}, got "
                            f"{self.show(data)}")
        self.data: dict[str, Any] = data

    # -- naming and showing ------------------------------------------------------------------

    def _table_word(self) -> str:
        return "an object {...}" if self.fmt == "JSON" else "a table"

    def path(self, key: str) -> str:
        """The full name of a field, as a user finds it in the file."""
        return f"{self.where}.{key}" if self.where else key

    def show(self, value: Any) -> str:
        """A value as the user wrote it, kept short."""
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, LongNumber):
            return f"a number of {value.digits} digits"
        if isinstance(value, int):
            if value.bit_length() > 80:  # str() of a huge int is slow, and refused past 4300 digits
                return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
            return str(value)
        if isinstance(value, float):
            if math.isnan(value):
                return "NaN" if self.fmt == "JSON" else "nan"
            if math.isinf(value):
                inf = "Infinity" if self.fmt == "JSON" else "inf"
                return inf if value > 0 else "-" + inf
            return repr(value)
        if isinstance(value, str):
            if not _encodable(value):
                return "a string that is not valid Unicode (a lone \\ud800-\\udfff escape)"
            short = value if len(value) <= 40 else value[:40] + "..."
            return f"the string {json.dumps(short)}"
        if isinstance(value, list):
            return "a list"
        if isinstance(value, dict):
            return self._table_word()
        return f"a {type(value).__name__}"  # TOML dates and times

    def fail(self, key: str, problem: str) -> NoReturn:
        """Refuse field `key`: "<file>: <field> <problem>"."""
        raise UserError(f"{self.source}: {self.path(key)} {problem}")

    # -- keys --------------------------------------------------------------------------------

    def only(self, known: Iterable[str]) -> None:
        """Refuse keys outside `known`, listing the known ones."""
        known = set(known)
        unknown = sorted(k for k in self.data if k not in known)
        if unknown:
            shown = unknown[:8] + ([f"... {len(unknown) - 8} more"] if len(unknown) > 8 else [])
            head = f"{self.where} has unknown keys" if self.where else "unknown keys"
            raise UserError(f"{self.source}: {head} {shown}; known: {sorted(known)} (remove "
                            f"them or correct their spelling)")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    # -- values ------------------------------------------------------------------------------

    def _missing(self, key: str, kind: type, as_list: bool, expect: str | None = None) -> NoReturn:
        place = f"{self.where} is missing field" if self.where else "missing field"
        expect = expect or (f"a list of {_PLURAL[kind]}" if as_list else _EXPECT[kind])
        raise UserError(f"{self.source}: {place} {key!r}; add it ({expect})")

    def _check(self, key: str, value: Any, kind: type, expect: str | None, lo: float | None,
               hi: float | None, above: bool, choices: Sequence[Any] | None) -> Any:
        """`value` read as `kind` within the bounds, else refuse field `key` saying what a
        valid value is (`expect`, else from the kind, bounds and choices)."""
        if expect is None:
            expect = _EXPECT[kind]
            if choices is not None:
                expect = "one of " + ", ".join(json.dumps(c) for c in choices)
            elif lo is not None and hi is not None:
                expect += (f" above {_bound(lo)} and at most {_bound(hi)}" if above
                           else f" from {_bound(lo)} to {_bound(hi)}")
            elif lo is not None:
                expect += f" {'above' if above else 'at least'} {_bound(lo)}"
            elif hi is not None:
                expect += f" at most {_bound(hi)}"
        if not _accepts(value, kind):
            hint = ""
            if kind in (int, float) and isinstance(value, str) and _number(value) is not None:
                hint = " (write the number without quotes)"
            elif kind is int and isinstance(value, float) and value.is_integer() \
                    and abs(value) < 1e15:
                hint = f" (write {int(value)}, without a decimal point)"
            elif kind is bool and (isinstance(value, str) or type(value) is int):
                hint = " (write true or false, without quotes)"
            elif kind is float and isinstance(value, float):
                hint = " (give a finite number)"
            self.fail(key, f"must be {expect}, got {self.show(value)}{hint}")
        if choices is not None and value not in choices:
            self.fail(key, f"must be {expect}, got {self.show(value)}")
        if kind in (int, float):
            if (lo is not None and (value <= lo if above else value < lo)) or (
                    hi is not None and value > hi):
                self.fail(key, f"must be {expect}, got {self.show(value)}")
            if kind is float:
                try:
                    return float(value)
                except OverflowError:
                    self.fail(key, f"must be {expect}, got {self.show(value)}")
        return value

    def get(self, key: str, kind: type, default: Any = REQUIRED, *, lo: float | None = None,
            hi: float | None = None, above: bool = False, choices: Sequence[Any] | None = None,
            nullable: bool = False, expect: str | None = None) -> Any:
        """Field `key` as `kind` (int, float, bool or str), `default` when absent.

        Numbers must lie in [lo, hi] (with `above`, lo itself is refused); strings must be one
        of `choices` when given; `nullable` lets a JSON null through as None. `expect` replaces
        the description of a valid value in messages.
        """
        if key not in self.data:
            if default is REQUIRED:
                self._missing(key, kind, False, expect)
            return default
        value = self.data[key]
        if value is None and nullable:
            return None
        return self._check(key, value, kind, expect, lo, hi, above, choices)

    def get_list(self, key: str, kind: type, default: Any = REQUIRED, *, length: int | None = None,
             lo: float | None = None, hi: float | None = None, above: bool = False,
             choices: Sequence[Any] | None = None, most: int | None = None) -> Any:
        """Field `key` as a tuple of `kind` values (each checked as in `get`), `default` when
        absent; `length` fixes the number of items, `most` bounds it."""
        if key not in self.data:
            if default is REQUIRED:
                self._missing(key, kind, True)
            return default
        value = self.data[key]
        if length is not None:
            expect = f"a list of {length} {_PLURAL[kind]}"
        else:
            expect = f"a list of {_PLURAL[kind]}"
        if not isinstance(value, list) or (length is not None and len(value) != length):
            got = f"a list of {len(value)}" if isinstance(value, list) else self.show(value)
            self.fail(key, f"must be {expect}, got {got}")
        if most is not None and len(value) > most:
            self.fail(key, f"has {len(value)} items; the most is {most}")
        return tuple(self._check(f"{key}[{i}]", v, kind, None, lo, hi, above, choices)
                     for i, v in enumerate(value))

    def table(self, key: str, default: Any = REQUIRED) -> Fields:
        """Field `key` as a nested object/table (`default`, a dict, when absent)."""
        if key not in self.data:
            if default is REQUIRED:
                raise UserError(f"{self.source}: missing {self.path(key)}; add it")
            return Fields(default, self.source, self._sub(key), self.fmt)
        return Fields(self.data[key], self.source, self._sub(key), self.fmt)

    def tables(self, key: str) -> list[Fields]:
        """Field `key` as a list of objects/tables (required)."""
        if key not in self.data:
            raise UserError(f"{self.source}: missing field {self.path(key)!r}; add it (a list)")
        value = self.data[key]
        if not isinstance(value, list):
            self.fail(key, f"must be a list of {'objects' if self.fmt == 'JSON' else 'tables'}, "
                           f"got {self.show(value)}")
        return [Fields(v, self.source, f"{self.path(key)}[{i}]", self.fmt)
                for i, v in enumerate(value)]

    def free(self, key: str, default: Any = REQUIRED) -> Any:
        """Field `key` as free-form data (provenance, backend settings): any structure, but no
        number JSON could not write back (NaN, infinity, the unparsed `LongNumber`)."""
        if key not in self.data:
            if default is REQUIRED:
                self._missing(key, str, False)
            return default
        value = self.data[key]
        stack = [(self.path(key), value)]
        while stack:
            where, v = stack.pop()
            if isinstance(v, dict):
                for k in v:
                    if not _encodable(k):
                        raise UserError(f"{self.source}: {where} has a key that is not valid "
                                        "Unicode (a lone \\ud800-\\udfff escape): remove it")
                stack.extend((f"{where}.{k}", x) for k, x in v.items())
            elif isinstance(v, str) and not _encodable(v):
                raise UserError(f"{self.source}: {where} is not valid Unicode (a lone "
                                "\\ud800-\\udfff escape): remove the escape")
            elif isinstance(v, list):
                stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
            elif isinstance(v, LongNumber) or (isinstance(v, float) and not math.isfinite(v)):
                raise UserError(f"{self.source}: {where} must be a finite number, got "
                                f"{self.show(v)}")
        return value

    def _sub(self, key: str) -> str:
        return f"[{key}]" if self.fmt == "TOML" and not self.where else self.path(key)

    def fill(self, cls: type, given: dict[str, Any] | None = None,
             limits: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Keyword arguments for the dataclass `cls`: `given`, and every other field read by its
        annotation (int, float, bool, str, optional or tuple of those), its default when absent.

        `limits` maps field names to keyword arguments of `get`/`list` (lo, hi, choices, ...).
        """
        out = dict(given or {})
        for f in dataclasses.fields(cls):
            if f.name in out:
                continue
            try:
                kind, as_list, nullable = _ANNOTATIONS[str(f.type)]
            except KeyError:
                raise TypeError(f"Fields.fill cannot read {cls.__name__}.{f.name}: {f.type}; "
                                "pass it in `given`") from None
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = REQUIRED
            extra = (limits or {}).get(f.name, {})
            if as_list:
                out[f.name] = self.get_list(f.name, kind, default, **extra)
            else:
                out[f.name] = self.get(f.name, kind, default, nullable=nullable, **extra)
        return out

"""Is a device ready to measure on? One ordered checklist per backend, and its first gap.

Each backend module has `readiness(profile, runtime=None) -> list[Check]`: the things the device
needs, in the order they depend on each other (a phone: USB or TCP available, the phone visible,
its key accepted, the model the profile is for, the runner, the runner's version, the thermal
zones). The walk stops at the first missing piece; the checks after it are `unknown` ("not
checked"). `merino_mobile.device.open_device` raises the first missing check's `line()` as the
UserError of every command that needs the device (`profile`, `bench`, `deploy`, ...), and
`merino-mobile devices NAME` prints the whole list.

A check is `ok`, `missing` (with the step that fixes it) or `unknown` (could not tell, or not
checked because something before it is missing). Only `missing` makes a device not ready.

Also here: what the runner binary is built for (`elf_abi`), and the ExecuTorch version stamp
`merino-mobile runner build` writes beside the runner (`write_runner_stamp`, `runner_stamp`), which
the runner-version check compares with the ExecuTorch that exports the models.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile.device.base import Probe
from merino_mobile.errors import UserError

OK, MISSING, UNKNOWN = "ok", "missing", "unknown"
STATES = (OK, MISSING, UNKNOWN)


@dataclass(frozen=True)
class Check:
    """One item of a device's checklist: its state, what was found, and how to fix a gap."""

    name: str
    state: str
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"check state must be one of {STATES}, got {self.state!r}")

    @property
    def ok(self) -> bool | None:
        """True when ok, False when missing, None when it could not tell."""
        return {OK: True, MISSING: False}.get(self.state)

    def line(self) -> str:
        """What is wrong and what fixes it, on one line."""
        text = f"{self.detail}; {self.fix}" if self.fix else self.detail
        return " ".join(text.split())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def missing(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, MISSING, detail, fix)


def unknown(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, UNKNOWN, detail, fix)


def first_missing(checks: Sequence[Check]) -> Check | None:
    """The first check that is missing, None when the device is ready."""
    return next((c for c in checks if c.state == MISSING), None)


def is_ready(checks: Sequence[Check]) -> bool:
    """Ready: nothing is missing (an `unknown` check does not stop a run)."""
    return first_missing(checks) is None


def blocking_error(device: str, checks: Sequence[Check]) -> UserError | None:
    """The one-line UserError a command stops with, None when the device is ready."""
    gap = first_missing(checks)
    return None if gap is None else UserError(f"{device}: {gap.line()}")


def report(device: str, checks: Sequence[Check]) -> dict[str, Any]:
    """The JSON of `merino-mobile devices NAME --json`."""
    return {"device": device, "checks": [c.to_json() for c in checks],
            "ready": is_ready(checks)}


def summarize(checks: Sequence[Check], headline: str) -> Probe:
    """The `devices` row of a checklist: not ready with the first gap's line, else ready with
    the detail of the `headline` check (what the device is)."""
    gap = first_missing(checks)
    if gap is not None:
        return Probe(False, gap.line())
    head = next((c for c in checks if c.name == headline), None)
    return Probe(True, head.detail if head else "ready")


Step = tuple[str, Callable[[], Check]]


def walk(steps: Sequence[Step]) -> list[Check]:
    """Run the steps in order; after the first missing one, the rest are "not checked".

    A step returns its Check; a UserError it raises is that check missing, with the error's
    line. Anything else it raises (a device answering in a way nobody foresaw) is the check
    missing too, named, so a readiness walk never ends in a traceback."""
    out: list[Check] = []
    for name, step in steps:
        gap = first_missing(out)
        if gap is not None:
            out.append(unknown(name, f"not checked ({gap.name} is missing)"))
            continue
        try:
            out.append(step())
        except UserError as e:
            out.append(missing(name, str(e)))
        except Exception as e:  # see the docstring
            out.append(missing(name, f"checking {name} failed unexpectedly "
                               f"({type(e).__name__}: {e})",
                               "rerun; if it repeats, report it with the output of "
                               "`merino-mobile devices NAME --json`"))
    return out


# -- the runner binary ---------------------------------------------------------------------------

# ELF e_machine values of the ABIs Android ships (Android's ABI names).
ELF_ABIS = {183: "arm64-v8a", 40: "armeabi-v7a", 62: "x86_64", 3: "x86", 243: "riscv64"}


def elf_abi(path: Path) -> str | None:
    """The Android ABI an ELF executable is built for ("arm64-v8a", ...), "ELF machine N" for
    another machine, None when the file is not ELF (a script, for instance)."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order = "<" if head[5] == 1 else ">"  # EI_DATA: 1 little-endian, 2 big-endian
    (machine,) = struct.unpack(order + "H", head[18:20])
    return ELF_ABIS.get(machine, f"ELF machine {machine}")


def runner_stamp(runner: Path) -> Path:
    """The file beside a runner that records the ExecuTorch version it was built from."""
    return runner.with_name(runner.name + ".executorch-version")


def source_version(executorch_src: Path) -> str | None:
    """The version an ExecuTorch source tree declares (its version.txt), None if it has none."""
    with contextlib.suppress(OSError):
        text = (Path(executorch_src) / "version.txt").read_text().strip()
        return text or None
    return None


def write_runner_stamp(runner: Path, executorch_src: Path) -> Path | None:
    """Record beside `runner` the ExecuTorch version of the sources it was built from."""
    version = source_version(executorch_src)
    if version is None:
        return None
    stamp = runner_stamp(Path(runner))
    stamp.write_text(version + "\n")
    return stamp


def base_version(version: str) -> str:
    """"1.5.1" of "1.5.1+cpu", "1.5.1a0" or "v1.5.1": the release a build belongs to."""
    m = re.match(r"v?(\d+(?:\.\d+)*)", version.strip())
    return m.group(1) if m else version.strip()

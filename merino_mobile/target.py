"""The device a command works with, resolved once where the command enters.

A `Target` is a device profile plus the format (so the runtime) and quantization a command uses,
and that device's latency table for them, read at most once. The CLI and the public API functions
resolve a device name into a Target at their entry (`resolve_target`); every stage below them
receives the Target and never looks the device up again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, overload

from merino_mobile.device.profiles import DeviceProfile, load_profile
from merino_mobile.errors import UserError
from merino_mobile.formats import Format, for_runtime, get_format
from merino_mobile.workspace import Workspace

if TYPE_CHECKING:
    from merino_mobile.device.base import Device
    from merino_mobile.latency.calibration import CalibratedTable
    from merino_mobile.latency.table import Lut

DEFAULT_DEVICE = "host"  # the embedded default: this computer


def default_device_name(device: str | None = None) -> str:
    """`device`, else $MERINO_MOBILE_DEVICE, else this host."""
    return device or os.environ.get("MERINO_MOBILE_DEVICE") or DEFAULT_DEVICE


@dataclass(frozen=True)
class Target:
    """One device, with the format and quantization a command measures or predicts for."""

    ws: Workspace
    profile: DeviceProfile
    format: Format
    quant: str
    # tables read so far, by (runtime, quant): shared by the targets `using` derives
    _tables: dict[tuple[str, str], Lut] = field(default_factory=dict, repr=False,
                                                compare=False)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def runtime(self) -> str:
        return self.format.runtime

    def using(self, fmt: Format, quant: str) -> Target:
        """The same device with another format or quantization."""
        return replace(self, format=fmt, quant=quant)

    def check_ready(self) -> None:
        """Stop with the first missing piece's one line (and its fix) before any work starts:
        the readiness walk `open` would stop at."""
        from merino_mobile.device import readiness
        from merino_mobile.device.checklist import blocking_error

        gap = blocking_error(self.name, readiness(self.profile, self.runtime))
        if gap is not None:
            raise gap

    def open(self) -> Device:
        """The device, able to run this target's runtime (else a UserError saying what it has)."""
        from merino_mobile.device import open_device

        return open_device(self.profile, self.runtime)

    @overload
    def table(self, calibrated: Literal[True] = ...) -> CalibratedTable: ...

    @overload
    def table(self, calibrated: Literal[False]) -> Lut: ...

    def table(self, calibrated: bool = True) -> Lut | CalibratedTable:
        """The device's latency table for this runtime and quantization (read once); a
        UserError naming the `profile` command when there is none.

        `calibrated` (the default: what design and deploy predict with) gives a
        `CalibratedTable`: the table corrected by the workspace's calibration of it when one
        applies (`merino_mobile.latency.calibration`; read again on every call, since
        `calibrate` may have written it since), else the raw terms, its `calibrated` and
        `reason` saying which. `calibrated=False` is the raw `Lut`.
        """
        from merino_mobile.latency.table import load_lut

        key = (self.runtime, self.quant)
        if key not in self._tables:  # a missing table is looked for again: a profile may write it
            self._tables[key] = load_lut(self.ws, self.name, *key, profile=self.profile)
        raw = self._tables[key]
        if not calibrated:
            return raw
        from merino_mobile.latency.calibration import calibrated_table

        return calibrated_table(self.ws, self.name, raw)

    def forget_table(self) -> None:
        """Drop the table read for this runtime and quantization: the next `table()` reads the
        file again (after a profile has rewritten it)."""
        self._tables.pop((self.runtime, self.quant), None)


def resolve_target(ws: Workspace, device: str | Target | None = None, fmt: str | None = None,
                   quant: str = "int8", *, runtime: str | None = None) -> Target:
    """A device name (default: `default_device_name`) resolved into a Target, or a Target given
    another format or quantization. The format is `fmt`, else the one of `runtime`, else the
    device's first runtime (a Target keeps its own)."""
    if isinstance(device, Target):
        f = get_format(fmt) if fmt else for_runtime(runtime) if runtime else device.format
        return device.using(f, quant)
    prof = load_profile(ws, default_device_name(device))
    if fmt is not None:
        f = get_format(fmt)
    else:
        if not prof.runtimes:
            raise UserError(f"device {prof.name!r} lists no runtime; add runtimes = [...] to "
                            f"{prof.path}")
        f = for_runtime(runtime or prof.runtimes[0])
    return Target(ws, prof, f, quant)


def design_table(ws: Workspace, device: str | None, runtime: str | None,
                 quant: str) -> tuple[CalibratedTable, dict[str, Any]]:
    """The latency table a design is bounded by (the device's first runtime unless `runtime`),
    calibrated when the device's calibration applies, and the record of which one it is that
    the card keeps (and `design --json` shows as `lut`): device, runtime, quant, `calibrated`,
    and when calibrated the calibration's file, factors, data and leave-one-out error."""
    target = resolve_target(ws, device, quant=quant, runtime=runtime)
    table = target.table()
    info: dict[str, Any] = {"device": target.name, "runtime": target.runtime, "quant": quant,
                            "calibrated": table.calibrated}
    if table.calibrated:
        info["calibration"] = table.summary()
    return table, info

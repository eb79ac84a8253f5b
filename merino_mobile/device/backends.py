"""The registry of device backends, and opening a device through it.

A backend is a module with `open_device(profile) -> Device` and `probe(profile) -> Probe`.
`BACKENDS` names them by the profile's transport: "local" is this host (host.py), "adb" a phone
over ADB (android.py, on the transport in adb_transport.py), "coreml" this Mac through Core ML
(coreml.py). A Core ML artifact always runs through the coreml backend: Core ML predicts only on
the Mac it runs on, whatever else the profile reaches. Adding a backend is one entry here and one
module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from merino_mobile.device.base import Device, Probe
from merino_mobile.errors import UserError

if TYPE_CHECKING:  # profiles.py reads the transports from BACKENDS
    from merino_mobile.device.profiles import DeviceProfile

BACKENDS = {"local": "merino_mobile.device.host", "adb": "merino_mobile.device.android",
            "coreml": "merino_mobile.device.coreml"}
RUNTIME_BACKENDS = {"coreml": "coreml"}  # runtimes bound to one backend


def _backend_name(profile: DeviceProfile, runtime: str | None) -> str:
    return RUNTIME_BACKENDS.get(runtime or "", profile.transport)


def _backend(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as e:
        if e.name == BACKENDS[name]:
            return None
        raise


def open_device(profile: DeviceProfile, runtime: str | None = None) -> Device:
    """The device a profile describes, ready to fingerprint, prepare and benchmark; with
    `runtime`, one that can run it now (else a UserError naming the runtimes it has)."""
    name = _backend_name(profile, runtime)
    mod = _backend(name)
    if mod is None:
        raise UserError(f"device {profile.name!r} uses transport {name!r}, whose backend "
                        f"({BACKENDS[name]}) is not installed")
    dev = mod.open_device(profile)
    if runtime is not None and runtime not in (have := dev.runtimes()):
        dev.cleanup()
        from merino_mobile.formats import for_runtime

        raise UserError(f"device {profile.name!r} cannot run {runtime} artifacts: it has "
                        f"{', '.join(have) or 'no runtime'} (see {profile.path})"
                        + (f"; export for one of those with --format "
                           f"{' or '.join(for_runtime(r).name for r in have)}" if have else ""))
    return dev


def probe(profile: DeviceProfile) -> Probe:
    """Whether the device is reachable now; never raises."""
    mod = _backend(profile.transport)
    if mod is None:
        return Probe(None, f"unknown: {profile.transport.upper()} backend not installed")
    try:
        return mod.probe(profile)
    except Exception as e:  # a probe must never take down `devices`
        return Probe(False, f"{type(e).__name__}: {e}")


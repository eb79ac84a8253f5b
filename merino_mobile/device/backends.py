"""The registry of device backends, and opening a device through it.

A backend is a module with `open_device(profile) -> Device`, `readiness(profile, runtime) ->
list[Check]` (the ordered checklist of what the device needs, checklist.py) and `probe(profile)
-> Probe` (the checklist in one row, for `devices`).
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
from merino_mobile.device.checklist import Check, blocking_error, missing
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


def _not_installed(profile: DeviceProfile, name: str) -> str:
    return (f"device {profile.name!r} uses transport {name!r}, whose backend "
            f"({BACKENDS[name]}) is not installed")


def readiness(profile: DeviceProfile, runtime: str | None = None) -> list[Check]:
    """What the device needs to run `runtime` (default: the profile's first), in order, each
    ok, missing (with its fix) or unknown; the walk stops at the first missing piece."""
    name = _backend_name(profile, runtime)
    mod = _backend(name)
    if mod is None:
        return [missing("backend", _not_installed(profile, name),
                        "reinstall merino-mobile (pip install -e .)")]
    return mod.readiness(profile, runtime)


def open_device(profile: DeviceProfile, runtime: str | None = None) -> Device:
    """The device a profile describes, ready to fingerprint, prepare and benchmark `runtime`
    (default: the profile's first); when it is not ready, a UserError with the first missing
    check's line (what is missing and what fixes it)."""
    name = _backend_name(profile, runtime)
    mod = _backend(name)
    if mod is None:
        raise UserError(_not_installed(profile, name))
    gap = blocking_error(profile.name, mod.readiness(profile, runtime))
    if gap is not None:
        raise gap
    return mod.open_device(profile)


def probe(profile: DeviceProfile) -> Probe:
    """Whether the device is ready now, from its readiness checklist; never raises."""
    mod = _backend(profile.transport)
    if mod is None:
        return Probe(None, f"unknown: {profile.transport.upper()} backend not installed")
    try:
        return mod.probe(profile)
    except Exception as e:  # a probe must never take down `devices`
        return Probe(False, f"{type(e).__name__}: {e}")

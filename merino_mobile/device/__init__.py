"""Devices: the protocol (base.py), profiles (profiles.py) and one module per backend.

`open_device(profile)` and `probe(profile)` pick the backend from the profile's transport:
"local" is this host (host.py); "adb" is a phone over ADB (adb.py, when installed).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from merino_mobile.device.base import Device, Probe
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.errors import UserError

BACKENDS = {"local": "merino_mobile.device.host", "adb": "merino_mobile.device.android"}


def _backend(profile: DeviceProfile) -> ModuleType | None:
    try:
        return importlib.import_module(BACKENDS[profile.transport])
    except ModuleNotFoundError as e:
        if e.name == BACKENDS[profile.transport]:
            return None
        raise


def open_device(profile: DeviceProfile) -> Device:
    """The device a profile describes, ready to fingerprint, prepare and benchmark."""
    mod = _backend(profile)
    if mod is None:
        raise UserError(f"device {profile.name!r} uses transport {profile.transport!r}, whose "
                        f"backend ({BACKENDS[profile.transport]}) is not installed")
    return mod.open_device(profile)


def probe(profile: DeviceProfile) -> Probe:
    """Whether the device is reachable now; never raises."""
    mod = _backend(profile)
    if mod is None:
        return Probe(None, f"unknown: {profile.transport.upper()} backend not installed")
    try:
        return mod.probe(profile)
    except Exception as e:  # a probe must never take down `devices`
        return Probe(False, f"{type(e).__name__}: {e}")


__all__ = ["Device", "DeviceProfile", "Probe", "open_device", "probe"]

"""Devices: the protocol (base.py), profiles (profiles.py), the backend registry (backends.py)
and one module per backend (host.py, android.py on adb_transport.py, coreml.py)."""

from merino_mobile.device.backends import BACKENDS, open_device, probe
from merino_mobile.device.base import Device, Probe
from merino_mobile.device.profiles import DeviceProfile

__all__ = ["BACKENDS", "Device", "DeviceProfile", "Probe", "open_device", "probe"]

"""Devices: the protocol (base.py), profiles (profiles.py), the backend registry (backends.py),
readiness checklists (checklist.py) and one module per backend (host.py, android.py on
adb_transport.py, coreml.py)."""

from merino_mobile.device.backends import BACKENDS, open_device, probe, readiness
from merino_mobile.device.base import Device, Probe
from merino_mobile.device.checklist import Check
from merino_mobile.device.profiles import DeviceProfile

__all__ = ["BACKENDS", "Check", "Device", "DeviceProfile", "Probe", "open_device", "probe",
           "readiness"]

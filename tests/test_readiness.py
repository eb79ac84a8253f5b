"""The readiness checklist of a device, walked through the loopback adbd (tests/adbd).

Each test takes one piece a phone needs away (the runner, the right model, the key, the TCP
address, USB itself, the udev permission, the thermal zones, the runner's version) and checks
the first line the walk stops with, through the API (`readiness`, `open_device`, `probe`) and
through the CLI (`merino-mobile profile --device NAME`, `merino-mobile devices NAME`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from merino_mobile.device import Probe, adb_transport, checklist, open_device, probe, readiness
from merino_mobile.device.adb_transport import UsbPhone
from merino_mobile.device.checklist import Check, first_missing, is_ready
from merino_mobile.device.host import runtime_version
from merino_mobile.device.profiles import read_profile
from merino_mobile.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from adbd import LoopbackAdbd, PhoneSandbox  # noqa: E402
from cli_runner import run  # noqa: E402

NAMES = ["transport", "phone", "key", "model", "runner", "runner version", "thermal zones"]


def make_runner(path: Path, body: bytes = b"#!/bin/sh\nexit 0\n", mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    path.chmod(mode)
    return path


def phone_profile(path: Path, *, address: str | None = None, serial: str | None = None,
                  runner: Path | str | None = None, extra: str = "",
                  cooldown: str = "max_temp_c = 45.0") -> Path:
    """A phone profile at `path` named after the file (key beside it, created on first use)."""
    target = f'address = "{address}"' if address else f'serial = "{serial}"'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""
schema_version = 1
name = "{path.stem}"
transport = "adb"
runtimes = ["executorch"]
threads = 2

[adb]
{target}
adbkey = "{path.parent / 'android' / 'adbkey'}"
remote_dir = "/data/local/tmp/mm"
runner = "{runner or path.parent / 'no-such-runner'}"
{extra}

[cooldown]
{cooldown}
wait_s = 0.2
max_wait_s = 1.0
""")
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def states(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.state for c in checks}


@pytest.fixture
def phone(tmp_path):
    with LoopbackAdbd(tmp_path / "phone") as d:
        yield d


@pytest.fixture
def runner(tmp_path) -> Path:
    return make_runner(tmp_path / "bin" / "executor_runner")


def test_a_ready_phone_passes_every_check_in_order(tmp_path, phone, runner):
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=phone.address,
                                      runner=runner, extra='thermal_zones = ["BIG", "GONE"]'))
    checks = readiness(prof)
    assert [c.name for c in checks] == NAMES
    assert is_ready(checks) and first_missing(checks) is None
    got = {c.name: c for c in checks}
    assert got["model"].detail == f"Pixel 7 at {phone.address}"
    assert got["runner"].detail == f"{runner} (a script, not an ELF binary)"
    assert got["runner version"].state == "unknown"  # no stamp: not built by `runner build`
    assert got["thermal zones"].detail == "BIG 41 °C (GONE not on this phone)"
    p = probe(prof)
    assert (p.reachable, p.detail) == (True, f"Pixel 7 at {phone.address}")
    dev = open_device(prof, "executorch")
    try:
        assert dev.runtimes() == ["executorch"]
    finally:
        dev.cleanup()


def test_no_runner_is_the_first_line_with_the_build_command(tmp_path, phone):
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=phone.address))
    checks = readiness(prof)
    gap = first_missing(checks)
    assert gap.name == "runner" and states(checks) == {
        "transport": "ok", "phone": "ok", "key": "ok", "model": "ok", "runner": "missing",
        "runner version": "unknown", "thermal zones": "unknown"}
    assert gap.line() == (f"no ExecuTorch runner binary for loop at {tmp_path / 'no-such-runner'}"
                          "; build one with `merino-mobile runner build --ndk DIR "
                          "--executorch-src DIR` (docs/phones.md), or set runner = \"PATH\" "
                          f"under [adb] in {prof.path}")
    assert checks[-1].detail == "not checked (runner is missing)"
    with pytest.raises(UserError) as e:
        open_device(prof, "executorch")
    assert str(e.value) == f"loop: {gap.line()}"
    assert probe(prof) == Probe(False, gap.line())


def test_a_runner_for_another_abi_or_not_executable(tmp_path, phone):
    # An x86-64 ELF header: a runner built for the host instead of the phone.
    elf = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + \
        (62).to_bytes(2, "little") + bytes(40)
    host_built = make_runner(tmp_path / "x86" / "executor_runner", elf)
    assert checklist.elf_abi(host_built) == "x86_64"
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=phone.address,
                                      runner=host_built))
    gap = first_missing(readiness(prof))
    assert gap.name == "runner"
    assert gap.detail == f"{host_built} is built for x86_64, the phone runs arm64-v8a"
    assert "merino-mobile runner build --ndk" in gap.fix

    plain = make_runner(tmp_path / "plain" / "executor_runner", mode=0o644)
    prof = read_profile(phone_profile(tmp_path / "loop2.toml", address=phone.address,
                                      runner=plain))
    gap = first_missing(readiness(prof))
    assert gap.line() == f"{plain} is not executable; chmod +x {plain}"


def test_wrong_model_stops_before_the_runner(tmp_path, phone, runner):
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=phone.address,
                                      runner=runner, extra='expect_model = ["Pixel 8"]'))
    checks = readiness(prof)
    gap = first_missing(checks)
    assert gap.name == "model" and states(checks)["runner"] == "unknown"
    assert gap.line() == (f"{prof.path} is for ['Pixel 8'] but the phone at {phone.address} "
                          "is a 'Pixel 7'; use that phone's profile (or copy one and set "
                          "expect_model)")


def test_key_refused(tmp_path, runner):
    with LoopbackAdbd(tmp_path / "phone", auth="reject") as d:
        prof = read_profile(phone_profile(tmp_path / "loop.toml", address=d.address,
                                          runner=runner, extra="auth_timeout_s = 1.0"))
        checks = readiness(prof)
    gap = first_missing(checks)
    key = tmp_path / "android" / "adbkey"
    assert gap.name == "key" and states(checks)["phone"] == "ok"
    assert gap.detail == f"{d.address}: the phone did not accept this computer's key ({key})"
    assert gap.fix.startswith("unlock it and accept the 'Allow USB debugging' prompt")


def test_tcp_unreachable_and_a_bad_address(tmp_path, runner):
    port = closed_port()
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=f"127.0.0.1:{port}",
                                      runner=runner))
    checks = readiness(prof)
    gap = first_missing(checks)
    assert gap.name == "phone" and states(checks)["transport"] == "ok"
    assert gap.detail.startswith(f"nothing answers at 127.0.0.1:{port} (")
    assert "`adb tcpip 5555`" in gap.fix and str(prof.path) in gap.fix

    bad = read_profile(phone_profile(tmp_path / "bad.toml", address="phone.local",
                                     runner=runner))
    gap = first_missing(readiness(bad))
    assert gap.name == "transport" and gap.line() == (
        f"ADB address 'phone.local' in {bad.path} is not host:port; write it as address = "
        '"192.168.1.20:5555" under [adb]')


def test_usb_missing(tmp_path, monkeypatch):
    """USB missing is simulated: the availability function is monkeypatched to say what it says
    on a machine without adb-shell's usb extra (this venv has it)."""
    monkeypatch.setattr(adb_transport, "usb_status", lambda: (
        False, "USB needs adb-shell's usb extra (the libusb1 package)",
        "`pip install 'adb-shell[usb]' libusb-package` (what merino-mobile's install brings)"))
    prof = read_profile(phone_profile(tmp_path / "usb.toml", serial="auto"))
    checks = readiness(prof)
    assert states(checks)["transport"] == "missing" and checks[1].detail == \
        "not checked (transport is missing)"
    assert first_missing(checks).line() == (
        "USB needs adb-shell's usb extra (the libusb1 package); `pip install 'adb-shell[usb]' "
        "libusb-package` (what merino-mobile's install brings)")


def test_usb_phone_visible_but_not_openable_names_the_udev_rule(tmp_path, monkeypatch):
    """A phone libusb lists but may not open (simulated: no USB device can be attached here)
    gives the udev rule for its vendor; none at all says how to enable USB debugging; a serial
    that is not there lists the ones that are."""
    prof = read_profile(phone_profile(tmp_path / "usb.toml", serial="auto"))
    monkeypatch.setattr(adb_transport, "find_usb_phones", lambda: [
        UsbPhone(0x04E8, 0x6860, None, "USBErrorAccess")])
    gap = first_missing(readiness(prof))
    assert gap.name == "phone"
    assert gap.detail == ("a phone is on USB (04e8:6860) but this user may not open it "
                          "(USBErrorAccess)")
    if sys.platform.startswith("linux"):
        assert ('SUBSYSTEM=="usb", ATTR{idVendor}=="04e8", MODE="0666", GROUP="plugdev"'
                in gap.fix)
        assert "`sudo udevadm control --reload-rules`" in gap.fix and "plugdev" in gap.fix

    monkeypatch.setattr(adb_transport, "find_usb_phones", lambda: [])
    gap = first_missing(readiness(prof))
    assert gap.detail == "no phone in USB debugging mode on USB" and "USB debugging" in gap.fix

    monkeypatch.setattr(adb_transport, "find_usb_phones", lambda: [
        UsbPhone(0x18D1, 0x4EE7, "28201FDH2000XY")])
    wanted = read_profile(phone_profile(tmp_path / "usb2.toml", serial="OTHER123"))
    gap = first_missing(readiness(wanted))
    assert gap.detail == "no phone with serial OTHER123 on USB (there: 28201FDH2000XY)"
    # the phone is there and openable: the walk goes on to the key (no adbd on this USB)
    checks = readiness(read_profile(phone_profile(tmp_path / "usb3.toml",
                                                  serial="28201FDH2000XY")))
    assert states(checks)["phone"] == "ok"


def test_thermal_zones_the_phone_does_not_have(tmp_path, runner):
    with LoopbackAdbd(tmp_path / "phone") as d:
        prof = read_profile(phone_profile(tmp_path / "loop.toml", address=d.address,
                                          runner=runner, extra='thermal_zones = ["cpu-big"]'))
        gap = first_missing(readiness(prof))
    assert gap.name == "thermal zones"
    assert gap.line() == (f"none of the thermal zones ['cpu-big'] of {prof.path} is on the "
                          "phone; set thermal_zones = [...] under [adb] to some of: BIG, G3D, "
                          "LITTLE, MID, TPU, battery, skin-therm")

    sandbox = PhoneSandbox(tmp_path / "cold", thermal={})
    with LoopbackAdbd(tmp_path / "cold", sandbox=sandbox) as d:
        prof = read_profile(phone_profile(tmp_path / "cold.toml", address=d.address,
                                          runner=runner))
        gap = first_missing(readiness(prof))
        assert gap.detail.startswith("the phone reports no readable thermal zone")
        assert "remove max_temp_c" in gap.fix
        lenient = read_profile(phone_profile(tmp_path / "lenient.toml", address=d.address,
                                             runner=runner, cooldown="pause_s = 0.0"))
        checks = readiness(lenient)
    assert is_ready(checks) and states(checks)["thermal zones"] == "unknown"


def test_runner_version_from_the_build_stamp(tmp_path, phone, runner):
    here = runtime_version("executorch")
    assert here is not None
    src = tmp_path / "executorch-src"
    src.mkdir()
    (src / "version.txt").write_text("1.0.0a0\n")
    stamp = checklist.write_runner_stamp(runner, src)
    assert stamp == checklist.runner_stamp(runner) and stamp.read_text() == "1.0.0a0\n"
    prof = read_profile(phone_profile(tmp_path / "loop.toml", address=phone.address,
                                      runner=runner))
    gap = first_missing(readiness(prof))
    assert gap.name == "runner version"
    assert gap.detail == f"the runner is built from ExecuTorch 1.0.0a0, models are exported " \
        f"with {here}"
    assert f"ExecuTorch v{checklist.base_version(here)} sources" in gap.fix
    (src / "version.txt").write_text(checklist.base_version(here) + "\n")
    checklist.write_runner_stamp(runner, src)
    got = {c.name: c for c in readiness(prof)}
    assert got["runner version"].state == "ok" and is_ready(list(got.values()))
    assert checklist.write_runner_stamp(runner, tmp_path / "no-sources") is None


def test_cli_profile_and_devices_stop_at_the_first_missing_piece(tmp_path, monkeypatch, capsys,
                                                                runner):
    ws = tmp_path / "ws"
    port = closed_port()
    with LoopbackAdbd(tmp_path / "phone") as d:
        phone_profile(ws / "devices" / "norunner.toml", address=d.address)
        phone_profile(ws / "devices" / "pixel8.toml", address=d.address, runner=runner,
                      extra='expect_model = ["Pixel 8"]')
        phone_profile(ws / "devices" / "gone.toml", address=f"127.0.0.1:{port}", runner=runner)
        phone_profile(ws / "devices" / "ok.toml", address=d.address, runner=runner)
        expected = {}
        for name in ("norunner", "pixel8", "gone"):
            prof = read_profile(ws / "devices" / f"{name}.toml")
            expected[name] = f"{name}: {first_missing(readiness(prof)).line()}"
            code, out, err = run(monkeypatch, capsys, "profile", "--device", name,
                                 "--workspace", str(ws))
            assert code == 2 and "Traceback" not in err
            # the readiness line is the only line: nothing of the grid is said before it
            assert " ".join(err.split()) == f"error: {expected[name]}", err

            code, out, err = run(monkeypatch, capsys, "devices", name, "--workspace", str(ws))
            assert code == 1 and " ".join(err.split()) == f"not ready: {expected[name]}"
            for check in NAMES:
                assert check in out

            code, out, err = run(monkeypatch, capsys, "devices", name, "--json", "--workspace",
                                 str(ws))
            doc = json.loads(out)
            assert code == 1 and err == "" and doc["device"] == name and not doc["ready"]
            assert [c["name"] for c in doc["checks"]] == NAMES
            assert all(set(c) == {"name", "ok", "detail", "fix"} for c in doc["checks"])
            gap = next(c for c in doc["checks"] if c["ok"] is False)
            assert f"{name}: {gap['detail']}; {gap['fix']}" == expected[name]

        code, out, err = run(monkeypatch, capsys, "devices", "ok", "--json", "--workspace",
                             str(ws))
        doc = json.loads(out)
        assert code == 0 and doc["ready"] and doc["checks"][3]["detail"] == \
            f"Pixel 7 at {d.address}"

        code, out, err = run(monkeypatch, capsys, "devices", "--json", "--workspace", str(ws))
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)["devices"]}
    assert rows["ok"]["reachable"] is True and rows["ok"]["detail"] == f"Pixel 7 at {d.address}"
    assert rows["gone"]["reachable"] is False
    assert rows["gone"]["detail"] == expected["gone"].removeprefix("gone: ")
    assert set(rows["host"]) == {"name", "transport", "path", "description", "runtimes",
                                 "threads", "cpus", "reachable", "detail"}


def test_host_readiness(tmp_path, monkeypatch, capsys):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "ortonly.toml").write_text(
        'name = "ortonly"\ntransport = "local"\nruntimes = ["onnxruntime"]\n')
    (tmp_path / "devices" / "manycores.toml").write_text(
        'name = "manycores"\ntransport = "local"\ncpus = [4000]\n')
    ort = read_profile(tmp_path / "devices" / "ortonly.toml")
    assert is_ready(readiness(ort)) and is_ready(readiness(ort, "onnxruntime"))
    gap = first_missing(readiness(ort, "executorch"))
    assert gap.line() == (f"cannot run executorch artifacts: it has onnxruntime (see {ort.path})"
                          "; export for one of those with --format onnx")
    with pytest.raises(UserError, match="^ortonly: cannot run executorch artifacts"):
        open_device(ort, "executorch")
    many = read_profile(tmp_path / "devices" / "manycores.toml")
    checks = readiness(many)
    assert states(checks) == {"runtimes": "ok", "cpus": "missing"}
    assert "cpus [4000] are not available on this host" in first_missing(checks).line()
    code, out, err = run(monkeypatch, capsys, "devices", "host", "--workspace", str(tmp_path))
    assert code == 0 and "host: ready" in out and "runtimes" in out
    code, out, err = run(monkeypatch, capsys, "devices", "nosuch", "--workspace", str(tmp_path))
    assert code == 2 and "known: " in err


def test_walk_never_ends_in_a_traceback():
    def broken() -> Check:
        raise KeyError("ro.product.model")

    checks = checklist.walk([("first", lambda: checklist.ok("first", "fine")),
                             ("second", broken), ("third", lambda: checklist.ok("third", "x"))])
    assert states(checks) == {"first": "ok", "second": "missing", "third": "unknown"}
    assert "KeyError" in checks[1].detail and "devices NAME --json" in checks[1].fix
    assert "\n" not in Check("x", "missing", "a\nb", "c\n d").line()
    with pytest.raises(ValueError, match="check state"):
        Check("x", "fine", "")


def test_usb_loads_the_wheel_s_libusb_when_the_system_has_none():
    """In a fresh process where usb1's own search for a system libusb fails (as on a machine
    without one), USB still works, on the library the libusb-package wheel ships."""
    code = (
        "import usb1._libusb1 as L\n"
        "def nothing():\n"
        "    raise OSError(2, 'cannot find a suitable libusb-1.0')\n"
        "L.__dict__['__getLibrary'] = nothing\n"
        "from merino_mobile.device import adb_transport as a\n"
        "ok, what, fix = a.usb_status()\n"
        "print(ok, what)\n"
        "print(a.find_usb_phones())\n")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("True USB through libusb from libusb-package ")
    assert second.startswith("[")


def test_usb_works_after_the_install():
    ok, why = adb_transport.usb_available()
    assert ok, why
    assert why.startswith("USB through ")

"""The loopback adbd checked against Google's own client (Debian's `adb` package).

Debian's adb 29 talks to the fixture as to any phone without shell protocol v2: `shell:` and
`exec:` services, and the sync service (STAT, SEND/DATA/DONE, RECV, LIST for directories).

If `adb connect`, `push`, `shell` and `pull` from the real client work against the fixture, the
fixture speaks the protocol a phone speaks, and tests of our own ADB code against it mean
something. The adb server runs on a private port with HOME in a tmp dir, so the user's keys and
running adb server are never touched; it is killed at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from adbd import LoopbackAdbd  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbClient:
    """Debian's adb client with a private server port and a private HOME."""

    def __init__(self, home: Path) -> None:
        exe = shutil.which("adb")
        if exe is None:
            pytest.fail("Debian's adb client is not installed; install it with "
                        "`apt-get install -y adb` (.ci/run does this in CI)")
        self.exe, self.port = exe, free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("ANDROID_SDK_HOME", "ANDROID_USER_HOME", "ADB_VENDOR_KEYS",
                                 "ANDROID_SERIAL", "ADB_SERVER_SOCKET")}
        self.env["HOME"] = str(home)

    def __call__(self, *args: str, timeout: float = 30,
                 text: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([self.exe, "-P", str(self.port), *args], env=self.env,
                              capture_output=True, text=text, timeout=timeout)

    def state(self, serial: str) -> str:
        for line in self("devices").stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == serial:
                return parts[1]
        return "absent"

    def wait_state(self, serial: str, want: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        state = self.state(serial)
        while state != want and time.monotonic() < deadline:
            time.sleep(0.3)
            state = self.state(serial)
        return state


@pytest.fixture
def adb(tmp_path):
    client = AdbClient(tmp_path / "home")
    yield client
    client("kill-server", timeout=15)


def test_adb_connect_push_shell_pull(adb, tmp_path):
    payload = os.urandom(300_000)  # several 64 KiB sync chunks and several WRTE packets
    local = tmp_path / "payload.bin"
    local.write_bytes(payload)
    with LoopbackAdbd(tmp_path / "phone") as phone:
        serial = phone.address
        out = adb("connect", serial)
        # First contact: adb offers its key, the phone (the fixture's user) accepts it.
        assert out.returncode == 0 and serial in out.stdout, out
        assert adb.wait_state(serial, "device") == "device"

        pushed = adb("-s", serial, "push", str(local), "/data/local/tmp/fid/payload.bin")
        assert pushed.returncode == 0, pushed.stderr
        on_phone = phone.sandbox.host_path("/data/local/tmp/fid/payload.bin")
        assert on_phone.read_bytes() == payload

        shell = adb("-s", serial, "shell", "sha256sum /data/local/tmp/fid/payload.bin; "
                    "getprop ro.product.model; echo $((6*7))")
        assert shell.returncode == 0, shell.stderr
        lines = shell.stdout.splitlines()
        assert lines[0] == f"{hashlib.sha256(payload).hexdigest()}  /data/local/tmp/fid/payload.bin"
        assert lines[1:] == ["Pixel 7", "42"]

        raw = adb("-s", serial, "exec-out", "cat /data/local/tmp/fid/payload.bin", text=False)
        assert raw.returncode == 0 and raw.stdout == payload  # exec: is binary-clean

        back = tmp_path / "back.bin"
        pulled = adb("-s", serial, "pull", "/data/local/tmp/fid/payload.bin", str(back))
        assert pulled.returncode == 0, pulled.stderr
        assert back.read_bytes() == payload

        tree = tmp_path / "tree"
        pulled = adb("-s", serial, "pull", "/data/local/tmp/fid", str(tree))
        assert pulled.returncode == 0, pulled.stderr
        assert (tree / "payload.bin").read_bytes() == payload
        assert adb("disconnect", serial).returncode == 0


def test_adb_key_signature_and_unauthorized_state(adb, tmp_path):
    """A known key gets in by its token signature; an unknown key stays unauthorized."""
    with LoopbackAdbd(tmp_path / "first") as phone:
        adb("connect", phone.address)
        assert adb.wait_state(phone.address, "device") == "device"
        adb("disconnect", phone.address)
    pub = (adb.home / ".android" / "adbkey.pub").read_bytes()

    # Same key, phone in "never accept new keys" mode: only a valid signature gets in.
    with LoopbackAdbd(tmp_path / "known", auth="reject", authorized_keys=(pub,)) as phone:
        out = adb("connect", phone.address)
        assert f"connected to {phone.address}" in out.stdout, out
        assert adb.wait_state(phone.address, "device") == "device"
        adb("disconnect", phone.address)

    with LoopbackAdbd(tmp_path / "stranger", auth="reject") as phone:
        adb("connect", phone.address)
        assert adb.wait_state(phone.address, "unauthorized") == "unauthorized"
        adb("disconnect", phone.address)

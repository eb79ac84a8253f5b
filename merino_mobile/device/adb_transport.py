"""How bytes reach a phone: ADB spoken directly by adb-shell, over TCP or USB.

This module knows nothing of models, runners or thermal zones; `android.py` builds the phone on
top of it. It holds:

- the user's key: `ensure_adb_key` finds or creates ~/.android/adbkey in adb's own format, so the
  phone's "Allow USB debugging" prompt appears once and is remembered, for us and for adb alike;
- USB availability (adb-shell's usb extra) and detection of Google's adb server, which owns
  USB-attached phones while it runs;
- `AdbTransport`: run/check/sha256/push/pull against one phone's adbd (no adb server). Every
  command is an argv whose items are quoted with shlex.quote, so names and paths never reach the
  device shell as code; exit codes and stderr come back through a wrapper around the command (ADB
  shell protocol v1 carries only stdout). A lost connection is retried once, then `DeviceGone`;
- `reachable` and `list_adb_devices`: which phones this computer can see now.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import secrets
import shlex
import socket
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from merino_mobile.device.base import Probe, RunResult, file_sha256
from merino_mobile.device.profiles import AdbSettings, DeviceProfile
from merino_mobile.errors import UserError

DEFAULT_KEY = "~/.android/adbkey"
ADB_SERVER_PORT = 5037
UNAUTHORIZED = ("the phone did not accept this computer's key: unlock it and accept the "
                "'Allow USB debugging' prompt (tick 'Always allow from this computer'), then retry")


class DeviceGone(UserError):
    """The phone went away mid-run (cable, Wi-Fi, reboot). Finished measurements are kept."""


# -- keys ----------------------------------------------------------------------------------------

def ensure_adb_key(path: str | Path = DEFAULT_KEY) -> Path:
    """The adb private key at `path`, created (with `path`.pub, mode 0600) if missing.

    Same format as adb's own (PEM private key, Android public key blob), so a phone that already
    trusts this computer's adb trusts us, and vice versa.
    """
    key = Path(path).expanduser()
    if not key.exists():
        from adb_shell.auth.keygen import keygen

        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            keygen(str(key))
        finally:
            os.umask(old)
        key.chmod(0o600)
    elif not Path(f"{key}.pub").exists():
        from adb_shell.auth.keygen import write_public_keyfile

        write_public_keyfile(str(key), f"{key}.pub")
    return key


def _signer(path: str | Path) -> Any:
    from adb_shell.auth.sign_cryptography import CryptographySigner

    key = ensure_adb_key(path)
    try:
        return CryptographySigner(str(key))
    except (ValueError, TypeError) as e:
        raise UserError(f"{key} is not an adb private key ({e}); move it away and rerun to "
                        "create a new one (the phone will ask to allow this computer again)"
                        ) from None


def usb_serial(serial: str | None) -> str | None:
    """A profile's serial; "auto" (the shipped profiles) means the one phone on USB."""
    return None if serial in (None, "", "auto") else serial


def adb_server_running(port: int = ADB_SERVER_PORT) -> bool:
    """Whether Google's adb server listens on this host (it then owns USB-attached phones)."""
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def usb_available() -> tuple[bool, str]:
    """adb-shell's USB support needs the libusb1 package (adb-shell's usb extra)."""
    try:
        import usb1  # noqa: F401
        from adb_shell.transport.usb_transport import UsbTransport  # noqa: F401
    except ImportError:
        return False, ("USB needs the libusb1 package (`pip install libusb1`, what adb-shell's usb "
                       "extra installs); TCP works without it")
    return True, "libusb1"


# -- transport -----------------------------------------------------------------------------------

def _lost_errors() -> tuple[type[BaseException], ...]:
    from adb_shell import exceptions as ex

    return (OSError, ex.TcpTimeoutException, ex.AdbConnectionError, ex.InvalidCommandError,
            ex.InvalidChecksumError, ex.InvalidResponseError, ex.UsbReadFailedError,
            ex.UsbWriteFailedError, ex.AdbTimeoutError)


class AdbTransport:
    """Commands and files to one phone over adb-shell (TCP address or USB serial)."""

    def __init__(self, *, address: str | None = None, serial: str | None = None,
                 key: str | Path = DEFAULT_KEY, auth_timeout_s: float = 30.0,
                 io_timeout_s: float = 10.0, scratch: str = "/data/local/tmp",
                 reconnects: int = 1) -> None:
        self.address, self.serial, self.key = address, serial, key
        self.auth_timeout_s, self.io_timeout_s = auth_timeout_s, io_timeout_s
        self.scratch, self.reconnects = scratch, reconnects
        self._dev: Any = None

    @classmethod
    def from_settings(cls, settings: AdbSettings, **options: Any) -> AdbTransport:
        """The transport a profile's [adb] table names (TCP address, else USB serial)."""
        return cls(address=settings.address, serial=usb_serial(settings.serial),
                   key=settings.adbkey, **options)

    @property
    def target(self) -> str:
        """The phone in words, for messages: its TCP address or its USB serial."""
        return self.address or f"USB {self.serial or '(first phone)'}"

    # connection
    def connect(self) -> None:
        """Open the ADB connection: CNXN, then AUTH with our key (signature first; if the phone
        does not know the key, it is offered and the phone asks its user)."""
        signer = _signer(self.key)
        dev = self._tcp_device() if self.address else self._usb_device()
        offered = []
        try:
            dev.connect(rsa_keys=[signer], auth_timeout_s=self.auth_timeout_s,
                        transport_timeout_s=self.io_timeout_s, read_timeout_s=self.io_timeout_s,
                        auth_callback=lambda _dev: offered.append(True))
        except Exception as e:
            with contextlib.suppress(Exception):
                dev.close()
            from adb_shell import exceptions as ex

            if isinstance(e, ex.DeviceAuthError) or (offered and isinstance(
                    e, ex.TcpTimeoutException | ex.AdbTimeoutError | ex.UsbReadFailedError)):
                # adb-shell offered our public key and waited auth_timeout_s for the user.
                raise UserError(f"{self.target}: {UNAUTHORIZED}") from None
            if not self.address and "BUSY" in f"{type(e).__name__} {e}".upper():
                raise UserError(self._usb_busy()) from None
            if isinstance(e, OSError):
                raise self._unreachable(e) from None
            if isinstance(e, _lost_errors()):
                raise DeviceGone(f"{self.target}: the phone stopped answering during the ADB "
                                 f"handshake ({type(e).__name__}: {e})") from None
            raise
        self._dev = dev

    def _tcp_device(self) -> Any:
        from adb_shell.adb_device import AdbDevice
        from adb_shell.transport.tcp_transport import TcpTransport

        class EofTcpTransport(TcpTransport):
            # adb-shell treats a closed socket as "no data yet" and waits out the whole read
            # timeout; a phone that went away should be noticed at once.
            def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
                data = super().bulk_read(numbytes, transport_timeout_s)
                if numbytes and not data:
                    raise ConnectionResetError(104, "adbd closed the connection")
                return data

        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"ADB address {self.address!r} must be host:port, e.g. "
                            "192.168.1.20:5555")
        return AdbDevice(EofTcpTransport(host, int(port)),
                         default_transport_timeout_s=self.io_timeout_s)

    def _usb_device(self) -> Any:
        ok, why = usb_available()
        if not ok:
            raise UserError(f"cannot reach {self.target}: {why}")
        from adb_shell import exceptions as ex
        from adb_shell.adb_device import AdbDeviceUsb

        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.io_timeout_s)
        except ex.UsbDeviceNotFoundError:
            if adb_server_running():
                raise UserError(self._usb_busy()) from None
            which = f" with serial {self.serial}" if self.serial else ""
            raise UserError(f"no phone{which} on USB: plug it in, enable "
                            "Developer options > USB debugging, and check the serial with "
                            "`merino-mobile devices`") from None

    def _usb_busy(self) -> str:
        return (f"{self.target} is held by a running adb server (Google's adb owns USB phones "
                "while it runs): run `adb kill-server`, then retry")

    def _unreachable(self, e: OSError) -> UserError:
        return DeviceGone(f"cannot reach adbd at {self.target} ({e.strerror or e}): on the phone "
                          "enable Wireless debugging or run `adb tcpip 5555` once over USB, and "
                          "check the address")

    def _device(self) -> Any:
        if self._dev is None:
            self.connect()
        return self._dev

    def close(self) -> None:
        """Close the connection; the next command reconnects."""
        if self._dev is not None:
            with contextlib.suppress(Exception):
                self._dev.close()
        self._dev = None

    def _call(self, what: str, fn: Any) -> Any:
        """Run one adb-shell call; on a lost connection reconnect (`reconnects` times) and
        repeat it (every call we make is idempotent), then give up with DeviceGone."""
        for attempt in range(self.reconnects + 1):
            try:
                dev = self._device()
            except DeviceGone as e:
                if attempt == 0:
                    raise
                raise DeviceGone(
                    f"lost the connection to {self.target} during {what}, and reconnecting "
                    f"failed ({e}); check the cable or Wi-Fi, then rerun the same command; "
                    "finished measurements are kept") from None
            try:
                return fn(dev)
            except UserError:
                raise
            except _lost_errors() as e:
                self.close()
                if attempt == self.reconnects:
                    raise DeviceGone(
                        f"lost the connection to {self.target} during {what} ({type(e).__name__}"
                        f"{': ' + str(e) if str(e) else ''}): check the cable or Wi-Fi, then "
                        "rerun the same command; finished measurements are kept") from None
                time.sleep(0.5)
        raise AssertionError("unreachable")

    # commands
    def run(self, argv: Sequence[str], timeout: float | None = None,
            stdin: str | None = None) -> RunResult:
        """Run argv on the phone. Each item is shell-quoted; exit code and stderr come back
        through a wrapper. `timeout` is enforced on the phone (toybox `timeout`), so a hung
        process is killed there, not only abandoned here."""
        if not argv:
            raise ValueError("empty argv")
        nonce = secrets.token_hex(8)
        marker = f"__merino_rc_{nonce}__"
        errfile = posixpath.join(self.scratch, f".merino-stderr-{nonce}")
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        if timeout is not None:
            cmd = f"timeout -s KILL {max(1, math.ceil(timeout))} {cmd}"
        if stdin is not None:
            cmd = f"printf %s {shlex.quote(stdin)} | {cmd}"
        q = shlex.quote(errfile)
        script = (f"{cmd} 2>{q}; __rc=$?; echo; echo {marker}$__rc; cat {q} 2>/dev/null; "
                  f"rm -f {q}")
        wait = (timeout or self.io_timeout_s * 6) + self.io_timeout_s
        start = time.monotonic()
        out = self._call(f"`{argv[0]}`", lambda d: d.shell(
            script, timeout_s=wait, read_timeout_s=wait, decode=False))
        text = out.decode("utf-8", "replace")
        head, sep, tail = text.partition("\n" + marker)
        if not sep:
            raise DeviceGone(f"{self.target}: `{argv[0]}` ended without an exit status "
                             "(connection cut?); rerun the same command")
        rc_text, _, stderr = tail.partition("\n")
        rc = int(rc_text.strip() or 255)
        timed_out = (timeout is not None and rc in (124, 137)
                     and time.monotonic() - start >= 0.9 * timeout)
        return RunResult(rc, head, stderr, timed_out)

    def check(self, argv: Sequence[str], what: str, timeout: float | None = None) -> str:
        """run() that must succeed; a failure is a UserError naming `what`."""
        r = self.run(argv, timeout=timeout)
        if not r.ok:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise UserError(f"{self.target}: {what} failed (exit {r.returncode}"
                            f"{', timed out' if r.timed_out else ''}): "
                            f"{msg[-1] if msg else 'no output'}")
        return r.stdout

    def sha256(self, remote: str) -> str | None:
        """sha256 of a file on the phone (toybox sha256sum), None if it does not exist."""
        r = self.run(["sha256sum", remote])
        word = r.stdout.split()[0] if r.ok and r.stdout.split() else ""
        return word.lower() if len(word) == 64 else None

    # files
    def push(self, local: Path, remote: str) -> None:
        """Push and verify with sha256sum on the phone; a mismatch is retried once."""
        local = Path(local)
        want = file_sha256(local)
        mode = stat.S_IFREG | (0o755 if os.access(local, os.X_OK) else 0o644)
        self.check(["mkdir", "-p", posixpath.dirname(remote)], f"mkdir for {remote}")
        got = None
        for _attempt in range(2):
            self._call(f"push of {local.name}", lambda d: d.push(
                str(local), remote, st_mode=mode, read_timeout_s=max(60.0, self.io_timeout_s)))
            got = self.sha256(remote)
            if got == want:
                return
        self.run(["rm", "-f", remote])
        raise UserError(f"pushed {local} to {self.target}:{remote} twice and the phone reports "
                        f"sha256 {got or 'none'} instead of {want}: the transfer is being "
                        "corrupted (try another cable or port, or check free space with "
                        "`adb shell df /data`)")

    def pull(self, remote: str, local: Path) -> None:
        """Copy one file from the phone to `local` (written via a temporary file)."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        try:
            self._call(f"pull of {remote}", lambda d: d.pull(
                remote, str(tmp), read_timeout_s=max(60.0, self.io_timeout_s)))
        except Exception as e:
            tmp.unlink(missing_ok=True)
            from adb_shell import exceptions as ex

            if isinstance(e, ex.AdbCommandFailureException | ex.InvalidResponseError):
                raise UserError(f"cannot pull {remote} from {self.target}: {e}") from None
            raise
        tmp.replace(local)

    def pull_tree(self, remote_dir: str, local_dir: Path) -> tuple[list[Path], list[str]]:
        """Pull the regular files directly under `remote_dir` into `local_dir`.

        Names come from the phone; any that could land outside `local_dir` ('..', '/x',
        'a/b', NUL, empty) is refused and returned in the second list, never written.
        """
        entries = self._call(f"listing of {remote_dir}", lambda d: d.list(remote_dir))
        pulled, refused = [], []
        for entry in entries:
            name = entry.filename if isinstance(entry.filename, str) else bytes(
                entry.filename).decode("utf-8", "surrogateescape")
            if name in (".", ".."):
                continue
            target = safe_child(local_dir, name)
            if target is None:
                refused.append(name)
                continue
            if not stat.S_ISREG(entry.mode):
                continue
            self.pull(posixpath.join(remote_dir, name), target)
            pulled.append(target)
        return pulled, refused


def safe_child(directory: Path, name: str) -> Path | None:
    """directory/name if that is a plain file name inside directory, else None."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name != name.strip("\n")):
        return None
    base = Path(directory).resolve()
    target = (base / name).resolve()
    return target if target.parent == base else None


# -- which phones are there ----------------------------------------------------------------------

def reachable(settings: AdbSettings) -> Probe:
    """Reachable now? Connects (short timeouts, no retry), reads the model, disconnects. Never
    raises."""
    t = AdbTransport.from_settings(settings, auth_timeout_s=5.0, io_timeout_s=3.0, reconnects=0)
    try:
        t.connect()
        model = t.check(["getprop", "ro.product.model"], "getprop").strip()
        return Probe(True, f"{model} at {t.target}")
    except UserError as e:
        return Probe(False, str(e))
    except Exception as e:
        return Probe(False, f"{type(e).__name__}: {e}")
    finally:
        t.close()


def list_adb_devices(profiles: Sequence[DeviceProfile] = ()) -> list[dict]:
    """Phones this computer can see: USB devices in ADB mode (needs adb-shell[usb]) and the
    TCP/USB targets configured in `profiles`, each with reachable and a reason."""
    rows: list[dict] = []
    ok, why = usb_available()
    if ok:
        rows += _usb_rows()
    else:
        rows.append({"transport": "usb", "serial": None, "profile": None, "reachable": None,
                     "reason": why})
    for prof in profiles:
        if prof.transport != "adb" or prof.adb is None:
            continue
        p = reachable(prof.adb)
        rows.append({"transport": "tcp" if prof.adb.address else "usb",
                     "serial": prof.adb.address or prof.adb.serial, "profile": prof.name,
                     "reachable": p.reachable, "reason": p.detail})
    return rows


def _usb_rows() -> list[dict]:
    from adb_shell import constants
    from adb_shell.transport.usb_transport import UsbTransport, get_interface

    rows = []
    try:
        matcher = _interface_matcher(constants.CLASS, constants.SUBCLASS, constants.PROTOCOL,
                                     get_interface)
        for t in UsbTransport._find_devices(matcher):
            try:
                serial = t.serial_number
                rows.append({"transport": "usb", "serial": serial, "profile": None,
                             "reachable": True, "reason": "USB, ADB interface"})
            except Exception as e:
                busy = "BUSY" in str(e).upper() or "ACCESS" in str(e).upper()
                reason = ("held by a running adb server: run `adb kill-server`" if busy and
                          adb_server_running() else f"cannot open: {e}")
                rows.append({"transport": "usb", "serial": None, "profile": None,
                             "reachable": False, "reason": reason})
    except Exception as e:
        rows.append({"transport": "usb", "serial": None, "profile": None, "reachable": None,
                     "reason": f"USB enumeration failed: {e}"})
    return rows


def _interface_matcher(clazz: int, subclass: int, protocol: int, get_interface: Any) -> Any:
    def matcher(device: Any) -> Any:
        for setting in device.iterSettings():
            if get_interface(setting) == (clazz, subclass, protocol):
                return setting
        return None
    return matcher

"""How bytes reach a phone: ADB spoken directly by adb-shell, over TCP or USB.

This module knows nothing of models, runners or thermal zones; `android.py` builds the phone on
top of it. It holds:

- the user's key: `ensure_adb_key` finds or creates ~/.android/adbkey in adb's own format, so the
  phone's "Allow USB debugging" prompt appears once and is remembered, for us and for adb alike;
- USB: availability (adb-shell's usb extra, libusb from the system or else from the
  libusb-package wheel, loaded before adb-shell's USB transport is imported, because that import
  opens a USB context), the phones in USB debugging mode (`find_usb_phones`, with the reason one
  cannot be opened and the udev rule or step that fixes it), and detection of Google's adb
  server, which owns USB-attached phones while it runs;
- `AdbTransport`: run/check/sha256/push/pull against one phone's adbd (no adb server). Every
  command is an argv whose items are quoted with shlex.quote, so names and paths never reach the
  device shell as code; exit codes and stderr come back through a wrapper around the command (ADB
  shell protocol v1 carries only stdout). A lost connection is retried once, then `DeviceGone`;
- `reachable` and `list_adb_devices`: which phones this computer can see now.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import posixpath
import secrets
import shlex
import socket
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile.device.base import Probe, RunResult, file_sha256
from merino_mobile.device.profiles import AdbSettings, DeviceProfile
from merino_mobile.errors import UserError

DEFAULT_KEY = "~/.android/adbkey"
ADB_SERVER_PORT = 5037
UNAUTHORIZED_WHAT = "the phone did not accept this computer's key"
UNAUTHORIZED_FIX = ("unlock it and accept the 'Allow USB debugging' prompt (tick 'Always allow "
                    "from this computer'), then retry")
UNAUTHORIZED = f"{UNAUTHORIZED_WHAT}: {UNAUTHORIZED_FIX}"
GOOGLE_VENDOR_ID = 0x18D1  # Pixel phones; other makers have their own (Samsung 04e8, ...)
USB_INSTALL = "pip install 'adb-shell[usb]' libusb-package"  # what merino-mobile's install brings


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


@functools.lru_cache(maxsize=1)
def load_libusb() -> str:
    """Load libusb-1.0 into usb1 (once per process): the system's, else the one the
    libusb-package wheel ships. Returns where it came from; OSError when there is none.

    Must run before adb_shell.transport.usb_transport is imported: that import opens a USB
    context, which would otherwise look for the system's libusb only."""
    import usb1

    try:
        usb1.loadLibrary()
        return "system libusb"
    except OSError as system_error:
        try:
            import libusb_package
        except ImportError:
            raise system_error from None
        path = libusb_package.get_library_path()
        if path is None:
            raise system_error from None
        # usb1 loads libusb with WinDLL on Windows (its calls are stdcall there), else CDLL
        loader = getattr(ctypes, "WinDLL", ctypes.CDLL) if sys.platform == "win32" else ctypes.CDLL
        usb1.loadLibrary(loader(str(path), use_errno=True, use_last_error=True))
        return "libusb from libusb-package"


def usb_status() -> tuple[bool, str, str]:
    """Whether USB works here: (ok, what was found or is missing, the install that fixes it)."""
    tcp = "; TCP works without it"
    try:
        import usb1
    except ImportError:
        return (False, "USB needs adb-shell's usb extra (the libusb1 package)",
                f"`{USB_INSTALL}` (what merino-mobile's install brings){tcp}")
    try:
        source = load_libusb()
    except OSError:
        return (False, "USB needs libusb-1.0 and none was found",
                "`pip install libusb-package` (or the system's: `apt-get install libusb-1.0-0`, "
                f"`brew install libusb`){tcp}")
    try:
        from adb_shell.transport.usb_transport import UsbTransport  # noqa: F401
    except ImportError:
        return (False, "USB needs adb-shell's usb extra", f"`{USB_INSTALL}`{tcp}")
    except usb1.USBError as e:  # libusb is there but cannot start (no usbfs, a sandbox)
        return (False, f"libusb could not start ({e})",
                f"check that /dev/bus/usb is there and readable{tcp}")
    v = usb1.getVersion()
    return True, f"USB through {source} {v.major}.{v.minor}.{v.micro}", ""


def usb_available() -> tuple[bool, str]:
    """Whether USB works here, and how (or why not, with the install that fixes it)."""
    ok, what, fix = usb_status()
    return ok, what if ok else f"{what}: {fix}"


@dataclass(frozen=True)
class UsbPhone:
    """A USB device with an ADB interface. `error` names libusb's reason when it could not be
    opened (USBErrorAccess, USBErrorBusy, ...); `serial` is then None."""

    vendor_id: int
    product_id: int
    serial: str | None = None
    error: str | None = None

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    def problem(self) -> tuple[str, str]:
        """What keeps it from being opened, and the step that fixes it."""
        if self.error and "Busy" in self.error:
            return (f"the phone on USB ({self.ids}) is held by another program",
                    usb_busy_fix())
        return (f"a phone is on USB ({self.ids}) but this user may not open it "
                f"({self.error})", usb_access_fix(self.vendor_id))


def usb_access_fix(vendor_id: int) -> str:
    """The udev rule (Linux) or driver (Windows) that lets this user open a phone."""
    if sys.platform.startswith("linux"):
        return ('add the udev rule SUBSYSTEM=="usb", ATTR{idVendor}=="' f"{vendor_id:04x}"
                '", MODE="0666", GROUP="plugdev" to /etc/udev/rules.d/51-android.rules, run '
                "`sudo udevadm control --reload-rules`, replug the phone, and add yourself to "
                "plugdev (`sudo usermod -aG plugdev $USER`, then log in again); see "
                "docs/phones.md")
    if sys.platform == "win32":
        return ("install Google's USB driver (Android Studio > SDK Manager > SDK Tools > Google "
                "USB Driver) so the phone's ADB interface uses WinUSB, then replug it")
    return "replug the phone, unlock it and accept the 'Allow USB debugging' prompt"


def usb_busy_fix() -> str:
    if adb_server_running():
        return "Google's adb server owns USB phones while it runs: run `adb kill-server`"
    return ("close the program that holds it (Android Studio, scrcpy, another merino-mobile "
            "run) or run `adb kill-server`, then retry")


def find_usb_phones() -> list[UsbPhone]:
    """The USB devices with an ADB interface (USB debugging on), each opened once for its
    serial number. Needs `usb_available()` to be true."""
    import usb1

    load_libusb()  # before adb-shell's USB transport is imported (see load_libusb)
    from adb_shell import constants
    from adb_shell.transport.usb_transport import UsbTransport, get_interface

    matcher = _interface_matcher(constants.CLASS, constants.SUBCLASS, constants.PROTOCOL,
                                 get_interface)
    phones = []
    for device in UsbTransport.USB1_CTX.getDeviceIterator(skip_on_error=True):
        if matcher(device) is None:
            continue
        vid, pid = device.getVendorID(), device.getProductID()
        try:
            phones.append(UsbPhone(vid, pid, device.getSerialNumber() or ""))
        except usb1.USBError as e:
            phones.append(UsbPhone(vid, pid, None, type(e).__name__))
    return phones


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
            if not self.address and "ACCESS" in f"{type(e).__name__} {e}".upper():
                raise UserError(self._usb_refused(type(e).__name__)) from None
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

    def _usb_refused(self, error: str) -> str:
        """The line for a phone libusb would not let us open, with the rule for its vendor."""
        with contextlib.suppress(Exception):
            for phone in find_usb_phones():
                if phone.error:
                    what, fix = phone.problem()
                    return f"{what}: {fix}"
        what, fix = UsbPhone(GOOGLE_VENDOR_ID, 0, None, error).problem()
        return f"{what}: {fix}"

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
    rows = []
    try:
        for phone in find_usb_phones():
            if phone.error is None:
                rows.append({"transport": "usb", "serial": phone.serial, "profile": None,
                             "reachable": True, "reason": f"USB {phone.ids}, ADB interface"})
            else:
                what, fix = phone.problem()
                rows.append({"transport": "usb", "serial": None, "profile": None,
                             "reachable": False, "reason": f"{what}; {fix}"})
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

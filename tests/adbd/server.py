"""A loopback adbd: the device end of the ADB protocol over TCP, for tests.

It stands for a phone, which this machine does not have. It speaks what a real adbd speaks to
`adb connect` clients (CNXN, AUTH with adb's RSA token signature, OPEN/OKAY/WRTE/CLSE, `shell:`
and `exec:` (shell protocol v1), and the sync service: STAT/LIST/SEND/RECV/DATA/DONE/QUIT), and
runs commands on this host inside a PhoneSandbox. It binds 127.0.0.1 on a free port, every loop
is bounded, and it stops by itself after `lifetime_s`.

Faults a phone produces, on demand: the connection drops after N commands (`drop_after_commands`,
the cable pulled), the next K pushed files land corrupted (`corrupt_pushes`), the user never
accepts this computer's key (`auth="reject"`), directory listings carry names that would
escape a pull target (`hostile_names`), and the phone goes away for good after N commands
(`die_after_commands`, counting those containing `die_counting`). `port` reuses a port: the same
phone coming back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

from . import protocol as p
from .sandbox import PhoneSandbox

FEATURES = "cmd,fixed_push_mkdir"
RUNNER = Path(__file__).with_name("executor_runner.py")
WRITE_ACK_TIMEOUT_S = 30.0


class StreamClosed(Exception):
    """The host closed the stream (or the connection went away)."""


class Stream:
    """One ADB stream: bytes in (host WRTEs, acknowledged) and flow-controlled writes out."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.inbox = bytearray()
        self.cond = threading.Condition()
        self.acked = threading.Event()
        self.closed = False
        self.on_close: list = []

    def feed(self, data: bytes) -> None:
        with self.cond:
            self.inbox += data
            self.cond.notify_all()

    def remote_closed(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.acked.set()
        for callback in self.on_close:
            callback()

    def read(self, n: int, timeout: float = WRITE_ACK_TIMEOUT_S) -> bytes:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.inbox) < n:
                left = deadline - time.monotonic()
                if self.closed or left <= 0 or self.conn.dead:
                    raise StreamClosed()
                self.cond.wait(min(left, 0.2))
            out = bytes(self.inbox[:n])
            del self.inbox[:n]
            return out

    def write(self, data: bytes) -> None:
        size = self.conn.max_payload
        for i in range(0, len(data), size):
            if self.closed or self.conn.dead:
                raise StreamClosed()
            self.acked.clear()
            self.conn.send(p.WRTE, self.local_id, self.remote_id, data[i:i + size])
            deadline = time.monotonic() + WRITE_ACK_TIMEOUT_S
            while not self.acked.wait(0.2):
                if self.conn.dead or time.monotonic() > deadline:
                    raise StreamClosed()
            if self.closed:
                raise StreamClosed()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.send(p.CLSE, self.local_id, self.remote_id)
        self.conn.streams.pop(self.local_id, None)


class Connection:
    """One host connected over TCP; reads packets on its own thread, services on theirs."""

    def __init__(self, server: LoopbackAdbd, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        self.sandbox = server.sandbox
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.version = p.VERSION_MIN
        self.max_payload = p.MAX_PAYLOAD_V1
        self.online = False
        self.token = b""
        self.dead = False

    # -- packets
    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        try:
            with self.lock:
                self.sock.sendall(p.pack(command, arg0, arg1, data))
        except OSError:
            self.kill()

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            if self.server.stopping.is_set():
                raise ConnectionError("server stopping")
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("peer closed")
            buf += chunk
        return bytes(buf)

    def kill(self) -> None:
        """Drop the connection the way a pulled cable does: no goodbye."""
        self.dead = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        for stream in list(self.streams.values()):
            stream.remote_closed()

    def run(self) -> None:
        self.sock.settimeout(0.2)
        try:
            while not self.dead:
                command, arg0, arg1, length, crc = p.unpack_header(self.recv_exact(p.HEADER.size))
                data = self.recv_exact(length) if length else b""
                if (self.online and self.version < p.VERSION_SKIP_CHECKSUM
                        and crc != p.checksum(data)):
                    raise p.ProtocolError("bad checksum")
                self.handle(command, arg0, arg1, data)
        except (ConnectionError, OSError, p.ProtocolError):
            pass
        finally:
            self.kill()

    # -- handshake
    def new_token(self) -> None:
        self.token = os.urandom(p.TOKEN_SIZE)
        self.send(p.AUTH, p.AUTH_TOKEN, 0, self.token)

    def go_online(self) -> None:
        self.online = True
        props = self.sandbox.props
        banner = (f"device::ro.product.name={props['ro.product.name']};"
                  f"ro.product.model={props['ro.product.model']};"
                  f"ro.product.device={props['ro.product.device']};features={FEATURES}")
        self.send(p.CNXN, self.version, self.max_payload, banner.encode())

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == p.CNXN:
            self.version = min(arg0, p.VERSION_SKIP_CHECKSUM)
            self.max_payload = min(arg1, p.MAX_PAYLOAD)
            self.online = False
            self.new_token()
        elif command == p.AUTH:
            if self.online:
                return
            if arg0 == p.AUTH_SIGNATURE:
                if any(p.verify_token(p.parse_adb_public_key(k), self.token, data)
                       for k in self.server.authorized_keys):
                    self.go_online()
                else:
                    self.new_token()
            elif arg0 == p.AUTH_RSAPUBLICKEY and self.server.auth == "accept":
                # A real phone now shows "Allow USB debugging?"; the fixture's user accepts.
                p.parse_adb_public_key(data)
                self.server.authorized_keys.append(data.split(b"\0")[0])
                self.go_online()
        elif not self.online:
            raise p.ProtocolError("packet before the connection was authorized")
        elif command == p.OPEN:
            self.open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
        elif command == p.OKAY:
            stream = self.streams.get(arg1)
            if stream:
                stream.acked.set()
        elif command == p.WRTE:
            stream = self.streams.get(arg1)
            if stream:
                stream.feed(data)
                self.send(p.OKAY, arg1, arg0)
        elif command == p.CLSE:
            stream = self.streams.pop(arg1, None)
            if stream:
                # adbd answers a host's CLSE with its own (local_socket_close -> peer close).
                closed_here = stream.closed
                stream.remote_closed()
                if not closed_here:
                    self.send(p.CLSE, arg1, arg0)

    def open(self, remote_id: int, service: str) -> None:
        if service.startswith(("shell:", "exec:")):
            handler, arg = self.serve_command, service.split(":", 1)[1]
            if not arg:
                self.send(p.CLSE, 0, remote_id)  # interactive shells are not provided
                return
            if self.server.count_command(arg):
                self.kill()
                return
        elif service == "sync:":
            handler, arg = self.serve_sync, ""
        else:
            self.send(p.CLSE, 0, remote_id)
            return
        local_id = self.next_id
        self.next_id += 1
        stream = Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        self.send(p.OKAY, local_id, remote_id)
        threading.Thread(target=self.serve, args=(handler, stream, arg), daemon=True).start()

    def serve(self, handler, stream: Stream, arg: str) -> None:
        try:
            handler(stream, arg)
        except (StreamClosed, OSError):
            pass
        finally:
            if not self.dead:
                stream.close()

    # -- services
    def serve_command(self, stream: Stream, command: str) -> None:
        """shell v1 / exec: stdout and stderr on one stream, the stream closes at exit."""
        self.server.commands.append(command)
        proc = subprocess.Popen(
            ["/bin/sh", "-c", self.sandbox.rewrite(command)], cwd=self.sandbox.root,
            env=self.sandbox.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.server.procs.append(proc)

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        stream.on_close.append(kill)
        root_len = len(str(self.sandbox.root))
        pending = b""
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                # Hold back a tail so a sandbox path split across reads is still translated.
                pending = self.sandbox.untranslate(pending + chunk)
                cut = max(0, len(pending) - root_len)
                if cut:
                    stream.write(pending[:cut])
                    pending = pending[cut:]
            if pending:
                stream.write(pending)
        finally:
            proc.stdout.close()
            if stream.closed or self.dead:
                kill()
            proc.wait()

    def serve_sync(self, stream: Stream, _arg: str) -> None:
        while True:
            ident, length = struct.unpack("<4sI", stream.read(8))
            if ident == b"QUIT":
                return
            if length > 4096:
                raise StreamClosed()
            path = stream.read(length).decode("utf-8", "surrogateescape")
            if ident == b"STAT":
                self.sync_stat(stream, path)
            elif ident == b"LIST":
                self.sync_list(stream, path)
            elif ident == b"SEND":
                self.sync_send(stream, path)
            elif ident == b"RECV":
                self.sync_recv(stream, path)
            else:
                self.sync_fail(stream, f"unknown sync request {ident!r}")
                return

    def sync_fail(self, stream: Stream, message: str) -> None:
        msg = message.encode()
        stream.write(p.sync_header(b"FAIL", len(msg)) + msg)

    def sync_stat(self, stream: Stream, path: str) -> None:
        try:
            st = os.lstat(self.sandbox.host_path(path))
            fields = (st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
        except OSError:
            fields = (0, 0, 0)
        stream.write(b"STAT" + struct.pack("<3I", *fields))

    def sync_list(self, stream: Stream, path: str) -> None:
        base = self.sandbox.host_path(path)
        out = bytearray()
        with contextlib.suppress(OSError):
            for name in [".", ".."] + sorted(os.listdir(base)):
                st = os.lstat(base / name)
                raw = name.encode("utf-8", "surrogateescape")
                out += b"DENT" + struct.pack("<4I", st.st_mode, st.st_size & 0xFFFFFFFF,
                                             int(st.st_mtime), len(raw)) + raw
            for name in self.server.hostile_names:
                raw = name.encode()
                out += b"DENT" + struct.pack("<4I", stat.S_IFREG | 0o644, 5, 0, len(raw)) + raw
        stream.write(bytes(out) + b"DONE" + bytes(16))

    def sync_send(self, stream: Stream, spec: str) -> None:
        path, _, mode = spec.rpartition(",")
        if not path:
            path, mode = spec, "33188"
        target = self.sandbox.host_path(path)
        data = bytearray()
        while True:
            ident, value = struct.unpack("<4sI", stream.read(8))
            if ident == b"DATA":
                if value > p.SYNC_DATA_MAX:
                    self.sync_fail(stream, "oversize data message")
                    raise StreamClosed()
                data += stream.read(value)
            elif ident == b"DONE":
                break
            else:
                self.sync_fail(stream, f"unexpected {ident!r} in SEND")
                raise StreamClosed()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.server.take_corruption() and data:
                data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
            os.chmod(target, stat.S_IMODE(int(mode)) or 0o644)
            os.utime(target, (value, value))
        except (OSError, ValueError) as e:
            self.sync_fail(stream, f"{path}: {e.strerror if isinstance(e, OSError) else e}")
            return
        stream.write(p.sync_header(b"OKAY", 0))

    def sync_recv(self, stream: Stream, path: str) -> None:
        try:
            data = self.sandbox.host_path(path).read_bytes()
        except OSError as e:
            self.sync_fail(stream, f"{path}: {e.strerror}")
            return
        for i in range(0, len(data), p.SYNC_DATA_MAX):
            chunk = data[i:i + p.SYNC_DATA_MAX]
            stream.write(p.sync_header(b"DATA", len(chunk)) + chunk)
        stream.write(p.sync_header(b"DONE", 0))


class WarmRunner:
    """One warm executor_runner process (see executor_runner.py) shared by fixtures, so a run
    costs a fork instead of importing torch. Stopped by stop() or when its parent exits."""

    def __init__(self) -> None:
        import sys
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="mm-runner-")  # short: AF_UNIX paths are limited
        self.socket = os.path.join(self._dir, "sock")
        self.proc = subprocess.Popen([sys.executable, str(RUNNER), "--serve", self.socket],
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the warm runner did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(self.socket)
            os.rmdir(self._dir)


class LoopbackAdbd:
    """A phone's adbd on 127.0.0.1:<free port>, for tests (see module docstring)."""

    def __init__(self, root: Path, *, auth: str = "accept", authorized_keys: tuple = (),
                 drop_after_commands: int | None = None, corrupt_pushes: int = 0,
                 lifetime_s: float = 600.0, sandbox: PhoneSandbox | None = None,
                 port: int = 0, hostile_names: tuple[str, ...] = (),
                 die_after_commands: int | None = None, die_counting: str = "",
                 warm_runner: WarmRunner | None = None) -> None:
        if auth not in ("accept", "reject"):
            raise ValueError("auth is 'accept' (the user taps Allow) or 'reject'")
        self.sandbox = sandbox or PhoneSandbox(Path(root))
        self.auth = auth
        self.authorized_keys: list[bytes] = [k.split(b"\0")[0] for k in authorized_keys]
        self.drop_after_commands = drop_after_commands
        self.die_after_commands = die_after_commands
        self.die_counting = die_counting
        if warm_runner is not None:
            self.sandbox.extra_env["MERINO_FAKE_RUNNER_SOCKET"] = warm_runner.socket
        self.corrupt_pushes = corrupt_pushes
        # Names a compromised adbd could list (a real one cannot: they are not file names).
        self.hostile_names = hostile_names
        self.lifetime_s = lifetime_s
        self.commands: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.connections: list[Connection] = []
        self.stopping = threading.Event()
        self._counter_lock = threading.Lock()
        self._commands_since_drop = 0
        self.command_count = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def count_command(self, command: str) -> bool:
        """Count one shell/exec request; True when this one is where the phone disappears."""
        with self._counter_lock:
            if self.die_counting in command:
                self.command_count += 1
            if self.die_after_commands is not None and \
                    self.command_count > self.die_after_commands:
                # Unplugged for good: the listener goes too (stop() from another thread).
                threading.Thread(target=self.stop, daemon=True).start()
                return True
            if self.drop_after_commands is None:
                return False
            self._commands_since_drop += 1
            if self._commands_since_drop > self.drop_after_commands:
                self.drop_after_commands = None  # one-shot: the phone comes back
                self._commands_since_drop = 0
                return True
            return False

    def take_corruption(self) -> bool:
        with self._counter_lock:
            if self.corrupt_pushes > 0:
                self.corrupt_pushes -= 1
                return True
            return False

    def start(self) -> LoopbackAdbd:
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self._deadline = time.monotonic() + self.lifetime_s
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self._deadline:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn = Connection(self, sock)
            self.connections.append(conn)
            threading.Thread(target=conn.run, daemon=True).start()
        self._shutdown()

    def _shutdown(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in self.connections:
            conn.kill()
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        else:
            self._shutdown()

    def __enter__(self) -> LoopbackAdbd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

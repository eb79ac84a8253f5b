"""The driver's end of a fleet device: `RemoteDevice` implements the `Device` protocol by calling
the device's actor (actor.py), so the profile run (`merino_mobile.latency.profile`) talks to a
phone on another host exactly as to one on this one.

- `prepare(artifact)`: the program's bytes go into the object store once per driver
  (`ProgramShelf`, shared by every device of a run), and to a node only when its shelf lacks
  them; the handle that comes back names the program's place on that node.
- `benchmark(handle, request, on_event)`: the actor streams each event as it happens; a result
  that comes with one is passed on at once, so the profile commits that point to the store the
  moment it reaches the driver, as for a local device.
- Failures: a UserError raised on the node (the phone went away: `DeviceGone`; a bad profile)
  is raised here as itself, with its one line. An actor that died (killed, its node lost, out of
  memory) is `WorkerLost`, a UserError saying that what was stored is kept and how to continue.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from merino_mobile.device.base import BenchRequest, BenchResult, EventHook, Fingerprint, Handle
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.errors import UserError
from merino_mobile.fleet.actor import DeviceActor
from merino_mobile.fleet.cluster import NAMESPACE, device_resource
from merino_mobile.fleet.shipping import ProgramFiles

START_TIMEOUT_S = 120.0  # placing the actor and opening the device (an adb handshake, a probe)
CALL_TIMEOUT_S = 600.0  # one fingerprint, prepare (a push) or cleanup


class WorkerLost(UserError):
    """A device's actor died mid-run (killed, its node lost): the stored points are kept."""

    def __init__(self, device: str, node: str, reason: str) -> None:
        super().__init__(f"{device}: its fleet worker on {node} stopped ({reason}); every "
                         f"measurement it reported is stored: rerun the same command to "
                         f"continue where it stopped")
        self.device, self.node, self.reason = device, node, reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerLost, (self.device, self.node, self.reason))


def _reason(e: BaseException) -> str:
    """The last line of a Ray error, which says why (killed by ray.kill, the node died, ...)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


class ProgramShelf:
    """Programs this driver has put in the object store, by path: each read and put once, then
    handed to every node that needs it (see the module docstring)."""

    def __init__(self, ray: ModuleType) -> None:
        self.ray = ray
        self._lock = threading.Lock()
        self._refs: dict[Path, tuple[str, str, Any]] = {}
        self.shipped = 0  # programs a node fetched
        self.reused = 0  # prepares a node served from its shelf

    def get(self, path: Path) -> tuple[str, str, Any]:
        """(digest, name, ObjectRef of its ProgramFiles) of the program at `path`."""
        path = Path(path).resolve()
        with self._lock:
            if path not in self._refs:
                program = ProgramFiles.read(path)
                self._refs[path] = (program.digest, program.name, self.ray.put(program))
            return self._refs[path]

    def count(self, fetched: bool) -> None:
        with self._lock:
            if fetched:
                self.shipped += 1
            else:
                self.reused += 1


def driver_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RemoteDevice:
    """A device of the fleet, seen from the driver (see the module docstring)."""

    def __init__(self, ray: ModuleType, profile: DeviceProfile, runtime: str,
                 shelf: ProgramShelf, cache_dir: str | None = None) -> None:
        self.ray, self.profile, self.runtime, self.shelf = ray, profile, runtime, shelf
        self.name = profile.name
        self.node = "its node"
        self.replicates = False
        self._fingerprints: dict[tuple[str, str], Fingerprint] = {}
        self._actor = self._create(cache_dir)
        self._opening = self._actor.open.remote()
        self.info: dict[str, Any] = {}

    def _create(self, cache_dir: str | None) -> Any:
        """The named actor, holding one unit of the device's resource; a device another run
        holds is a UserError naming that run."""
        import time

        actor_cls = self.ray.remote(DeviceActor)
        name = device_resource(self.name)
        deadline = time.monotonic() + 15.0
        while True:
            try:
                return actor_cls.options(
                    name=name, namespace=NAMESPACE, num_cpus=0, max_restarts=0,
                    max_concurrency=4, resources={name: 1}).remote(
                    self.profile, self.runtime, cache_dir, driver_label())
            except ValueError:  # the name is taken: a live run, or one whose driver just died
                holder = self._holder(name)
                if holder is not None or time.monotonic() > deadline:
                    raise UserError(f"{self.name} is in use by another fleet run (driver "
                                    f"{holder or 'unknown'}); wait for it to finish, or see "
                                    f"`merino-mobile fleet status`") from None
                time.sleep(0.5)

    def _holder(self, name: str) -> str | None:
        try:
            actor = self.ray.get_actor(name, namespace=NAMESPACE)
            return self.ray.get(actor.state.remote(), timeout=5.0)["driver"]
        except Exception:  # gone meanwhile, or dying with its driver: the name frees soon
            return None

    def wait_open(self, timeout_s: float = START_TIMEOUT_S) -> RemoteDevice:
        """Wait until the actor runs on the device's node and has opened the device."""
        try:
            self.info = self._get(self._opening, timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            self.kill()
            raise UserError(f"{self.name}: its fleet worker did not start within "
                            f"{timeout_s:.0f} s (its node is busy, or another run holds the "
                            f"device: `merino-mobile fleet status`)") from None
        self.node = f"{self.info['hostname']} ({self.info['node']})"
        self.replicates = bool(self.info["replicates"])
        return self

    # -- calls ----------------------------------------------------------------------------------

    def _get(self, ref: Any, timeout_s: float | None = CALL_TIMEOUT_S) -> Any:
        """`ray.get`, with the node's UserError raised as itself and a dead actor as
        WorkerLost."""
        ex = self.ray.exceptions
        try:
            return self.ray.get(ref, timeout=timeout_s)
        except ex.RayTaskError as e:
            if isinstance(e.cause, UserError):
                raise e.cause from None
            if isinstance(e.cause, ex.RayActorError):
                raise WorkerLost(self.name, self.node, _reason(e.cause)) from None
            raise
        except ex.GetTimeoutError:
            raise
        except ex.RayError as e:  # the actor, its node or the objects it held are gone
            raise WorkerLost(self.name, self.node, _reason(e)) from None

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        """Read once per run (the pre-export pass and the profile ask for the same one)."""
        key = (runtime, quant)
        if key not in self._fingerprints:
            self._fingerprints[key] = self._get(self._actor.fingerprint.remote(runtime, quant))
        return self._fingerprints[key]

    def runtimes(self) -> list[str]:
        return self._get(self._actor.runtimes.remote())

    def prepare(self, artifact: Path) -> Handle:
        digest, name, ref = self.shelf.get(artifact)
        handle, fetched = self._get(self._actor.prepare.remote(digest, name, [ref]))
        self.shelf.count(fetched)
        return handle

    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        """Events and results as they happen on the device (see the module docstring)."""
        ex = self.ray.exceptions
        result: BenchResult | None = None
        try:
            stream = self._actor.benchmark.options(num_returns="streaming").remote(handle,
                                                                                   request)
            for ref in stream:
                item = self._get(ref, None)  # a request runs as long as its methods need
                if item[0] == "result":
                    result = item[1]
                elif on_event is not None:
                    _, kind, method, pid, res = item
                    if res is None:
                        on_event(kind, method, pid)
                    else:
                        on_event(kind, method, pid, res)
        except ex.RayError as e:
            if isinstance(e, ex.RayTaskError) and not isinstance(e.cause, ex.RayActorError):
                raise
            raise WorkerLost(self.name, self.node, _reason(e)) from None
        if result is None:
            raise WorkerLost(self.name, self.node, "its benchmark ended without a result")
        return result

    def cleanup(self) -> None:
        """Clean the device up on its node, then end the actor (which frees the device)."""
        try:
            self._get(self._actor.cleanup.remote())
        except WorkerLost:
            pass  # nothing left to clean: the actor and what it held are gone
        finally:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(Exception):  # already dead
            self.ray.kill(self._actor, no_restart=True)

"""The device's end of the fleet: a Ray actor on the node that has the device.

`DeviceActor` opens the device with the same backend a local run uses (`open_device` on the
driver's profile of it) and does what the driver's `RemoteDevice` asks, one call at a time:
fingerprint, runtimes, prepare (the program from this node's `NodeCache`, or from the bytes the
driver put in the object store, which then go on the shelf), benchmark, cleanup. It keeps no
measurement: `benchmark` streams each event, with the finished result when the backend gives one,
back to the driver as it happens, and the driver commits it. So when the actor or its node dies,
only what was in flight is lost, and nothing stored is ever measured again.

The actor runs with a few threads (`max_concurrency`), so `state` (what it is doing, for
`fleet status`) answers while a benchmark runs; the device calls themselves come from one driver
thread, one after the other. This module does not import Ray at module level: the proxy makes the
class an actor (`ray.remote(DeviceActor)`), and only a process that has Ray ever runs it.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from merino_mobile.device.base import BenchRequest, BenchResult, Fingerprint, Handle
from merino_mobile.device.profiles import DeviceProfile
from merino_mobile.fleet.shipping import NodeCache, ProgramFiles


class DeviceActor:
    """One device, on the node that reaches it (see the module docstring)."""

    def __init__(self, profile: DeviceProfile, runtime: str, cache_dir: str | None,
                 driver: str) -> None:
        from merino_mobile.toolchain import quiet_dependencies

        quiet_dependencies()
        self.profile, self.runtime, self.driver = profile, runtime, driver
        self.cache = NodeCache(cache_dir)
        self.dev: Any = None
        self._lock = threading.Lock()
        self._doing, self._since = "starting", time.time()
        self.requests = 0

    def _set(self, doing: str) -> None:
        with self._lock:
            self._doing, self._since = doing, time.time()

    def open(self) -> dict[str, Any]:
        """Open the device here; where this actor runs and whether the device replicates."""
        import ray

        from merino_mobile.device import open_device

        self._set("opening the device")
        self.dev = open_device(self.profile, self.runtime)
        self._set("idle")
        return {"replicates": bool(self.dev.replicates),
                "node_id": ray.get_runtime_context().get_node_id(),
                "node": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
                "pid": os.getpid()}

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        self._set("reading the fingerprint")
        try:
            return self.dev.fingerprint(runtime, quant)
        finally:
            self._set("idle")

    def runtimes(self) -> list[str]:
        return list(self.dev.runtimes())

    def prepare(self, digest: str, name: str, shipped: list[Any]) -> tuple[Handle, bool]:
        """The program `digest` made ready on the device; True when its bytes came from the
        driver (`shipped`: [ObjectRef], fetched only when this node's shelf lacks it)."""
        import ray

        fetched = False
        if not self.cache.has(digest, name):
            self._set(f"receiving program {digest[:12]}")
            program: ProgramFiles = ray.get(shipped[0])
            self.cache.put(digest, program)
            fetched = True
        self._set(f"preparing program {digest[:12]}")
        try:
            return self.dev.prepare(self.cache.path(digest, name)), fetched
        finally:
            self._set("idle")

    def benchmark(self, handle: Handle, request: BenchRequest) -> Iterator[tuple[Any, ...]]:
        """The device's benchmark, streamed: ("event", kind, method, pid, result or None) as
        each happens, then ("result", BenchResult). The device runs in a helper thread so each
        event leaves at once, not when the whole request ends."""
        events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        total = len(request.methods)
        finished = [0]

        def hook(kind: str, method: str, pid: int, result: Any = None) -> None:
            if kind in ("done", "failed"):
                finished[0] += 1
            self._set(f"measuring {method} ({finished[0]} of {total} methods done)")
            events.put(("event", kind, method, pid, result))

        def work() -> None:
            try:
                res: BenchResult = self.dev.benchmark(handle, request, on_event=hook)
                events.put(("result", res))
            except BaseException as e:  # re-raised below, in the actor's own call
                events.put(("error", e))

        self._set(f"measuring {total} methods")
        threading.Thread(target=work, daemon=True, name="benchmark").start()
        try:
            while True:
                item = events.get()
                if item[0] == "error":
                    raise item[1]
                yield item
                if item[0] == "result":
                    self.requests += 1
                    return
        finally:
            self._set("idle")

    def cleanup(self) -> None:
        self._set("cleaning up")
        if self.dev is not None:
            self.dev.cleanup()
        self._set("done")

    def state(self) -> dict[str, Any]:
        """What this actor is doing now, for `fleet status`."""
        import ray

        with self._lock:
            doing, since = self._doing, self._since
        return {"device": self.profile.name, "runtime": self.runtime, "doing": doing,
                "for_s": round(time.time() - since, 1), "driver": self.driver,
                "requests": self.requests, "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}

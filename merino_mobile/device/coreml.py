"""Core ML on Apple devices: the `coreml` runtime, timed with coremltools on macOS.

coremltools converts models on any OS but predicts only on macOS (it needs the Core ML
framework). On a Mac, a `.mlpackage` is loaded with the requested compute units (CPU_ONLY,
CPU_AND_GPU, CPU_AND_NE, ALL) and each method's latency comes from repeated `predict` calls under
the shared stopping rule (base.Samples). Elsewhere `available()` says why not, and the device
reports no runtime instead of failing later.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from merino_mobile.device import checklist
from merino_mobile.device.base import (
    BenchRequest,
    BenchResult,
    EventHook,
    Fingerprint,
    Handle,
    MethodResult,
    Probe,
    Samples,
    file_sha256,
)
from merino_mobile.device.checklist import Check
from merino_mobile.errors import UserError

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def available() -> tuple[bool, str]:
    """Whether Core ML prediction can run here, and why not."""
    if sys.platform != "darwin":
        return False, (f"Core ML prediction needs macOS (this is {platform.system()}); "
                       "coremltools converts here, but profile and bench the coreml runtime on "
                       "a Mac")
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False, "coremltools is not installed (pip install coremltools)"
    return True, f"macOS {platform.mac_ver()[0]}"


def check_compute_units(units: str) -> str:
    u = units.upper()
    if u not in COMPUTE_UNITS:
        raise UserError(f"unknown Core ML compute units {units!r}; choose one of "
                        f"{', '.join(COMPUTE_UNITS)}")
    return u


def _inputs(method: Any, model: Any) -> dict[str, Any]:
    """Named inputs for predict: the spec's input names in order, filled per InputSpec."""
    from merino_mobile.device.worker import make_inputs

    names = [i.name for i in model.get_spec().description.input]
    arrays = make_inputs(tuple(method.inputs))
    return dict(zip(names, arrays, strict=True))


def time_predict(model: Any, inputs: dict[str, Any], request: BenchRequest) -> tuple[float, ...]:
    """Warm up, then time predict() until the shared stopping rule says enough (ms per call)."""
    for _ in range(request.warmup):
        model.predict(inputs)
    samples = Samples(request)
    while True:
        start = time.perf_counter()
        model.predict(inputs)
        if samples.add((time.perf_counter() - start) * 1e3):
            return tuple(samples.values)


class CoreMLDevice:
    """This Mac, running .mlpackage artifacts through Core ML with fixed compute units."""

    replicates = False

    def __init__(self, profile: Any, compute_units: str = "ALL") -> None:
        self.profile, self.name = profile, profile.name
        self.compute_units = check_compute_units(compute_units)
        self._models: dict[str, Any] = {}

    def runtimes(self) -> list[str]:
        return ["coreml"] if available()[0] else []

    def fingerprint(self, runtime: str, quant: str) -> Fingerprint:
        import coremltools as ct

        return Fingerprint(
            device=self.name, model=platform.node() or "Mac",
            cpu=platform.processor() or platform.machine(), cores=0,
            os=f"macOS {platform.mac_ver()[0]}", abi=platform.machine(),
            runtime=runtime, runtime_version=f"coremltools {ct.__version__} "
            f"{self.compute_units}", threads=0, quant=quant,
            date=time.strftime("%Y-%m-%d", time.gmtime()))

    def prepare(self, artifact: Path) -> Handle:
        ok, why = available()
        if not ok:
            raise UserError(why)
        artifact = Path(artifact)
        if artifact.suffix != ".mlpackage" or not artifact.exists():
            raise UserError(f"{artifact}: Core ML runs .mlpackage folders (merino-mobile export "
                            "--format coreml)")
        import coremltools as ct

        self._models[str(artifact)] = ct.models.MLModel(
            str(artifact), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        manifest = artifact / "Manifest.json"
        sha = file_sha256(manifest) if manifest.exists() else ""
        return Handle(artifact, str(artifact), "coreml", sha, 0)

    def benchmark(self, handle: Handle, request: BenchRequest,
                  on_event: EventHook | None = None) -> BenchResult:
        model = self._models.get(handle.remote)
        if model is None:
            raise UserError(f"{handle.local} was not prepared on {self.name}")
        t0 = time.perf_counter()
        results = []
        for method in request.methods:
            if on_event:
                on_event("start", method.name, 0)
            try:
                res = MethodResult(method.name, time_predict(model, _inputs(method, model),
                                                             request))
            except Exception as e:  # one bad method must not end the run
                res = MethodResult(method.name, (), f"{type(e).__name__}: {e}")
            results.append(res)
            if on_event:
                on_event("done" if res.ok else "failed", method.name, 0)
        return BenchResult(tuple(results), threads=0, wall_s=time.perf_counter() - t0)

    def cleanup(self) -> None:
        self._models.clear()


def open_device(profile: Any) -> CoreMLDevice:
    """The backend entry point: this Mac, with the profile's compute units (default ALL)."""
    ok, why = available()
    if not ok:
        raise UserError(f"cannot run a Core ML artifact on {profile.name!r}: {why}")
    return CoreMLDevice(profile, getattr(profile, "compute_units", "ALL"))


def readiness(profile: Any, runtime: str | None = None) -> list[Check]:
    """Core ML needs macOS, then coremltools; either runtime asked for is Core ML's."""

    def macos() -> Check:
        if sys.platform != "darwin":
            return checklist.missing("macOS", f"Core ML prediction needs macOS (this is "
                                     f"{platform.system()})",
                                     "coremltools converts here, but profile and bench the coreml "
                                     "runtime on a Mac")
        return checklist.ok("macOS", f"macOS {platform.mac_ver()[0]}")

    def coremltools() -> Check:
        ok, why = available()
        return checklist.ok("coremltools", why) if ok else checklist.missing(
            "coremltools", why, "pip install coremltools")

    return checklist.walk([("macOS", macos), ("coremltools", coremltools)])


def probe(profile: Any) -> Probe:
    """Whether Core ML prediction can run here (never raises)."""
    return checklist.summarize(readiness(profile), headline="macOS")

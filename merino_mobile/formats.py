"""The one table of deployable formats: which runtime runs each, with which quantizations, what
its artifact is called, which module exports and verifies it, and which packages shape it.

Every check of a format, runtime, quantization or artifact name in the tool reads this table, so
adding a runtime is one row here and one exporter module under `merino_mobile/export/` with
the two functions the row names:

    exporter(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path
    verifier(model: Decoder, artifact: Path, quant: str) -> dict

A name is checked once, where it enters (`get_format`, `check_pair`, `check_quant`); later stages
receive a `Format` that is already valid.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError

QUANTS = ("fp32", "fp16", "int8", "int4", "q4_k_m")  # every quantization some format knows


@dataclass(frozen=True)
class Format:
    """One row of the table."""

    name: str  # what --format takes
    runtime: str  # what a device profile's `runtimes` lists and a table is measured with
    quants: tuple[str, ...]  # the first is the unquantized reference
    artifact: str  # the file (or folder) name inside an export folder
    exporter: str  # "module:function" that writes the artifact (see above)
    verifier: str  # "module:function" that checks it against the eager model
    packages: tuple[str, ...]  # whose versions shape an artifact (export.json, program cache)
    profiles: bool  # whether `profile` can time micro-benchmarks with this runtime

    @property
    def suffix(self) -> str:
        """The artifact's suffix (".pte"), by which `bench` knows an artifact's runtime."""
        return Path(self.artifact).suffix

    def functions(self) -> tuple[Callable[..., Path], Callable[..., dict[str, Any]]]:
        """The format's (exporter, verifier), imported only when needed (torch is slow to
        import, and coremltools is optional on some hosts)."""
        return _resolve(self.exporter), _resolve(self.verifier)

    def toolchain(self) -> dict[str, str]:
        """Installed versions of the packages that shape this format's artifacts."""
        from merino_mobile.toolchain import package_versions

        return package_versions(self.packages)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("executorch", "executorch", ("fp32", "int8", "int4"), "model.pte",
           "merino_mobile.export.executorch:export_executorch",
           "merino_mobile.export.executorch:verify_executorch",
           ("torch", "executorch"), profiles=True),
    Format("coreml", "coreml", ("fp16", "int8", "int4"), "model.mlpackage",
           "merino_mobile.export.coreml:export_coreml",
           "merino_mobile.export.coreml:verify_coreml",
           ("torch", "coremltools"), profiles=False),
    Format("onnx", "onnxruntime", ("fp32", "int8", "int4"), "model.onnx",
           "merino_mobile.export.onnx:export_onnx",
           "merino_mobile.export.onnx:verify_onnx",
           ("torch", "onnx", "onnxscript", "onnxruntime"), profiles=True),
    Format("gguf", "llamacpp", ("fp16", "int8", "int4", "q4_k_m"), "model.gguf",
           "merino_mobile.export.gguf:export_gguf",
           "merino_mobile.export.gguf:verify_gguf",
           ("torch", "gguf", "llama-cpp-python"), profiles=False),
)}
RUNTIMES = tuple(f.runtime for f in FORMATS.values())
PROFILED_RUNTIMES = tuple(f.runtime for f in FORMATS.values() if f.profiles)


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def get_format(name: str) -> Format:
    """The row of a --format name, or a UserError listing the known ones."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown export format {name!r}; supported: "
                        f"{', '.join(FORMATS)}") from None


def for_runtime(runtime: str) -> Format:
    """The row of a runtime name (as device profiles and tables spell it)."""
    for f in FORMATS.values():
        if f.runtime == runtime:
            return f
    raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def for_artifact(artifact: Path) -> Format:
    """The row of an artifact, from its suffix."""
    suffix = Path(artifact).suffix
    for f in FORMATS.values():
        if f.suffix == suffix:
            return f
    known = ", ".join(f"{f.suffix} ({f.runtime})" for f in FORMATS.values())
    raise UserError(f"{artifact}: unknown artifact type; expected one of {known} from "
                    f"`merino-mobile export`")


def check_pair(fmt: str, quant: str) -> Format:
    """The row of `fmt` when it can produce `quant`; else a UserError listing the pairs."""
    f = get_format(fmt)
    if quant not in f.quants:
        pairs = "; ".join(f"{g.name}: {', '.join(g.quants)}" for g in FORMATS.values())
        raise UserError(f"{fmt} does not support quantization {quant!r}; supported pairs: {pairs}")
    return f


def check_runtime_quant(runtime: str, quant: str, *, profiled: bool = False) -> Format:
    """The row of `runtime` when it runs `quant` (and, with `profiled`, can be profiled)."""
    known = PROFILED_RUNTIMES if profiled else RUNTIMES
    if runtime not in known:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(known)}")
    f = for_runtime(runtime)
    if quant not in f.quants:
        raise UserError(f"unknown quantization {quant!r} for {runtime}; choose one of "
                        f"{', '.join(f.quants)}")
    return f

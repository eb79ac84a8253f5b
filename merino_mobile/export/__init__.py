"""Export a card's decoder to a deployable artifact, verify it, and report what was written.

`export(card, fmt, quant, out_dir)` builds the torch decoder (random weights or a checkpoint),
hands it to the format's module, runs that module's verification against the fp32 eager model,
and leaves in `out_dir`:

    model.pte | model.onnx | model.mlpackage   the artifact
    card.json                                  the card it was built from
    export.json                                the ExportResult (size, time, verification)

Every format module provides the same two functions, and that is the whole protocol:

    export_X(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path
    verify_X(model: Decoder, artifact: Path, quant: str) -> dict

`out_dir` is never half-written: everything is built in a temporary sibling folder that is renamed
into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.card import Card
from merino_mobile.errors import UserError

SCHEMA_VERSION = 1

FORMATS: dict[str, tuple[str, ...]] = {
    "executorch": ("fp32", "int8", "int4"),
    "coreml": ("fp16", "int8", "int4"),
    "onnx": ("fp32", "int8", "int4"),
}
ARTIFACT = {"executorch": "model.pte", "coreml": "model.mlpackage", "onnx": "model.onnx"}
DEFAULT_PROMPT_LEN = 32


@dataclass
class ExportResult:
    """What one export wrote and how well the artifact matches the eager model."""

    format: str
    quant: str
    artifact: Path
    size_bytes: int
    export_seconds: float
    verification: dict
    card: str = ""
    cache_len: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """True/False from the verification verdict; None when it was not verified."""
        return self.verification.get("passed")

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "format": self.format,
            "quant": self.quant,
            "artifact": str(self.artifact),
            "size_bytes": self.size_bytes,
            "export_seconds": self.export_seconds,
            "verification": self.verification,
            "card": self.card,
            "cache_len": self.cache_len,
            **self.extra,
        }


def check_pair(fmt: str, quant: str) -> None:
    """Refuse a format/quantization pair this toolkit cannot produce, listing those it can."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    if quant not in FORMATS[fmt]:
        pairs = "; ".join(f"{f}: {', '.join(q)}" for f, q in FORMATS.items())
        raise UserError(f"{fmt} does not support quantization {quant!r}; supported pairs: {pairs}")


def disk_size(path: Path) -> int:
    """Bytes of a file, or of everything under a folder (a .mlpackage is a folder)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _format_functions(fmt: str):
    if fmt == "executorch":
        from merino_mobile.export.executorch import export_executorch, verify_executorch

        return export_executorch, verify_executorch
    if fmt == "onnx":
        from merino_mobile.export.onnx import export_onnx, verify_onnx

        return export_onnx, verify_onnx
    from merino_mobile.export.coreml import export_coreml, verify_coreml

    return export_coreml, verify_coreml


def package_versions(pkgs: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each package ("none" when it is not installed)."""
    import importlib.metadata

    out = {}
    for pkg in pkgs:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "none"
    return out


def toolchain(fmt: str) -> dict[str, str]:
    """Versions of the packages that shaped an artifact of `fmt` (recorded in export.json)."""
    return package_versions({"executorch": ("torch", "executorch"),
                             "onnx": ("torch", "onnx", "onnxruntime"),
                             "coreml": ("torch", "coremltools")}[fmt])


def reusable_export(out_dir: Path, card: Card, fmt: str, quant: str,
                    cache_len: int) -> ExportResult | None:
    """The export already in `out_dir` when it is of this very card, format, quantization, cache
    length and toolchain (what `export` would write again), else None."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / "export.json").read_text())
        same_card = json.loads((out_dir / "card.json").read_text()) == card.to_json()
    except (OSError, ValueError):
        return None
    artifact = out_dir / ARTIFACT.get(fmt, "")
    if not (same_card and artifact.exists() and meta.get("format") == fmt
            and meta.get("quant") == quant and meta.get("cache_len") == cache_len
            and meta.get("toolchain") == toolchain(fmt)):
        return None
    known = ExportResult.__dataclass_fields__
    return ExportResult(**{k: v for k, v in meta.items() if k in known and k != "artifact"},
                        artifact=artifact,
                        extra={k: v for k, v in meta.items()
                               if k not in known and k != "schema_version"})


def export(card: Card, fmt: str, quant: str, out_dir: Path, *, force: bool = False,
           checkpoint: Path | None = None, cache_len: int | None = None, verify: bool = True,
           prompt_len: int = DEFAULT_PROMPT_LEN, seed: int = 0) -> ExportResult:
    """Build `card`'s decoder, export it as `fmt`/`quant` into `out_dir`, verify, and report."""
    from merino_mobile.model import build_decoder

    check_pair(fmt, quant)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; choose another --out or pass --force to replace it")
    model = build_decoder(card, cache_len=cache_len, seed=seed, checkpoint=checkpoint)
    export_fn, verify_fn = _format_functions(fmt)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        built = export_fn(model, quant, tmp / ARTIFACT[fmt], prompt_len=min(prompt_len,
                                                                            model.cache_len))
        seconds = time.perf_counter() - start
        verification = verify_fn(model, built, quant) if verify else {"skipped": "not requested"}
        result = ExportResult(format=fmt, quant=quant, artifact=out_dir / built.name,
                              size_bytes=disk_size(built), export_seconds=round(seconds, 3),
                              verification=verification, card=card.name,
                              cache_len=model.cache_len, extra={"toolchain": toolchain(fmt)})
        (tmp / "card.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
        (tmp / "export.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished folder into place; an old one is set aside first and removed after."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Export a card's decoder to a deployable artifact, verify it, and report what was written.

`export(card, fmt, quant, out_dir)` builds the torch decoder (random weights or a checkpoint),
hands it to the format's exporter (`merino_mobile.formats`), runs the format's verifier against
the fp32 eager model, and leaves in `out_dir`:

    model.pte | model.onnx | model.mlpackage   the artifact (the format's row names it)
    card.json                                  the card it was built from
    export.json                                the ExportResult (size, time, verification)

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
from merino_mobile.files import write_json
from merino_mobile.formats import Format, check_pair, get_format

SCHEMA_VERSION = 1

DEFAULT_PROMPT_LEN = 32
# What the exporters write, beside the toolchain's versions: raised when an export of the same
# card, format and quantization would come out differently (2: ExecuTorch int4 quantizes the
# embedding and the head; 3: its attention runs on ExecuTorch's LLM ops and follows the
# position), so `reusable_export` does not hand back an artifact of older code
EXPORTER_VERSION = 3
# Formats whose decode step attends the positions up to its own (ExecuTorch's custom SDPA since
# exporter version 3, llama.cpp always); the others attend their whole static cache every step.
FOLLOWS_POSITION = {"executorch": 3, "gguf": 1}


def format_attends(fmt: str) -> str:
    """What a decode step of an artifact this code exports in format `fmt` attends (see
    `attention_of`)."""
    return attention_of({"format": fmt, "exporter_version": EXPORTER_VERSION})


def attention_of(export_meta: dict[str, Any]) -> str:
    """What a decode step of an exported artifact attends, from its export.json: "position"
    (the positions up to its own) or "cache" (its whole static KV cache)."""
    since = FOLLOWS_POSITION.get(export_meta.get("format", ""))
    version = export_meta.get("exporter_version") or 1
    return "position" if since is not None and version >= since else "cache"


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


def disk_size(path: Path) -> int:
    """Bytes of a file, or of everything under a folder (a .mlpackage is a folder)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def reusable_export(out_dir: Path, card: Card, fmt: str, quant: str,
                    cache_len: int) -> ExportResult | None:
    """The export already in `out_dir` when it is of this very card, format, quantization, cache
    length, toolchain and exporter version (what `export` would write again), else None."""
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / "export.json").read_text())
        same_card = json.loads((out_dir / "card.json").read_text()) == card.to_json()
    except (OSError, ValueError):
        return None
    f = get_format(fmt)
    artifact = out_dir / f.artifact
    if not (same_card and artifact.exists() and meta.get("format") == fmt
            and meta.get("quant") == quant and meta.get("cache_len") == cache_len
            and meta.get("toolchain") == f.toolchain()
            and meta.get("exporter_version") == EXPORTER_VERSION):
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

    f: Format = check_pair(fmt, quant)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise UserError(f"{out_dir} exists; choose another --out or pass --force to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not an export folder; choose another --out")
    model = build_decoder(card, cache_len=cache_len, seed=seed, checkpoint=checkpoint)
    export_fn, verify_fn = f.functions()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        start = time.perf_counter()
        built = export_fn(model, quant, tmp / f.artifact,
                          prompt_len=min(prompt_len, model.cache_len))
        seconds = time.perf_counter() - start
        verification = verify_fn(model, built, quant) if verify else {"skipped": "not requested"}
        result = ExportResult(format=fmt, quant=quant, artifact=out_dir / built.name,
                              size_bytes=disk_size(built), export_seconds=round(seconds, 3),
                              verification=verification, card=card.name,
                              cache_len=model.cache_len,
                              extra={"toolchain": f.toolchain(),
                                     "exporter_version": EXPORTER_VERSION})
        write_json(tmp / "card.json", card.to_json())
        # the checkpoint's tokenizer (`import` and `train --tokenizer bpe` leave it beside the
        # weights) travels with the artifact, so `generate` and `eval` read real text
        tokenizer = Path(checkpoint).parent / "tokenizer.json" if checkpoint else None
        if tokenizer is not None and tokenizer.is_file():
            shutil.copyfile(tokenizer, tmp / "tokenizer.json")
            result.extra["tokenizer"] = "tokenizer.json"
        elif fmt == "executorch" and card.vocab >= 256:
            # ExecuTorch's LLM runner needs a tokenizer file: the byte tokenizer's, as one
            from merino_mobile.tokenizer import byte_tokenizer_json

            write_json(tmp / "tokenizer.json", byte_tokenizer_json())
            result.extra["tokenizer"] = "tokenizer.json"
        write_json(tmp / "export.json", result.to_json())
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

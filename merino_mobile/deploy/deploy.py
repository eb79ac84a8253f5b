"""Deploy: export a card, run it on a device, and put measured numbers next to the latency
table's predictions.

`deploy` writes `build/<card>/<device>-<format>-<quant>/` in the workspace: the artifact (with the
exporter's card.json and export.json), report.json, report.md and the plots. It never replaces a
previous report unless `force`.

Choices:
- The KV cache is exported with prompt + generate positions (the `--cache-len` of `export`), the
  length a runtime would allocate for that request (see predict.py for what is predicted).
- `--format auto --quant auto`: every runtime the device has x its quantizations is exported,
  verified against fp32 and benched; the fastest decode whose quality stays above QUALITY_FLOOR
  (greedy-token agreement and minimum logit cosine of the export verification) is kept.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import Card
from merino_mobile.deploy.bench import (
    DEFAULT_GENERATE,
    DEFAULT_PROMPT,
    DEFAULT_REPEAT,
    BenchReport,
    bench_artifact,
)
from merino_mobile.deploy.predict import predict, roofline
from merino_mobile.deploy.report import (
    deploy_markdown,
    latency_budget,
    plot_prediction,
    plot_rates,
    setup_title,
)
from merino_mobile.device.base import Fingerprint
from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text, utc_now, write_json
from merino_mobile.formats import FORMATS, for_runtime, get_format
from merino_mobile.target import Target, resolve_target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
QUANTS = ("fp32", "int8", "int4")  # what `--quant auto` tries, where the format has it
# auto keeps a quantized candidate only if it picks the fp32 model's greedy token at least this
# often and keeps every verified step's logit vector this close (cosine). Models with random
# weights have nearly tied logits, so the agreement floor is looser than a trained model would need.
QUALITY_FLOOR = {"greedy_agreement": 0.75, "cosine_min": 0.95}


@dataclass(frozen=True)
class Deployed:
    """What `deploy` wrote (`report`: report.json's object) and the bench it was made from."""

    report: dict[str, Any]
    bench: BenchReport

    def to_json(self) -> dict[str, Any]:
        return self.report


@dataclass
class Candidate:
    format: str
    quant: str
    export: dict[str, Any]
    bench: BenchReport | None
    error: str | None = None

    @property
    def quality(self) -> dict[str, Any]:
        v = self.export.get("verification", {})
        return {k: v[k] for k in ("greedy_agreement", "cosine_min", "passed") if k in v}

    @property
    def quality_ok(self) -> bool:
        q = self.quality
        if self.quant == "fp32":
            return q.get("passed") is not False
        return all(q.get(k, -1) >= floor for k, floor in QUALITY_FLOOR.items())

    def to_json(self, chosen: bool) -> dict[str, Any]:
        b = self.bench
        return {"format": self.format, "quant": self.quant, "quality": self.quality,
                "quality_ok": self.quality_ok, "error": self.error, "chosen": chosen,
                "artifact": self.export.get("artifact"),
                "size_bytes": b.size_bytes if b else None,
                "decode_tokens_per_s": b.decode_tokens_per_s.median if b else None,
                "prefill_tokens_per_s": b.prefill_tokens_per_s.median if b else None}


def _export_and_bench(target: Target, card: Card, out: Path, prompt: int, generate: int,
                      repeat: int, verify: bool, checkpoint: Path | None = None) -> Candidate:
    from merino_mobile.export import export

    fmt, quant = target.format.name, target.quant
    res = export(card, fmt, quant, out, force=True, cache_len=prompt + generate, verify=verify,
                 checkpoint=checkpoint)
    b = bench_artifact(target.ws, res.artifact, target, prompt=prompt, generate=generate,
                       repeat=repeat)
    return Candidate(fmt, quant, res.to_json(), b)


def plan(ws: Workspace, cards: list[Card], device: str | Target | None, fmt: str | None,
         quant: str, prompt: int, generate: int) -> tuple[Target, list[Target]]:
    """Check a deploy (or compare) request, the device opened once: the target as asked (its
    format "auto" when `fmt` is), and the targets (format, quantization) to try."""
    auto_fmt, auto_quant = fmt == "auto", quant == "auto"
    if not auto_quant and quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}; choose {', '.join(QUANTS)} or auto")
    if not auto_fmt and fmt is not None and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)} or auto")
    target = resolve_target(ws, device, None if auto_fmt else fmt, quant)
    for card in cards:
        if prompt + generate > card.context:
            raise UserError(f"--prompt {prompt} + --generate {generate} exceeds the context of "
                            f"card {card.name!r} ({card.context})")
    # the device must be able to run what we export (say which runtimes it has, early)
    dev = target.open()
    try:
        have = dev.runtimes()
    finally:
        dev.cleanup()
    formats = [for_runtime(r) for r in have] if auto_fmt else [target.format]
    tries = [target.using(f, q) for f in formats
             for q in (QUANTS if auto_quant else [quant]) if q in f.quants]
    if not tries:
        raise UserError(f"{target.format.name} does not support quantization {quant!r}; choose "
                        f"{', '.join(target.format.quants)}")
    return target, tries


def deploy(ws: Workspace, card: Card, device: str | Target | None = None,
           fmt: str | None = None,
           quant: str = "int8", *, prompt: int = DEFAULT_PROMPT,
           generate: int = DEFAULT_GENERATE, repeat: int = DEFAULT_REPEAT, force: bool = False,
           predict_latency: bool = True, command: str = "merino-mobile deploy",
           checkpoint: Path | None = None, corpus: str | Path | None = None,
           eval_tokens: int = 512) -> Deployed:
    """Export `card` (random weights, or `checkpoint`'s), bench it on `device`, compare with
    the latency table, write the report. With `corpus` (and a checkpoint) the report's
    `perplexity` says what the export's quantization costs: the chosen artifact's perplexity on
    the corpus's held-out split against the eager fp32 model's (`deploy.text`)."""
    if corpus is not None and checkpoint is None:
        raise UserError("--corpus scores the perplexity of real weights: give --checkpoint too "
                        "(random weights have none worth reading)")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise UserError(f"no checkpoint at {checkpoint}; give the model.safetensors that "
                        f"`train` or `import` wrote")
    if eval_tokens < 1:
        raise UserError(f"--eval-tokens must be at least 1 (got {eval_tokens})")
    target, tries = plan(ws, [card], device, fmt, quant, prompt, generate)
    fmt = "auto" if fmt == "auto" else target.format.name
    out = deploy_dir(ws, card.name, target.name, fmt, quant)
    if (out / "report.json").exists() and not force:
        raise UserError(f"{out / 'report.json'} exists from an earlier deploy; pass --force to "
                        f"replace it")
    auto = len(tries) > 1
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cands: list[Candidate] = []
    for t in tries:
        f, q = t.format.name, t.quant
        where = out / "candidates" / f"{f}-{q}" if auto else out / "artifact"
        try:
            cands.append(_export_and_bench(t, card, where, prompt, generate, repeat,
                                           verify=auto or q != "fp32", checkpoint=checkpoint))
        except UserError as e:
            if not auto:
                raise
            cands.append(Candidate(f, q, {}, None, str(e)))
    # an explicit --quant is the user's choice: its quality is reported, not judged
    ok = [c for c in cands if c.bench is not None and (c.quality_ok or not auto)]
    if not ok:
        raise UserError("no candidate ran with acceptable quality: " + "; ".join(
            f"{c.format}/{c.quant}: {c.error or 'quality ' + str(c.quality)}" for c in cands))
    best = max(ok, key=lambda c: c.bench.decode_tokens_per_s.median)
    ppl = None
    if corpus is not None:
        from merino_mobile.deploy.text import quantization_cost

        assert checkpoint is not None
        ppl = quantization_cost(Path(best.export["artifact"]), card, Path(checkpoint), corpus,
                                max_tokens=eval_tokens)
    report = write_report(target.using(get_format(best.format), best.quant), card,
                          (fmt, quant), cands, best, out, predict_latency, command,
                          time.perf_counter() - t0, perplexity=ppl,
                          checkpoint=None if checkpoint is None else str(checkpoint))
    return Deployed(report, best.bench)


def write_report(target: Target, card: Card, requested: tuple[str, str],
                 cands: list[Candidate], best: Candidate, out: Path, predict_latency: bool,
                 command: str, wall_s: float, perplexity: dict[str, Any] | None = None,
                 checkpoint: str | None = None) -> dict[str, Any]:
    """report.json, report.md and the plots of a benched candidate (`target` is the format and
    quantization it was benched with), in `out`."""
    auto = len(cands) > 1
    b = best.bench
    device, runtime = target.name, target.runtime
    fp = Fingerprint.from_json(b.fingerprint)
    fp = Fingerprint(**{**fp.__dict__, "quant": best.quant})
    pred, warnings = (predict(target, card, b, fp) if predict_latency
                      else ({"reason": "--no-predict"}, []))
    summary = {"name": card.name, "params": accounting.params(card), "depth": card.depth,
               "vocab": card.vocab, "context": card.context,
               "weight_bytes": accounting.weight_bytes(card, best.quant),
               "blocks": [c for c in card.to_json()["blocks"]]}
    report = {
        "schema_version": SCHEMA_VERSION, "kind": "merino-mobile-deploy", "command": command,
        "date": utc_now(), "device": device, "format": best.format, "quant": best.quant,
        "requested": {"format": requested[0], "quant": requested[1]}, "runtime": runtime,
        "prompt": b.prompt, "generate": b.generate, "repeat": b.repeat // b.rounds,
        "rounds": b.rounds, "cache_len": b.prompt + b.generate, "card": summary,
        "fingerprint": b.fingerprint,
        "artifact": best.export["artifact"], "export": best.export, "bench": b.to_json(),
        "load_ms": b.load_ms, "ttft_ms": b.ttft_ms.to_json(),
        "prefill_tokens_per_s": b.prefill_tokens_per_s.to_json(),
        "decode_tokens_per_s": b.decode_tokens_per_s.to_json(),
        "decode_ms_per_token": b.decode_ms_per_token.to_json(),
        "peak_rss_bytes": b.peak_rss_bytes, "size_bytes": b.size_bytes,
        "prediction": pred, "roofline": roofline(target, card, b),
        "checkpoint": checkpoint, "perplexity": perplexity,
        "candidates": [c.to_json(c is best) for c in cands] if auto else [],
        "quality_floor": QUALITY_FLOOR, "warnings": warnings,
        "wall_s": round(wall_s, 1), "out_dir": str(out), "plots": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    if auto:
        chosen = out / "artifact"
        if chosen.exists():
            shutil.rmtree(chosen)
        shutil.copytree(Path(best.export["artifact"]).parent, chosen)
        report["artifact"] = str(chosen / Path(best.export["artifact"]).name)
    budget_ms, why = latency_budget(card.meta)
    if why:
        warnings.append(why)
    setup = setup_title(device, runtime, best.quant)
    context = card.meta.get("context")
    report["plots"].append(str(plot_prediction(
        pred, out / "latency.png", bench=b, budget_ms=budget_ms,
        design_context=context if type(context) is int else None,
        title=f"{card.name}: predicted vs measured on {setup}")))
    shown = [c for c in cands if c.bench] if auto else [best]
    report["plots"].append(str(plot_rates(
        [f"{get_format(c.format).runtime} {c.quant}" + (" (chosen)" if auto and c is best else "")
         for c in shown],
        [c.bench.decode_tokens_per_s for c in shown],
        [c.bench.prefill_tokens_per_s for c in shown], out / "throughput.png",
        f"{card.name}: {len(shown)} candidates on {device}, chosen {runtime} · {best.quant}"
        if auto else f"{card.name}: tokens/s on {setup}",
        highlight=shown.index(best) if auto else None)))
    write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", deploy_markdown(report))
    return report


def deploy_dir(ws: Workspace, card: str, device: str, fmt: str, quant: str) -> Path:
    """Where `deploy` writes a card's artifact and reports."""
    return ws.root / "build" / card / f"{device}-{fmt}-{quant}"


def export_for_deploy(card: Card, out: Path, fmt: str, quant: str, cache_len: int) -> str:
    """Export `card` where `compare` will find and reuse it (the demo's parallel job)."""
    from merino_mobile.export import export, reusable_export

    if reusable_export(out, card, fmt, quant, cache_len) is None:
        export(card, fmt, quant, out, force=True, cache_len=cache_len, verify=quant != "fp32")
    return str(out)



"""Deploy, compare and demo: export a card, run it on a device, and put measured numbers next to
the latency table's predictions.

`deploy` writes `build/<card>/<device>-<format>-<quant>/` in the workspace: the artifact (with the
exporter's card.json and export.json), report.json, report.md and the plots. It never replaces a
previous report unless `force`.

Choices (documented in the README):
- The KV cache is exported with prompt + generate positions (the `--cache-len` of `export`), the
  length a runtime would allocate for that request. The model attends its whole static cache, so
  the predicted decode latency is the table's at context = prompt + generate, and the predicted
  prefill is the table's at the prompt length.
- Card vs latency table: a card whose vocabulary differs from the one the table's head was
  measured at is an error (the head dominates small models). A decode context or prompt outside
  the measured range is a warning: the prediction is extrapolated and flagged.
- `--format auto --quant auto`: every runtime the device has x fp32/int8/int4 is exported,
  verified against fp32 and benched; the fastest decode whose quality stays above QUALITY_FLOOR
  (greedy-token agreement and minimum logit cosine of the export verification) is kept.
- Memory roofline: weight bytes read per token (accounting.weight_bytes) over the device's
  measured copy bandwidth (bandwidth.json under devices/<name>/, measured once).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.bench import (
    DEFAULT_GENERATE,
    DEFAULT_PROMPT,
    DEFAULT_REPEAT,
    DEFAULT_ROUNDS,
    FORMAT_OF_RUNTIME,
    RUNTIME_OF_FORMAT,
    BenchReport,
    bench_artifact,
    bench_side_by_side,
    open_for,
)
from merino_mobile.card import Card
from merino_mobile.errors import UserError
from merino_mobile.report import (
    compare_markdown,
    deploy_markdown,
    plot_prediction,
    plot_rates,
    write_json,
)
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
QUANTS = ("fp32", "int8", "int4")
# auto keeps a quantized candidate only if it picks the fp32 model's greedy token at least this
# often and keeps every verified step's logit vector this close (cosine). Models with random
# weights have nearly tied logits, so the agreement floor is looser than a trained model would need.
QUALITY_FLOOR = {"greedy_agreement": 0.75, "cosine_min": 0.95}
FLAG_PCT = 10.0


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- prediction ----------------------------------------------------------------------------------

def predict(ws: Workspace, card: Card, device: str, runtime: str, quant: str, bench: BenchReport,
            fingerprint: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """Predicted vs measured decode and prefill, or None with the reason; plus warnings.

    Raises UserError when the card and the table disagree on the vocabulary.
    """
    from merino_mobile.latency import predict_latency
    from merino_mobile.lut import load_lut

    try:
        lut = load_lut(ws, device, runtime, quant)
    except UserError as e:
        return {"reason": str(e)}, []
    warnings: list[str] = []
    mism = lut.fingerprint.mismatch(fingerprint)
    if mism:
        why = (f"{lut.source} was measured on another setup ({'; '.join(mism)}); re-profile "
               f"`merino-mobile profile --device {device} --runtime {runtime} --quant {quant}`")
        return {"reason": why}, [why]
    heads = {p.vocab for p, _ in lut.entries.get("head", {}).get("decode", [])}
    if heads and card.vocab not in heads:
        raise UserError(f"card {card.name!r} has vocab {card.vocab} but {lut.source} measured the "
                        f"head at vocab {sorted(heads)}: they come from different search spaces; "
                        f"profile with a space of vocab {card.vocab} (--space) or deploy with "
                        f"--no-predict")
    context = bench.prompt + bench.generate
    out: dict[str, Any] = {"lut": lut.source, "lut_fingerprint": lut.fingerprint.describe()}
    for phase, length, measured in (("decode", context, bench.decode_ms_per_token.median),
                                    ("prefill", bench.prompt, bench.ttft_ms.median)):
        lengths = {p.context for p, _ in lut.entries.get("layer", {}).get(phase, [])}
        if lengths and not min(lengths) <= length <= max(lengths):
            warnings.append(f"{phase} length {length} is outside the measured {phase} lengths "
                            f"{sorted(lengths)} of {lut.source}: the prediction is extrapolated")
        pred = predict_latency(card, lut, length, phase)
        err = 100 * (pred - measured) / measured
        out[phase] = {"length": length, "predicted_ms": pred, "measured_ms": measured,
                      "error_pct": err, "flagged": abs(err) > FLAG_PCT}
    for phase in ("decode", "prefill"):
        if out[phase]["flagged"]:
            warnings.append(f"predicted {phase} latency is off by {out[phase]['error_pct']:+.1f}% "
                            f"(more than {FLAG_PCT:g}%)")
    return out, warnings


# -- memory bandwidth and roofline ---------------------------------------------------------------

def host_copy_bandwidth(mbytes: int = 64, repeats: int = 7) -> float:
    """Bytes/s of a large numpy copy on this host (read + write counted), best of `repeats`."""
    import numpy as np

    a = np.ones(mbytes * (1 << 20) // 8)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def device_bandwidth(ws: Workspace, device: str) -> dict[str, Any] | None:
    """The device's measured memory bandwidth, measured once and kept in devices/<name>/."""
    from merino_mobile.device.profiles import load_profile

    path = ws.devices / device / "bandwidth.json"
    if path.is_file():
        return json.loads(path.read_text())
    prof = load_profile(ws, device)
    if prof.transport != "local":
        return None  # a phone needs the copy test run on it: not available yet
    data = {"schema_version": SCHEMA_VERSION, "device": device, "method": "numpy copy of 64 MiB, "
            "read + write bytes, best of 7", "bytes_per_s": host_copy_bandwidth(), "date": now()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return data


def roofline(ws: Workspace, card: Card, device: str, quant: str,
             bench: BenchReport) -> dict[str, Any] | None:
    bw = device_bandwidth(ws, device)
    if bw is None:
        return {"share": None, "reason": f"no measured bandwidth for {device}"}
    wb = accounting.weight_bytes(card, quant)
    floor_ms = 1000 * wb / bw["bytes_per_s"]
    return {"weight_bytes": wb, "bandwidth_gbs": bw["bytes_per_s"] / 1e9, "floor_ms": floor_ms,
            "share": floor_ms / bench.decode_ms_per_token.median}


# -- deploy --------------------------------------------------------------------------------------

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


def _default_runtime(ws: Workspace, device: str) -> str:
    from merino_mobile.device.profiles import load_profile

    return load_profile(ws, device).runtimes[0]


def _export_and_bench(ws: Workspace, card: Card, device: str, fmt: str, quant: str, out: Path,
                      prompt: int, generate: int, repeat: int, verify: bool) -> Candidate:
    from merino_mobile.export import export

    res = export(card, fmt, quant, out, force=True, cache_len=prompt + generate, verify=verify)
    b = bench_artifact(ws, res.artifact, device, prompt=prompt, generate=generate, repeat=repeat)
    return Candidate(fmt, quant, res.to_json(), b)


def _plan(ws: Workspace, cards: list[Card], device: str, fmt: str | None, quant: str,
          prompt: int, generate: int) -> tuple[str, list[tuple[str, str]]]:
    """Check a deploy (or compare) request, the device opened once; the format asked for and the
    (format, quant) pairs to try."""
    from merino_mobile.export import FORMATS

    fmt = fmt or FORMAT_OF_RUNTIME[_default_runtime(ws, device)]
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose executorch, onnx, coreml or auto")
    if quant != "auto" and quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}; choose fp32, int8, int4 or auto")
    for card in cards:
        if prompt + generate > card.context:
            raise UserError(f"--prompt {prompt} + --generate {generate} exceeds the context of "
                            f"card {card.name!r} ({card.context})")
    # the device must be able to run what we export (say which runtimes it has, early)
    runtimes = [RUNTIME_OF_FORMAT[fmt]] if fmt != "auto" else None
    dev = open_for(ws, device, runtimes[0] if runtimes else _default_runtime(ws, device))
    try:
        have = dev.runtimes()
    finally:
        dev.cleanup()
    return fmt, [(FORMAT_OF_RUNTIME[r], q) for r in (runtimes or have)
                 for q in ([quant] if quant != "auto" else QUANTS)]


def deploy(ws: Workspace, card: Card, device: str = "host", fmt: str | None = None,
           quant: str = "int8", *, prompt: int = DEFAULT_PROMPT,
           generate: int = DEFAULT_GENERATE, repeat: int = DEFAULT_REPEAT, force: bool = False,
           predict_latency: bool = True, command: str = "merino-mobile deploy"
           ) -> dict[str, Any]:
    """Export `card`, bench it on `device`, compare with the latency table, write the report."""
    fmt, pairs = _plan(ws, [card], device, fmt, quant, prompt, generate)
    out = deploy_dir(ws, card.name, device, fmt, quant)
    if (out / "report.json").exists() and not force:
        raise UserError(f"{out / 'report.json'} exists from an earlier deploy; pass --force to "
                        f"replace it")
    auto = len(pairs) > 1
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cands: list[Candidate] = []
    for f, q in pairs:
        where = out / "candidates" / f"{f}-{q}" if auto else out / "artifact"
        try:
            cands.append(_export_and_bench(ws, card, device, f, q, where, prompt, generate,
                                           repeat, verify=auto or q != "fp32"))
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
    return _write_report(ws, card, device, (fmt, quant), cands, best, out, predict_latency,
                         command, time.perf_counter() - t0)


def _write_report(ws: Workspace, card: Card, device: str, requested: tuple[str, str],
                  cands: list[Candidate], best: Candidate, out: Path, predict_latency: bool,
                  command: str, wall_s: float) -> dict[str, Any]:
    """report.json, report.md and the plots of a benched candidate, in `out`."""
    from merino_mobile.device.base import Fingerprint

    auto = len(cands) > 1
    b = best.bench
    runtime = RUNTIME_OF_FORMAT[best.format]
    fp = Fingerprint.from_json(b.fingerprint)
    fp = Fingerprint(**{**fp.__dict__, "quant": best.quant})
    pred, warnings = (predict(ws, card, device, runtime, best.quant, b, fp) if predict_latency
                      else ({"reason": "--no-predict"}, []))
    summary = {"name": card.name, "params": accounting.params(card), "depth": card.depth,
               "vocab": card.vocab, "context": card.context,
               "weight_bytes": accounting.weight_bytes(card, best.quant),
               "blocks": [c for c in card.to_json()["blocks"]]}
    report = {
        "schema_version": SCHEMA_VERSION, "kind": "merino-mobile-deploy", "command": command,
        "date": now(), "device": device, "format": best.format, "quant": best.quant,
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
        "prediction": pred, "roofline": roofline(ws, card, device, best.quant, b),
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
    if pred and pred.get("decode"):
        report["plots"].append(str(plot_prediction(pred, out / "latency.png")))
    shown = [c for c in cands if c.bench] if auto else [best]
    report["plots"].append(str(plot_rates(
        [f"{c.format} {c.quant}" for c in shown],
        [c.bench.decode_tokens_per_s.median for c in shown],
        [c.bench.prefill_tokens_per_s.median for c in shown], out / "throughput.png",
        f"{card.name} on {device}")))
    write_json(out / "report.json", report)
    (out / "report.md").write_text(deploy_markdown(report))
    return report


# -- compare -------------------------------------------------------------------------------------

def compare(ws: Workspace, cards: list[Card], device: str = "host", fmt: str | None = None,
            quant: str = "int8", *, baseline: str | None = None, prompt: int = DEFAULT_PROMPT,
            generate: int = DEFAULT_GENERATE, repeat: int = DEFAULT_REPEAT,
            rounds: int = DEFAULT_ROUNDS, force: bool = False, predict_latency: bool = True,
            command: str = "merino-mobile compare", say: Any = None) -> dict[str, Any]:
    """Export every card with one runtime and quantization, bench them side by side, and give
    their speed and size ratios against the baseline card.

    The cards are benched in `rounds` interleaved rounds (`bench_side_by_side`), so every ratio
    comes from measurements taken together. An export `deploy` left in
    build/<card>/<device>-<format>-<quant>/artifact/ is reused when it is of the same card and
    settings; otherwise the card is exported into the compare folder. Each card's report goes
    to build/compare-<device>-<format>-<quant>/<card>/; `deploy`'s own reports are not touched.
    """
    from merino_mobile.export import export, reusable_export

    say = say or (lambda msg: None)
    if not cards:
        raise UserError("give at least one card to compare")
    names = [c.name for c in cards]
    if len(set(names)) != len(names):
        raise UserError(f"cards must have distinct names, got {names}")
    base = baseline or names[-1]
    if base not in names:
        raise UserError(f"--baseline {base!r} is not among the compared cards {names}")
    fmt = fmt or FORMAT_OF_RUNTIME[_default_runtime(ws, device)]
    if fmt == "auto" or quant == "auto":
        raise UserError("compare measures every card with one --format and --quant (not auto)")
    if rounds < 1 or repeat < 1:
        raise UserError(f"--rounds and --repeat must be at least 1 (got {rounds}, {repeat})")
    out = ws.root / "build" / f"compare-{device}-{fmt}-{quant}"
    if (out / "compare.json").exists() and not force:
        raise UserError(f"{out / 'compare.json'} exists; pass --force to replace it")
    _plan(ws, cards, device, fmt, quant, prompt, generate)
    t0 = time.perf_counter()
    cache_len = prompt + generate
    cands = []
    spent: list[float] = []  # each card's own seconds: its export (when made now) and benches
    for card in cards:
        t1 = time.perf_counter()
        where = out / card.name / "artifact"  # compare's own export, when deploy left none
        res = (reusable_export(deploy_dir(ws, card.name, device, fmt, quant) / "artifact", card,
                               fmt, quant, cache_len)
               or reusable_export(where, card, fmt, quant, cache_len))
        if res is None:
            say(f"exporting {card.name} ({fmt}, {quant})")
            res = export(card, fmt, quant, where, force=True, cache_len=cache_len,
                         verify=quant != "fp32")
        else:
            say(f"reusing the export of {card.name}: {res.artifact}")
        cands.append(Candidate(fmt, quant, res.to_json(), None))
        spent.append(time.perf_counter() - t1)
    benches = bench_side_by_side(
        ws, [Path(c.export["artifact"]) for c in cands], device, prompt=prompt,
        generate=generate, repeat=repeat, rounds=rounds,
        on_round=lambda r, n: say(f"bench round {r + 1} of {n}: {', '.join(names)}"))
    reports = {}
    for card, cand, b, own in zip(cards, cands, benches, spent, strict=True):
        cand.bench = b
        reports[card.name] = _write_report(ws, card, device, (fmt, quant), [cand], cand,
                                           out / card.name, predict_latency, command,
                                           own + b.wall_s)
    ref = reports[base]
    rows = []
    for card in cards:
        r = reports[card.name]
        tps = r["decode_tokens_per_s"]["median"]
        rows.append({
            "card": card.name, "params": r["card"]["params"], "size_bytes": r["size_bytes"],
            "ttft_ms": r["ttft_ms"]["median"], "decode_tokens_per_s": tps,
            "prefill_tokens_per_s": r["prefill_tokens_per_s"]["median"],
            "speedup": tps / ref["decode_tokens_per_s"]["median"],
            "size_ratio": ref["size_bytes"] / r["size_bytes"],
            "params_ratio": ref["card"]["params"] / r["card"]["params"],
            "report": str(Path(r["out_dir"]) / "report.md"),
        })
    out.mkdir(parents=True, exist_ok=True)
    result = {"schema_version": SCHEMA_VERSION, "kind": "merino-mobile-compare",
              "command": command, "date": now(), "device": device, "format": fmt,
              "quant": quant, "baseline": base, "prompt": prompt, "generate": generate,
              "repeat": repeat, "rounds": rounds, "side_by_side": True, "rows": rows,
              "wall_s": round(time.perf_counter() - t0, 1), "out_dir": str(out)}
    result["plot"] = str(plot_rates(
        [r["card"] for r in rows], [r["decode_tokens_per_s"] for r in rows],
        [r["prefill_tokens_per_s"] for r in rows], out / "compare.png",
        f"{device}, {fmt} {quant}: baseline {base}"))
    write_json(out / "compare.json", result)
    (out / "compare.md").write_text(compare_markdown(result))
    return result


# -- demo ----------------------------------------------------------------------------------------

TINY_SPACE = """# A tiny search space for `merino-mobile demo --reduced` (tests, CI).
schema_version = 1
name = "demo-tiny"
vocab = 256
context = 64
head_dim = 16
positions = "learned"
tied_head = true
embed_width = 0
max_blocks = 2
widths = [32]
ffn_ratios = [1.0, 2.0]
depth = [0, 3]
sharing = true
order = "non-decreasing"
"""
DEMO_COMPARE = "opt-350m"
DEMO_SPEEDUP = 4.0  # the design's budget: the comparison card's predicted latency / this


def deploy_dir(ws: Workspace, card: str, device: str, fmt: str, quant: str) -> Path:
    """Where `deploy` writes a card's artifact and reports."""
    return ws.root / "build" / card / f"{device}-{fmt}-{quant}"


def export_for_deploy(card: Card, out: Path, fmt: str, quant: str, cache_len: int) -> str:
    """Export `card` where `compare` will find and reuse it (the demo's parallel job)."""
    from merino_mobile.export import export, reusable_export

    if reusable_export(out, card, fmt, quant, cache_len) is None:
        export(card, fmt, quant, out, force=True, cache_len=cache_len, verify=quant != "fp32")
    return str(out)


def demo(ws: Workspace, *, reduced: bool = False, compare_card: str = DEMO_COMPARE,
         say: Any = None, workers: int | None = None, progress: Any = None
         ) -> dict[str, Any]:
    """The whole loop on this host: profile (or reuse the table), design, then `compare` the
    design with the comparison card (export, bench side by side, reports); `reduced` deploys its
    tiny design alone.

    Budget: the design's decode latency budget is the predicted latency of the comparison card
    over DEMO_SPEEDUP (the paper's MeRino-64M is 4.9x faster than OPT-350M); `reduced` has no
    comparison card and uses 1.5x the predicted latency of the smallest design of its tiny space.
    The comparison card is exported while the profile's programs are (`workers` processes side
    by side), so the export of a 331M-parameter model hides behind the profile's.
    """
    from merino_mobile.card import load_card
    from merino_mobile.design import design_card
    from merino_mobile.entropy import EntropySettings
    from merino_mobile.latency import predict_latency as predict_ms
    from merino_mobile.lut import load_lut
    from merino_mobile.parallel import Job
    from merino_mobile.profile import make_grid, run_profile
    from merino_mobile.space import load_space

    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    device, runtime, quant = "host", "executorch", "int8"
    if reduced:
        space_path = ws.search / "demo-tiny.toml"
        if not space_path.exists():
            space_path.parent.mkdir(parents=True, exist_ok=True)
            space_path.write_text(TINY_SPACE)
        prompt, generate, repeat = 16, 16, 3
        grid = make_grid(space_path, "quick", [32], [16])
    else:
        space_path = ws.find("search", "default", ".toml")
        prompt, generate, repeat = DEFAULT_PROMPT, DEFAULT_GENERATE, DEFAULT_REPEAT
        # one decode context, the one the deploy runs at: fewer points, no interpolation in context
        grid = make_grid(space_path, "quick", [prompt + generate], [prompt])
    context = prompt + generate
    space = load_space(space_path)
    if reduced:
        smallest = Card(name="smallest", vocab=space.vocab, context=space.context,
                        head_dim=space.head_dim, blocks=(accounting_block(space),))
        reference, factor = smallest, 1.5
    else:
        reference = load_card(ws.find("models", compare_card, ".json"))
        factor = 1 / DEMO_SPEEDUP
    try:
        lut = load_lut(ws, device, runtime, quant)
        say(f"reusing the latency table {lut.source}")
    except UserError:
        extra = [] if reduced else [Job(
            f"{reference.name} (whole model)", export_for_deploy,
            (reference, deploy_dir(ws, reference.name, device, "executorch", quant) / "artifact",
             "executorch", quant, context), cost=8.0 * reference.depth)]
        say(f"profiling {device} ({runtime}, {quant}): {len(grid.points())} micro-benchmarks"
            + (f"; {reference.name} is exported beside them" if extra else ""))
        run_profile(ws, device, runtime, quant, grid, progress=progress, workers=workers,
                    extra_jobs=extra)
        lut = load_lut(ws, device, runtime, quant)
    steps["profile_s"] = round(time.perf_counter() - t0, 1)

    # a budget for the solver: in the solver's own latency model (streaming terms), else a tiny
    # reference predicted hot gives a budget below the smallest design the solver can see
    budget = factor * predict_ms(reference, lut, context, "decode", cache_aware=False)
    say(f"designing for {budget:.3g} ms per token ({factor:g}x the predicted latency of "
        f"{reference.name} at context {context})")
    t1 = time.perf_counter()
    name = "merino-demo-tiny" if reduced else "merino-demo"
    # the tiny space's 32-wide layers are all "too deep" for the default rho_0 (one layer is
    # already 1/32): it exercises the pipeline, not the design rule, so its bound is loose
    settings = EntropySettings(rho=0.2) if reduced else EntropySettings()
    d, card, card_path = design_card(
        ws, space, {"latency_ms": budget}, settings, context, quant, lut, "exact", {},
        name=name, force=True, lut_info={"device": device, "runtime": runtime, "quant": quant})
    steps["design_s"] = round(time.perf_counter() - t1, 1)
    say(f"designed {card.name}: {accounting.params(card):,} parameters, predicted "
        f"{d.metrics.latency_ms:.3g} ms ({card_path})")
    t1 = time.perf_counter()
    cmp = None
    if reduced:
        say(f"deploying {card.name} ({runtime}, {quant}) and benchmarking it")
        rep = deploy(ws, card, device, "executorch", quant, prompt=prompt, generate=generate,
                     repeat=repeat, force=True, command="merino-mobile demo")
        steps["deploy_s"] = round(time.perf_counter() - t1, 1)
    else:
        say(f"comparing {card.name} with {reference.name}, benched side by side")
        cmp = compare(ws, [card, reference], device, "executorch", quant,
                      baseline=reference.name, prompt=prompt, generate=generate, repeat=repeat,
                      force=True, command="merino-mobile demo", say=say)
        rep = json.loads((Path(cmp["out_dir"]) / card.name / "report.json").read_text())
        steps["compare_s"] = round(time.perf_counter() - t1, 1)
    steps["total_s"] = round(time.perf_counter() - t0, 1)
    return {"schema_version": SCHEMA_VERSION, "kind": "merino-mobile-demo", "reduced": reduced,
            "device": device, "runtime": runtime, "quant": quant, "lut": lut.source,
            "budget_ms": budget, "budget_rule": f"{factor:g}x predicted decode latency of "
            f"{reference.name} at context {context}", "card": str(card_path),
            "params": accounting.params(card), "predicted_ms": d.metrics.latency_ms,
            "report": str(Path(rep["out_dir"]) / "report.md"), "deploy": rep,
            "compare": cmp, "steps": steps}


def accounting_block(space: Any) -> Any:
    """The smallest block a space allows: its narrowest width and smallest FFN ratio, 1 layer."""
    from merino_mobile.card import Block

    w, r = min(space.widths), min(space.ffn_ratios)
    return Block(width=w, ffn_ratio=r, heads=w // space.head_dim, depth=1)

"""Runtimes side by side: one Llama-style card and one design, every runtime x quantization this
host runs, benched in interleaved rounds, each against the host's measured read roofline.

- the Llama-style card: `--card` (default models/smollm2-135m.json, SmolLM2-135M's shape);
- the design: `--design CARD`, else one made here by the tool (`merino_mobile.design`, the exact
  solver on search/default.toml, a parameter budget of `--design-params`, no latency table),
  written once into the bench workspace and reused by later runs (a new design would carry a
  new date in its meta, and every export of it would be made again).

Every format of the formats table (`merino_mobile.formats`) x every quantization it lists is
exported with a KV cache of prompt + generate positions (ExecuTorch fp32/int8/int4, ONNX Runtime
fp32/int8/int4, GGUF fp16/int8/int4/q4_k_m for llama.cpp, Core ML fp16/int8/int4). A format
the host cannot run (Core ML off macOS) and a card a format cannot represent (GGUF refuses
learned positions, adaptive widths, shared blocks: `gguf_problems`) get a row with the reason
instead of numbers. Exports live in the bench workspace (build/runtimes/exports/<card>/
<format>-<quant>/) and are reused on a rerun when they are of the same card, settings and
toolchain (`reusable_export`).

The bench is `bench_side_by_side`'s, across runtimes: round r benches every artifact once, in
the given order on even rounds and reversed on odd ones (`round_order`), each phase a cold
worker process (`bench_artifact`, the `host` profile's threads); every row pools its runs of all
rounds (`BenchReport.pooled`). Per row: TTFT of a `--prompt`-token prefill, decode tokens/s at
the positions `--prompt` and `--prompt` + `--generate` - 1 (128 and 1024 by default), peak RSS
of the runtime process, artifact size, and the share of the roofline: bytes one decode step
reads (weights + the KV cache it attends) over the read bandwidth of a read-only sweep
(`merino_mobile.deploy.predict.host_read_bandwidth`, at the profile's threads, the best of a
sweep before and one after the benches). Which KV a step attends differs by runtime: ONNX
exports attend their whole static fp32 cache at every position; ExecuTorch exports attend
their fp32 cache up to the position (ExecuTorch's LLM ops, `model.use_llm_ops`), llama.cpp its
f16 cells up to the position. Weights are the card's
(`accounting.weight_bytes`) for ExecuTorch and ONNX, and the GGUF file's tensors for llama.cpp
(its Q8_0/Q4_0 blocks carry a scale per 32 weights, and it keeps a tied table at higher
precision). A shared block is counted once: it may be read once per layer it runs, so its share
is a lower bound. Weights are random: speed and size do not depend on them.

    python benchmarks/runtimes.py [--card models/smollm2-135m.json] [--design CARD]
        [--prompt 128] [--generate 897] [--repeat 5] [--rounds 3] [--quick]
        [--formats executorch,gguf] [--export-only | --reuse-only]

`--quick`: both cards shrunk (a 4-layer 192-wide Llama of the card's style, a ~10M design),
positions 16 and 64, 2 runs of 2 rounds: a few minutes once its exports exist (making its 18
artifacts took about 15 minutes on 2 shared cores). `--export-only` makes the exports and stops;
`--reuse-only` benches the ones already made and lists the rest as not run; `--formats` keeps
only the named formats' rows (the ExecuTorch-against-llama.cpp pairs need executorch,gguf). Writes
benchmarks/results/runtimes.json (runtimes-quick.json with --quick) with `rows`, one per card x
format x quantization.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from merino_mobile import accounting
from merino_mobile.card import Block, Card, load_card
from merino_mobile.deploy.bench import BenchReport, bench_artifact, round_order
from merino_mobile.deploy.predict import host_read_bandwidth
from merino_mobile.device.base import percentile
from merino_mobile.errors import UserError
from merino_mobile.export import export, reusable_export
from merino_mobile.export.build import attention_of
from merino_mobile.files import utc_now
from merino_mobile.formats import FORMATS, Format
from merino_mobile.target import resolve_target
from merino_mobile.toolchain import package_versions, quiet_dependencies
from merino_mobile.workspace import Workspace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA_VERSION = 1
DEVICE = "host"
COMMAND = "python benchmarks/runtimes.py"


@dataclasses.dataclass
class Combo:
    """One card x format x quantization: its artifact once exported, its benches once run, or
    why it has neither."""

    card: Card
    fmt: Format
    quant: str
    artifact: Path | None = None
    export: dict[str, Any] = dataclasses.field(default_factory=dict)
    reused: bool = False
    parts: list[BenchReport] = dataclasses.field(default_factory=list)
    error: str | None = None  # the refusal or failure, in the words of whoever refused
    status: str = "pending"  # "benched", "refused", "not run", "failed"

    @property
    def label(self) -> str:
        return f"{self.card.name} {self.fmt.name} {self.quant}"


# -- the cards -------------------------------------------------------------------------------------

def quick_llama(card: Card) -> Card:
    """The card's style (norm, positions, FFN, tying, GQA) at a size that exports in seconds."""
    b = card.blocks[0]
    heads = 192 // card.head_dim
    kv = max(1, heads * b.n_kv_heads // b.heads)
    block = Block(width=192, ffn_ratio=512 / 192, heads=heads, depth=4, shared=False, ffn=b.ffn,
                  kv_heads=kv, hidden=512)
    return dataclasses.replace(card, name=f"{card.name}-quick", vocab=8192, blocks=(block,),
                               meta={"source": f"{card.name} shrunk by benchmarks/runtimes.py "
                                               f"--quick"})


def design(ws: Workspace, params: float, context: int, name: str) -> tuple[Card, Path, bool]:
    """A design of the tool (the exact solver, the default space, a parameter budget), made once
    and read back after: (card, path, made now)."""
    from merino_mobile.design import design_card
    from merino_mobile.entropy import DEEPMAD
    from merino_mobile.space import load_space

    path = ws.models / f"{name}.json"
    if path.is_file():
        card = load_card(path)
        if card.meta.get("budgets") == {"params": params}:
            return card, path, False
    space = load_space(ROOT / "search" / "default.toml")
    # deepmad: the objective its stored results were measured with (the default then)
    _, card, path = design_card(ws, space, {"params": params}, DEEPMAD, context,
                                "int8", None, "exact", {}, name=name, force=True)
    return card, path, True


# -- exports ---------------------------------------------------------------------------------------

def gguf_refusal(card: Card) -> str | None:
    """Why llama.cpp's graph cannot hold `card` (the exporter's own words), None when it can."""
    from merino_mobile.export.gguf import gguf_problems

    problems = gguf_problems(card)
    return "; ".join(problems) if problems else None


def prepare(ws: Workspace, combo: Combo, cache_len: int, host_runtimes: list[str],
            say: Any, reuse_only: bool = False) -> None:
    """Export the combination (or reuse its export; with `reuse_only`, only reuse), or record
    why there is none."""
    if combo.fmt.runtime not in host_runtimes:
        combo.status = "not run"
        if combo.fmt.name == "coreml" and sys.platform != "darwin":
            combo.error = (f"Core ML runs on macOS and iOS only; this host is "
                           f"{platform.system()} (the host profile's runtimes here: "
                           f"{', '.join(host_runtimes)})")
        else:
            combo.error = (f"this host cannot run {combo.fmt.runtime} (it has "
                           f"{', '.join(host_runtimes)})")
        return
    if combo.fmt.name == "gguf":
        why = gguf_refusal(combo.card)
        if why:
            combo.status, combo.error = "refused", why
            return
    out = ws.root / "exports" / combo.card.name / f"{combo.fmt.name}-{combo.quant}"
    res = reusable_export(out, combo.card, combo.fmt.name, combo.quant, cache_len)
    combo.reused = res is not None
    if res is None and reuse_only:
        combo.status = "not run"
        combo.error = (f"not exported when this run started (--reuse-only): `{COMMAND} "
                       f"--export-only` makes it")
        return
    if res is None:
        say(f"exporting {combo.label} (cache {cache_len})")
        t0 = time.perf_counter()
        try:
            # fp32 is the reference the others are verified against (as `compare` does)
            res = export(combo.card, combo.fmt.name, combo.quant, out, force=True,
                         cache_len=cache_len, verify=combo.quant != "fp32")
        except UserError as e:
            combo.status, combo.error = "failed", f"export: {e}"
            return
        except Exception as e:  # an exporter's own crash is this row's result, not the run's end
            combo.status, combo.error = "failed", f"export: {type(e).__name__}: {e}"
            return
        say(f"  {combo.label}: {res.size_bytes / 1e6:.1f} MB in "
            f"{time.perf_counter() - t0:.0f} s")
    else:
        say(f"reusing {out}")
    combo.artifact, combo.export = res.artifact, res.to_json()


# -- the roofline ----------------------------------------------------------------------------------

def gguf_tensor_bytes(artifact: Path) -> int:
    """Bytes of every tensor in a GGUF: what llama.cpp reads of the weights per token (a tied
    table is read whole as the head; an untied one's single row is negligible)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(artifact)).tensors)


def bytes_per_token(combo: Combo, position: int, cache_len: int) -> dict[str, int]:
    """Weights and KV one decode step at `position` reads (module docstring: which KV)."""
    card = combo.card
    if combo.fmt.name == "gguf":
        assert combo.artifact is not None
        weights = gguf_tensor_bytes(combo.artifact)
        kv = accounting.kv_cache_bytes(card, position + 1, "fp16")
    else:
        weights = accounting.weight_bytes(card, combo.quant)
        attended = position + 1 if attention_of(combo.export) == "position" else cache_len
        kv = accounting.kv_cache_bytes(card, attended, "fp32")
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes_per_token": weights + kv}


# -- the bench -------------------------------------------------------------------------------------

def position_samples(parts: list[BenchReport]) -> dict[int, list[float]]:
    """Every timed decode call (ms) at each position, pooled over the rounds."""
    out: dict[int, list[float]] = {}
    for p in parts:
        for pos in p.decode_positions:
            res = p.raw.get(f"decode@{pos}", {}).get("results") or [{}]
            out.setdefault(pos, []).extend(res[0].get("samples_ms") or [])
    return out


def spread(values: list[float]) -> dict[str, float | int]:
    return {"median": percentile(values, 50), "p10": percentile(values, 10),
            "p90": percentile(values, 90), "n": len(values)}


def row_of(combo: Combo, cache_len: int, bandwidth: float) -> dict[str, Any]:
    """The JSON row of a combination: its numbers, or why it has none."""
    ver = combo.export.get("verification") or {}
    row: dict[str, Any] = {
        "card": combo.card.name, "format": combo.fmt.name, "runtime": combo.fmt.runtime,
        "quant": combo.quant, "status": combo.status, "decode_tokens_per_s": None,
        "ttft_ms": None, "peak_rss_bytes": None,
        "size_bytes": combo.export.get("size_bytes"), "roofline_share": None,
        "error": combo.error, "artifact": str(combo.artifact) if combo.artifact else None,
        "export_reused": combo.reused if combo.artifact else None,
        "quality": {k: ver[k] for k in ("passed", "greedy_agreement", "cosine_min")
                    if k in ver}}
    if combo.status != "benched":
        return row
    r = BenchReport.pooled(combo.parts)
    per_pos = position_samples(combo.parts)
    at = {str(pos): 1000 / percentile(ms, 50) for pos, ms in per_pos.items()}
    floors = {pos: bytes_per_token(combo, pos, cache_len) for pos in per_pos}
    floor_ms = {pos: 1000 * f["bytes_per_token"] / bandwidth for pos, f in floors.items()}
    measured_ms = {pos: percentile(ms, 50) for pos, ms in per_pos.items()}
    # the row's rate is the bench's: per run, the mean of the positions' ms; so its floor is
    # the mean of the positions' floors
    mean_floor = sum(floor_ms.values()) / len(floor_ms)
    row |= {
        "decode_tokens_per_s": r.decode_tokens_per_s.median,
        "decode_tokens_per_s_spread": r.decode_tokens_per_s.to_json(),
        "decode_tokens_per_s_at": at,
        "decode_ms_at": {str(pos): spread(ms) for pos, ms in per_pos.items()},
        "ttft_ms": r.ttft_ms.median, "ttft_ms_spread": r.ttft_ms.to_json(),
        "prefill_tokens_per_s": r.prefill_tokens_per_s.median,
        "load_ms": r.load_ms, "peak_rss_bytes": r.peak_rss_bytes, "size_bytes": r.size_bytes,
        "threads": r.threads, "runs": r.repeat, "rounds": r.rounds, "wall_s": r.wall_s,
        "roofline_share": mean_floor / r.decode_ms_per_token.median,
        "roofline_share_at": {str(pos): floor_ms[pos] / measured_ms[pos] for pos in per_pos},
        "roofline": {str(pos): floors[pos] | {"floor_ms": floor_ms[pos]} for pos in per_pos},
    }
    return row


def bench_all(ws: Workspace, combos: list[Combo], dev: Any, target: Any, prompt: int,
              generate: int, repeat: int, rounds: int, say: Any) -> None:
    """Interleaved rounds over every exported combination (module docstring); a combination
    that fails in a round keeps its error and leaves the later rounds."""
    for r in range(rounds):
        live = [c for c in combos if c.artifact is not None and c.status in ("pending",
                                                                             "benched")]
        say(f"bench round {r + 1} of {rounds}: {len(live)} artifacts")
        for i in round_order(len(live), r):
            c = live[i]
            t0 = time.perf_counter()
            try:
                c.parts.append(bench_artifact(ws, c.artifact, target, prompt=prompt,
                                              generate=generate, repeat=repeat, dev=dev,
                                              record=False))
                c.status = "benched"
            except UserError as e:
                c.status, c.error = "failed", f"bench round {r + 1}: {e}"
                c.parts.clear()
            say(f"  {c.label}: " + (f"{1000 / c.parts[-1].decode_ms_per_token.median:.1f} "
                                    f"tok/s, TTFT {c.parts[-1].ttft_ms.median:.0f} ms"
                                    if c.status == "benched" else c.error or "")
                + f" ({time.perf_counter() - t0:.0f} s)")


# -- output ----------------------------------------------------------------------------------------

def table_of(rows: list[dict[str, Any]], positions: list[int]) -> Table:
    table = Table(title=f"runtimes side by side on {DEVICE} (decode at positions "
                        f"{' and '.join(map(str, positions))})")
    cols = ["card", "format", "quant", *[f"tok/s @{p}" for p in positions], "TTFT ms",
            "peak RSS MB", "size MB", "roofline", "note"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("card", "format", "quant", "note")
                         else "right", overflow="fold")
    for row in rows:
        if row["status"] != "benched":
            # the first clause of the reason; the JSON row has all of it
            why = (row["error"] or "").split(":")[0].split(";")[0]
            table.add_row(row["card"], row["format"], row["quant"],
                          *["-"] * (len(positions) + 5),
                          f"{row['status']}: {why[:60]}{'...' if len(why) > 60 else ''}")
            continue
        at = row["decode_tokens_per_s_at"]
        table.add_row(row["card"], row["format"], row["quant"],
                      *[f"{at[str(p)]:.1f}" for p in positions], f"{row['ttft_ms']:.0f}",
                      f"{row['peak_rss_bytes'] / 1e6:.0f}" if row["peak_rss_bytes"] else "-",
                      f"{row['size_bytes'] / 1e6:.1f}", f"{100 * row['roofline_share']:.0f}%",
                      "" if row["quality"].get("passed") is not False else "verification failed")
    return table


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 19's two checks, per card: the best row's share of the roofline, and the best
    ExecuTorch export against llama.cpp at the same bits. A row whose export failed its
    verification against fp32 is not a candidate for the best (as `deploy --quant auto`
    would not keep it)."""
    out: dict[str, Any] = {}
    bits = {"int8": "int8", "int4": "int4"}  # fp32 ExecuTorch vs fp16 GGUF are not the same bits
    for card in dict.fromkeys(r["card"] for r in rows):
        mine = [r for r in rows if r["card"] == card and r["status"] == "benched"]
        if not mine:
            continue
        good = [r for r in mine if r["quality"].get("passed") is not False] or mine
        best = max(good, key=lambda r: r["decode_tokens_per_s"])
        s: dict[str, Any] = {"best": f"{best['format']} {best['quant']}",
                             "best_decode_tokens_per_s": best["decode_tokens_per_s"],
                             "best_roofline_share": best["roofline_share"],
                             "max_roofline_share": max(r["roofline_share"] for r in mine),
                             "same_bits": {}}
        for q in bits:
            et = [r for r in mine if r["format"] == "executorch" and r["quant"] == q]
            ll = [r for r in mine if r["format"] == "gguf" and r["quant"] == q]
            if et and ll:
                s["same_bits"][q] = {"executorch": et[0]["decode_tokens_per_s"],
                                     "llamacpp": ll[0]["decode_tokens_per_s"],
                                     "ratio": et[0]["decode_tokens_per_s"]
                                     / ll[0]["decode_tokens_per_s"]}
        out[card] = s
    return out


def log_console() -> tuple[Console, Any]:
    """A console for the tables and a `say(msg)` for progress lines, both plain text; a log file
    gets the table's full width, not a terminal's default 80 columns."""
    console = Console(width=None if sys.stdout.isatty() else 170)

    def say(msg: str) -> None:
        console.print(msg, highlight=False, markup=False)

    return console, say


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--card", default=str(ROOT / "models" / "smollm2-135m.json"),
                    help="the Llama-style card (a path or a name under models/)")
    ap.add_argument("--design", default=None, help="the design card (default: one made here)")
    ap.add_argument("--design-params", type=float, default=50e6)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=897,
                    help="decode is timed at --prompt and --prompt + --generate - 1")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per phase and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--workspace", type=Path, default=ROOT / "build" / "runtimes",
                    help="where the design and the exports are kept between runs")
    ap.add_argument("--quick", action="store_true", help="small cards, positions 16 and 64, "
                    "2 runs of 2 rounds")
    ap.add_argument("--export-only", action="store_true",
                    help="make (or check) the exports and stop: a later run benches them")
    ap.add_argument("--reuse-only", action="store_true",
                    help="bench the exports already made; make no new ones")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--formats", type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
                    default=None, help="only these formats (comma-separated; default: all)")
    args = ap.parse_args()
    unknown = sorted(set(args.formats or ()) - set(FORMATS))
    if unknown:
        sys.exit(f"--formats: unknown {', '.join(unknown)}; the formats are "
                 f"{', '.join(FORMATS)}")
    if args.quick:
        args.prompt, args.generate, args.repeat, args.rounds = 16, 49, 2, 2
        args.design_params = 10e6
    out = args.out or HERE / "results" / ("runtimes-quick.json" if args.quick
                                          else "runtimes.json")
    quiet_dependencies()
    console, say = log_console()
    t0 = time.perf_counter()
    ws = Workspace.resolve(args.workspace)
    ws.models.mkdir(parents=True, exist_ok=True)
    cache_len = args.prompt + args.generate
    try:
        llama = load_card(ws.find("models", args.card, ".json"))
        if args.quick:
            llama = quick_llama(llama)
        if args.design:
            mine, design_path, made = load_card(ws.find("models", args.design, ".json")), \
                ws.find("models", args.design, ".json"), False
        else:
            name = f"merino-design-{args.design_params / 1e6:g}m"
            mine, design_path, made = design(ws, args.design_params, cache_len, name)
        say(f"design {mine.name}: {accounting.params(mine) / 1e6:.1f}M parameters, "
            f"{mine.depth} layers ({'designed now' if made else 'read'}: {design_path})")
        for card in (llama, mine):
            if cache_len > card.context:
                raise UserError(f"--prompt + --generate = {cache_len} exceeds the context of "
                                f"{card.name} ({card.context})")
        target = resolve_target(ws, DEVICE, "executorch", "fp32")
        dev = target.open()
    except UserError as e:
        sys.exit(str(e))
    host_runtimes = dev.runtimes()
    formats = [f for f in FORMATS.values() if not args.formats or f.name in args.formats]
    combos = [Combo(card, f, q) for card in (llama, mine) for f in formats for q in f.quants]
    try:
        for c in combos:
            prepare(ws, c, cache_len, host_runtimes, say, args.reuse_only)
        if args.export_only:
            for c in combos:
                say(f"{c.label}: {c.artifact or c.status + ': ' + (c.error or '')}")
            return
        threads = target.profile.threads
        # the roofline's bandwidth: the best of a sweep before and one after the benches (a
        # shared machine's neighbours take some of it at times; the floor is what it can give)
        bw_before = host_read_bandwidth(threads)
        bench_all(ws, combos, dev, target, args.prompt, args.generate, args.repeat,
                  args.rounds, say)
        bw_after = host_read_bandwidth(threads)
    finally:
        dev.cleanup()
    bandwidth = max(bw_before, bw_after)
    rows = [row_of(c, cache_len, bandwidth) for c in combos]
    positions = sorted({args.prompt, args.prompt + args.generate - 1})
    console.print(table_of(rows, positions))
    checks = summary(rows)
    for card, s in checks.items():
        same = "; ".join(f"{q}: ExecuTorch {v['ratio']:.2f}x llama.cpp" for q, v in
                         s["same_bits"].items()) or "no ExecuTorch/llama.cpp pair at one width"
        say(f"{card}: best {s['best']} at {s['best_decode_tokens_per_s']:.1f} tok/s, "
            f"{100 * s['best_roofline_share']:.0f}% of the read roofline; {same}")
    cmd = " ".join([COMMAND, *sys.argv[1:]])  # what reproduces this file, as it was run
    result = {
        "schema_version": SCHEMA_VERSION, "command": cmd, "date": utc_now(), "device": DEVICE,
        "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(),
                    "load_avg_end": os.getloadavg()},
        "threads": threads, "prompt": args.prompt, "generate": args.generate,
        "decode_positions": positions, "cache_len": cache_len, "repeat": args.repeat,
        "rounds": args.rounds,
        "bandwidth": {"method": "read-only sweep: torch.sum over 256 MiB of fp32, best of 5, "
                                "before and after the benches",
                      "threads": threads, "before_bytes_per_s": bw_before,
                      "after_bytes_per_s": bw_after, "bytes_per_s": bandwidth},
        "cards": {c.name: {"params": accounting.params(c), "depth": c.depth,
                           "blocks": c.to_json()["blocks"]} for c in (llama, mine)},
        "design": {"card": mine.name, "path": str(design_path), "made_now": made,
                   "designed_by": mine.meta.get("designed_by"),
                   "budgets": mine.meta.get("budgets")},
        "versions": package_versions(("torch", "executorch", "onnxruntime", "llama-cpp-python",
                                      "gguf", "coremltools")),
        "rows": rows, "checks": checks, "wall_s": round(time.perf_counter() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {out}")


if __name__ == "__main__":
    main()

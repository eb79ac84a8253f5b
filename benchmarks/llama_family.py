"""The Llama-style family side by side on this host (issue 18's benchmark): what the decoders
people ship cost with ExecuTorch int8 and int4, and what the quantization costs in perplexity.

Speed: four cards, each exported with ExecuTorch int8 and int4 (a KV cache of `--prompt` +
`--generate` positions) and benched side by side in one run (interleaved rounds, order reversed
every other round, each phase a cold worker process: `runtimes.py`'s bench):

- `smollm2-135m` and `mobilellm-125m` (the shipped cards: SmolLM2-135M's and MobileLLM-125M's
  shapes), and `opt-125m` (a plain OPT decoder of the same size, LayerNorm, GELU, learned
  positions);
- a design of the MobileLLM space (`search/mobilellm.toml`) at SmolLM2-135M's *measured*
  latency: SmolLM2-135M int8 is benched first (the same prompt and generate), its decode median
  is the budget, and `design --verify` (`merino_mobile.deploy.verify`) designs, exports, benches
  and redesigns until the design measures within it (the card is kept in the workspace and
  reused by later runs; `--redesign` makes it again).

Per row: decode tokens/s (the bench's median over the rounds, timed at positions `--prompt` and
`--prompt` + `--generate` - 1), TTFT of the `--prompt`-token prefill, file size, peak RSS of
the runtime process, and the export's check against fp32 (greedy agreement, logit cosine).
Weights are random: speed and size do not depend on them.

Quality: a small Llama-style card (RMSNorm, SwiGLU, 2 K/V heads, rope, tied; ~5M parameters,
`PPL_CARD`) is trained by `merino-mobile train` on an offline corpus (`--corpus`, default
`stdlib`, a BPE of the card's 2,048 ids), exported fp32, int8 and int4 with its checkpoint, and
each export is scored by `merino-mobile eval` on the same held-out tokens: perplexity fp32 vs
int8 vs int4, by the runtime that runs the file. The training resumes from its checkpoint.

The latency table: the workspace's host ExecuTorch int8 table of a MobileLLM-kind space; a
workspace without one is profiled first (the demo's grid and anchors: as
`merino-mobile demo --space mobilellm` does, several minutes).

    python benchmarks/llama_family.py [--workspace build/llama_family] [--prompt 128]
        [--generate 128] [--repeat 5] [--rounds 3] [--iterations 3] [--train-tokens 2000000]
        [--corpus stdlib] [--eval-tokens 4096] [--redesign] [--skip-quality] [--quick]

`--quick` (a check that the script runs: a few minutes): the three cards shrunk to 4 layers of
192 (their own kind of layer), prompt and generate 16, 2 runs of 2 rounds, 100k training tokens
and 256 scored; the design is still asked of the workspace's table (and reported as infeasible
when the space has nothing that fast). Writes benchmarks/results/llama_family.json
(llama_family-quick.json with --quick): `rows` (one per card x quantization), `reference`
(SmolLM2-135M's measured budget), `design` (the verify loop's record) and `quality`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtimes as rt  # noqa: E402  (the side-by-side bench this one shares)

from merino_mobile import accounting  # noqa: E402
from merino_mobile.card import Card, load_card  # noqa: E402
from merino_mobile.deploy.bench import bench_artifact, decode_context  # noqa: E402
from merino_mobile.deploy.predict import host_read_bandwidth  # noqa: E402
from merino_mobile.deploy.verify import BudgetNotMet, blocks_label, verify_design  # noqa: E402
from merino_mobile.design import Infeasible  # noqa: E402
from merino_mobile.entropy import DEEPMAD  # noqa: E402
from merino_mobile.errors import UserError  # noqa: E402
from merino_mobile.export.build import format_attends  # noqa: E402
from merino_mobile.files import utc_now  # noqa: E402
from merino_mobile.formats import FORMATS  # noqa: E402
from merino_mobile.space import load_space  # noqa: E402
from merino_mobile.target import resolve_target  # noqa: E402
from merino_mobile.toolchain import package_versions, quiet_dependencies  # noqa: E402
from merino_mobile.workspace import Workspace  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMAND = "python benchmarks/llama_family.py"
CARDS = ("smollm2-135m", "mobilellm-125m", "opt-125m")
REFERENCE = "smollm2-135m"  # whose measured latency is the design's budget
SPACE = "mobilellm"
QUANTS = ("int8", "int4")
DESIGN_NAME = "mobilellm-at-smollm2-135m"

# The perplexity model: MobileLLM's kind of layer at a size `train` takes through millions of
# tokens in minutes on two cores.
PPL_CARD: dict[str, Any] = {
    "schema_version": 2, "name": "llama-family-ppl", "vocab": 2048, "context": 512,
    "head_dim": 64, "positions": "rope", "rope_theta": 10000.0, "embed_width": None,
    "tied_head": True, "norm": "rmsnorm", "norm_eps": 1e-5, "final_norm": True, "bias": False,
    "blocks": [{"width": 256, "ffn_hidden": 704, "heads": 4, "kv_heads": 2, "depth": 6,
                "shared": False, "ffn": "swiglu"}],
    "meta": {"source": "benchmarks/llama_family.py: the perplexity model"}}


def cli(*args: str) -> dict[str, Any]:
    """Run `merino-mobile ARGS --json` as a user would; its JSON, or its one-line error."""
    p = subprocess.run([sys.executable, "-m", "merino_mobile", *args, "--json"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"merino-mobile {' '.join(args[:2])}: {err}")
    return json.loads(p.stdout)


# -- the design at the reference's measured latency ---------------------------------------------

def table_for(ws: Workspace, target: Any, prompt: int, generate: int, say: Any) -> Any:
    """The workspace's host ExecuTorch int8 table; profiled first (as the demo does) if missing."""
    try:
        return target.table()
    except UserError:
        pass
    from merino_mobile.latency.anchors import DEFAULT_ANCHORS
    from merino_mobile.latency.grid import make_grid
    from merino_mobile.latency.profile import run_profile

    space_path = ws.find("search", SPACE, ".toml")
    context = decode_context(prompt, generate, prompt + generate, format_attends("executorch"))
    grid = make_grid(space_path, "quick", [context], [prompt])
    say(f"profiling host (executorch, int8) on {space_path.name}: {len(grid.points())} "
        f"micro-benchmarks and {DEFAULT_ANCHORS} whole-model anchors")
    run_profile(ws, target, "executorch", "int8", grid, anchors=DEFAULT_ANCHORS,
                space=space_path)
    return target.table()


def reference_latency(ws: Workspace, ref: rt.Combo, target: Any, dev: Any, prompt: int,
                      generate: int, repeat: int) -> dict[str, Any]:
    """SmolLM2-135M int8 benched alone, as every row is: its decode median is the budget."""
    assert ref.artifact is not None
    rep = bench_artifact(ws, ref.artifact, target, prompt=prompt, generate=generate,
                         repeat=repeat, dev=dev, tag="llama-family")
    return {"card": ref.card.name, "quant": ref.quant,
            "decode_ms_per_token": rep.decode_ms_per_token.median,
            "decode_ms_spread": rep.decode_ms_per_token.to_json(),
            "context": rep.decode_context}


def design_at(ws: Workspace, target: Any, budget: float, context: int, iterations: int,
              repeat: int, redesign: bool, say: Any) -> tuple[Card | None, dict[str, Any]]:
    """The MobileLLM space's design at `budget` ms (design --verify), or why there is none; a
    card made by an earlier run at a budget within 5% of this one is reused."""
    path = ws.models / f"{DESIGN_NAME}.json"
    if path.is_file() and not redesign:
        card = load_card(path)
        asked = (card.meta.get("budgets") or {}).get("latency_ms")
        if asked and abs(asked / budget - 1) <= 0.05:
            say(f"reusing the design {path} (asked for {asked:.3g} ms; --redesign makes it anew)")
            return card, {"path": str(path), "reused": True, "budget_ms": asked,
                          "measured_latency_ms": card.meta.get("measured_latency_ms"),
                          "verify": card.meta.get("verify")}
    space = load_space(ws.find("search", SPACE, ".toml"))
    say(f"design --verify on {SPACE} at {budget:.3g} ms per token (context {context})")
    try:
        # deepmad: the objective its stored results were measured with (the default then)
        r = verify_design(ws, space, {"latency_ms": budget}, DEEPMAD, context,
                          device=target, quant="int8", name=DESIGN_NAME, force=True,
                          iterations=iterations, repeat=repeat,
                          say=lambda m: say(f"  verify: {m}"))
    except Infeasible as e:
        return None, {"error": f"infeasible: {e}", "budget_ms": budget}
    except BudgetNotMet as e:
        say(f"  verify: {e}; benching the fastest measured design")
        r = e.result
        r.write_card(path, DESIGN_NAME, force=True)
    card = load_card(path)
    return card, {"path": str(path), "reused": False, "budget_ms": budget,
                  "status": r.status, "measured_latency_ms": r.measured_ms,
                  "iterations": [it.summary() for it in r.iterations]}


# -- quality --------------------------------------------------------------------------------------

def quality(ws: Workspace, corpus: str, tokens: int, eval_tokens: int, cache_len: int,
            say: Any) -> dict[str, Any]:
    """Train PPL_CARD (resuming), export it fp32/int8/int4 with its weights, score each export
    on the same held-out tokens."""
    card_path = ws.models / f"{PPL_CARD['name']}.json"
    card_path.write_text(json.dumps(PPL_CARD, indent=2) + "\n")
    run_dir = ws.root / "build" / "llama-family-ppl" / f"train-{corpus}"
    say(f"training {PPL_CARD['name']} on {corpus} for {tokens:,} tokens ({run_dir})")
    t0 = time.perf_counter()
    trained = cli("train", str(card_path), "--corpus", corpus, "--tokens", str(tokens),
                  "--tokenizer", "bpe", "--out", str(run_dir), "--workspace", str(ws.root))
    say(f"  validation loss {trained.get('val_loss', float('nan')):.3f} nats/token "
        f"({time.perf_counter() - t0:.0f} s)")
    ckpt = run_dir / "model.safetensors"
    out: dict[str, Any] = {"card": PPL_CARD, "params": accounting.params(load_card(card_path)),
                           "corpus": corpus, "train": trained, "exports": {}}
    for quant in ("fp32", *QUANTS):
        where = ws.root / "build" / "llama-family-ppl" / f"executorch-{quant}"
        say(f"exporting {PPL_CARD['name']} executorch {quant} with its checkpoint")
        res = cli("export", str(card_path), "--format", "executorch", "--quant", quant,
                  "--checkpoint", str(ckpt), "--cache-len", str(cache_len), "--out", str(where),
                  "--force", "--workspace", str(ws.root))
        artifact = res.get("artifact") or str(where / "model.pte")
        ev = cli("eval", artifact, "--corpus", corpus, "--tokens", str(eval_tokens),
                 "--workspace", str(ws.root))
        say(f"  {quant}: perplexity {ev['perplexity']:.3f} over {ev['tokens_scored']} tokens")
        out["exports"][quant] = {"artifact": artifact, "size_bytes": res.get("size_bytes"),
                                 "eval": ev}
    base = out["exports"]["fp32"]["eval"]
    for q in QUANTS:
        ev = out["exports"][q]["eval"]
        ev["perplexity_increase_pct"] = 100 * (ev["perplexity"] / base["perplexity"] - 1)
    return out


# -- output ---------------------------------------------------------------------------------------

def speed_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="the Llama-style family side by side (host, ExecuTorch)")
    for col in ("card", "params", "quant", "decode tok/s", "TTFT ms", "size MB", "peak RSS MB",
                "vs fp32", "note"):
        table.add_column(col, justify="left" if col in ("card", "quant", "note") else "right")
    for r in rows:
        if r["status"] != "benched":
            table.add_row(r["card"], f"{r['params'] / 1e6:.1f}M", r["quant"], *["-"] * 5,
                          f"{r['status']}: {(r['error'] or '')[:60]}")
            continue
        q = r["quality"]
        check = (f"agree {q['greedy_agreement']:.2f}, cos {q['cosine_min']:.3f}"
                 if "greedy_agreement" in q and "cosine_min" in q else "-")
        table.add_row(r["card"], f"{r['params'] / 1e6:.1f}M", r["quant"],
                      f"{r['decode_tokens_per_s']:.1f}", f"{r['ttft_ms']:.0f}",
                      f"{r['size_bytes'] / 1e6:.1f}",
                      f"{r['peak_rss_bytes'] / 1e6:.0f}" if r["peak_rss_bytes"] else "-", check,
                      "" if q.get("passed") is not False else "verification failed")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=ROOT / "build" / "llama_family",
                    help="where the table, the design, the exports and the training are kept")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per phase and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--iterations", type=int, default=3, help="designs design --verify may bench")
    ap.add_argument("--redesign", action="store_true", help="design anew even if the "
                    "workspace has a design at this budget")
    ap.add_argument("--corpus", default="stdlib", help="the training and held-out text")
    ap.add_argument("--train-tokens", type=int, default=2_000_000)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--skip-quality", action="store_true", help="speed only")
    ap.add_argument("--quick", action="store_true", help="shrunk cards, short benches")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.prompt, args.generate, args.repeat, args.rounds = 16, 16, 2, 2
        args.train_tokens, args.eval_tokens, args.iterations = 100_000, 256, 1
    out = args.out or HERE / "results" / ("llama_family-quick.json" if args.quick
                                          else "llama_family.json")
    quiet_dependencies()
    console, say = rt.log_console()
    try:
        result = run(args, say, console)
    except UserError as e:
        sys.exit(f"error: {e}")
    result["command"] = " ".join([COMMAND, *sys.argv[1:]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {out}")


def run(args: argparse.Namespace, say: Any, console: Console) -> dict[str, Any]:
    t0 = time.perf_counter()
    ws = Workspace.resolve(args.workspace)
    ws.models.mkdir(parents=True, exist_ok=True)
    cache_len = args.prompt + args.generate
    cards = [load_card(ws.find("models", n, ".json")) for n in CARDS]
    if args.quick:
        cards = [rt.quick_llama(c) for c in cards]
    target = resolve_target(ws, "host", "executorch", "int8")
    table = table_for(ws, target, args.prompt, args.generate, say)
    say(f"latency table {table.source} ({'calibrated' if table.calibrated else 'raw'})")
    et = FORMATS["executorch"]
    combos = [rt.Combo(c, et, q) for c in cards for q in QUANTS]
    dev = target.open()
    try:
        host_runtimes = dev.runtimes()
        for c in combos:
            rt.prepare(ws, c, cache_len, host_runtimes, say)
        ref = next(c for c in combos if c.card.name.startswith(REFERENCE) and c.quant == "int8")
        if ref.artifact is None:
            raise UserError(f"the reference {ref.label} has no export: {ref.error}")
        say(f"benching {ref.label} for the design's budget")
        reference = reference_latency(ws, ref, target, dev, args.prompt, args.generate,
                                      args.repeat)
        say(f"  {reference['decode_ms_per_token']:.3g} ms per token at context "
            f"{reference['context']}")
        mine, design = design_at(ws, target, reference["decode_ms_per_token"],
                                 reference["context"], args.iterations, args.repeat,
                                 args.redesign, say)
        if mine is not None:
            say(f"design {blocks_label(mine)}: {accounting.params(mine) / 1e6:.1f}M parameters")
            for q in QUANTS:
                c = rt.Combo(mine, et, q)
                rt.prepare(ws, c, cache_len, host_runtimes, say)
                combos.append(c)
        else:
            say(f"no design: {design['error']}")
        bandwidth = host_read_bandwidth(target.profile.threads)
        rt.bench_all(ws, combos, dev, target, args.prompt, args.generate, args.repeat,
                     args.rounds, say)
    finally:
        dev.cleanup()
    rows = []
    for c in combos:
        row = rt.row_of(c, cache_len, bandwidth)
        row |= {"params": accounting.params(c.card), "architecture": blocks_label(c.card),
                "designed": c.card is mine}
        rows.append(row)
    console.print(speed_table(rows))
    qual = None
    if not args.skip_quality:
        qual = quality(ws, args.corpus, args.train_tokens, args.eval_tokens, cache_len, say)
        ex = qual["exports"]
        say("perplexity of the trained model on held-out text: " + ", ".join(
            f"{q} {ex[q]['eval']['perplexity']:.3f}"
            + (f" (+{ex[q]['eval']['perplexity_increase_pct']:.1f}%)" if q != "fp32" else "")
            for q in ex))
    return {
        "schema_version": 1, "kind": "merino-mobile-llama-family", "date": utc_now(),
        "device": "host", "format": "executorch", "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(),
                    "load_avg_end": os.getloadavg()},
        "threads": target.profile.threads, "prompt": args.prompt, "generate": args.generate,
        "cache_len": cache_len, "repeat": args.repeat, "rounds": args.rounds,
        "latency_table": table.source, "reference": reference, "design": design,
        "rows": rows, "quality": qual,
        "versions": package_versions(("torch", "executorch")),
        "wall_s": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    main()

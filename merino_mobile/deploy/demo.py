"""The demo: the whole loop on this host, profile (or reuse the table), design, then compare the
design with a reference card side by side (`--reduced`: a tiny space, deployed alone)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import Block, Card, load_card
from merino_mobile.deploy.bench import (
    DEFAULT_GENERATE,
    DEFAULT_PROMPT,
    DEFAULT_REPEAT,
    decode_context,
)
from merino_mobile.deploy.compare import compare
from merino_mobile.deploy.deploy import deploy, deploy_dir, export_for_deploy
from merino_mobile.design import design_card
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.export.build import format_attends
from merino_mobile.files import atomic_write_text
from merino_mobile.latency import predict_latency as predict_ms
from merino_mobile.latency.anchors import DEFAULT_ANCHORS
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.profile import run_profile
from merino_mobile.parallel import Job
from merino_mobile.space import Choice, load_space
from merino_mobile.target import resolve_target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
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
# `demo --reduced --space mobilellm`: the MobileLLM space's kind of layer (RMSNorm, SwiGLU, rotary
# positions, grouped-query attention, no biases) at the tiny space's scale
TINY_LLAMA_SPACE = """# A tiny Llama-style space for `demo --reduced --space mobilellm`.
schema_version = 2
name = "demo-tiny-llama"
vocab = 256
context = 64
head_dim = 16
positions = "rope"
tied_head = true
embed_width = 0
norm = "rmsnorm"
bias = false
ffn = "swiglu"
kv_heads = [1]
max_blocks = 2
widths = [32]
ffn_ratios = [2.0, 3.0]
depth = [0, 3]
sharing = true
order = "non-decreasing"
"""
DEMO_COMPARE = "opt-350m"
# each shipped space's comparison card: of its vocabulary and kind of layer, so the table
# predicts it (a Llama-style table does not measure OPT's layers)
SPACE_COMPARE = {"default": DEMO_COMPARE, "mobilellm": "mobilellm-125m"}
DEMO_SPEEDUP = 4.0  # the design's budget: the comparison card's predicted latency / this


def demo(ws: Workspace, *, reduced: bool = False, space: str = "default",
         compare_card: str | None = None, speedup: float = DEMO_SPEEDUP,
         say: Any = None, workers: int | None = None, progress: Any = None
         ) -> dict[str, Any]:
    """The whole loop on this host: profile (or reuse the table), design, then `compare` the
    design with the comparison card (export, bench side by side, reports); `reduced` deploys its
    tiny design alone.

    The full demo designs with `design --verify` (`merino_mobile.deploy.verify`): the design is
    exported and benched, and redesigned while it measures over its budget, so the card it
    compares keeps the budget on this host as measured. When no design keeps it, the fastest
    measured one is compared and the result says so (`verify.status`). `reduced` designs
    without the loop: the tests run it, and they check the loop in tests/test_verify.py.

    Budget: the design's decode latency budget is the predicted latency of the comparison card
    over `speedup` (default DEMO_SPEEDUP; the paper's MeRino-64M is 4.9x faster than OPT-350M);
    `reduced` has no comparison card and uses 1.5x the predicted latency of the smallest design
    of its tiny space. `space`: the search space (search/<space>.toml; "mobilellm" is the
    MobileLLM-style one, whose comparison card is MobileLLM-125M: `SPACE_COMPARE`; `reduced`
    then uses a tiny space of the same kind of layer).
    The comparison card is exported while the profile's programs are (`workers` processes side
    by side), so the export of a 331M-parameter model hides behind the profile's.
    """
    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    target = resolve_target(ws, "host", "executorch", "int8")
    device, runtime, quant = target.name, target.runtime, target.quant
    if not speedup > 0 or speedup == float("inf"):
        raise UserError(f"--speedup must be a positive number (got {speedup})")
    if reduced:
        llama = space != "default" and load_space(ws.find("search", space, ".toml")).norm != \
            "layernorm"
        space_path = ws.search / ("demo-tiny-llama.toml" if llama else "demo-tiny.toml")
        if not space_path.exists():
            atomic_write_text(space_path, TINY_LLAMA_SPACE if llama else TINY_SPACE)
        prompt, generate, repeat = 16, 16, 3
    else:
        space_path = ws.find("search", space, ".toml")
        prompt, generate, repeat = DEFAULT_PROMPT, DEFAULT_GENERATE, DEFAULT_REPEAT
        compare_card = compare_card or SPACE_COMPARE.get(space)
        if compare_card is None:
            raise UserError(f"--space {space}: no comparison card is known for it; give one of "
                            f"its vocabulary and kind of layer with --compare CARD")
    # the comparison's KV cache; its decode steps attend up to their own positions, so the
    # design's context is the one they attend on average, and the grid measures that one only
    # (fewer points, no interpolation in context)
    cache_len = prompt + generate
    context = decode_context(prompt, generate, cache_len, format_attends("executorch"))
    grid = make_grid(space_path, "quick", [context], [prompt])
    space = load_space(space_path)
    if reduced:
        reference, factor = smallest_card(space), 1.5
    else:
        reference = load_card(ws.find("models", compare_card, ".json"))
        factor = 1 / speedup
    try:
        lut = target.table()
        say(f"reusing the latency table {lut.source}")
    except UserError:
        extra = [] if reduced else [Job(
            f"{reference.name} (whole model)", export_for_deploy,
            (reference, deploy_dir(ws, reference.name, device, "executorch", quant) / "artifact",
             "executorch", quant, cache_len), cost=8.0 * reference.depth)]
        say(f"profiling {device} ({runtime}, {quant}): {len(grid.points())} micro-benchmarks"
            + ("" if reduced else f" and {DEFAULT_ANCHORS} whole-model anchors")
            + (f"; {reference.name} is exported beside them" if extra else ""))
        # the full demo's table starts calibrated by a few whole models (the reduced one, a
        # pipeline check in the tests, skips them)
        run_profile(ws, target, runtime, quant, grid, progress=progress, workers=workers,
                    extra_jobs=extra, anchors=0 if reduced else DEFAULT_ANCHORS,
                    space=space_path)
        lut = target.table()
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
    verified = None
    if reduced:
        d, card, card_path = design_card(
            ws, space, {"latency_ms": budget}, settings, context, quant, lut, "exact", {},
            name=name, force=True, lut_info={"device": device, "runtime": runtime,
                                             "quant": quant})
        predicted = d.metrics.latency_ms
    else:
        card, card_path, verified = _verified_design(ws, target, space, budget, settings,
                                                     context, name, say)
        predicted = verified["iterations"][verified["chosen"] - 1]["predicted_ms"]
    steps["design_s"] = round(time.perf_counter() - t1, 1)
    say(f"designed {card.name}: {accounting.params(card):,} parameters, predicted "
        f"{predicted:.3g} ms ({card_path})")
    t1 = time.perf_counter()
    cmp = None
    if reduced:
        say(f"deploying {card.name} ({runtime}, {quant}) and benchmarking it")
        rep = deploy(ws, card, target, "executorch", quant, prompt=prompt, generate=generate,
                     repeat=repeat, force=True, command="merino-mobile demo").report
        steps["deploy_s"] = round(time.perf_counter() - t1, 1)
    else:
        say(f"comparing {card.name} with {reference.name}, benched side by side")
        cmp = compare(ws, [card, reference], target, "executorch", quant,
                      baseline=reference.name, prompt=prompt, generate=generate, repeat=repeat,
                      force=True, command="merino-mobile demo", say=say)
        rep = cmp.pop("reports")[card.name]
        steps["compare_s"] = round(time.perf_counter() - t1, 1)
    steps["total_s"] = round(time.perf_counter() - t0, 1)
    return {"schema_version": SCHEMA_VERSION, "kind": "merino-mobile-demo", "reduced": reduced,
            "device": device, "runtime": runtime, "quant": quant, "lut": lut.source,
            "budget_ms": budget, "budget_rule": f"{factor:g}x predicted decode latency of "
            f"{reference.name} at context {context}", "card": str(card_path),
            "params": accounting.params(card), "predicted_ms": predicted,
            "report": str(Path(rep["out_dir"]) / "report.md"), "deploy": rep,
            "compare": cmp, "verify": verified, "steps": steps}


def _verified_design(ws: Workspace, target: Any, space: Any, budget: float,
                     settings: EntropySettings, context: int, name: str,
                     say: Any) -> tuple[Card, Path, dict[str, Any]]:
    """The full demo's design: `verify_design` at `budget`; when no design keeps it, the
    fastest measured one, written as the card with the loop's record (so the demo still
    compares what this host can do, and says it missed)."""
    from merino_mobile.deploy.verify import BudgetNotMet, verify_design

    try:
        r = verify_design(ws, space, {"latency_ms": budget}, settings, context, device=target,
                          quant=target.quant, name=name, force=True,
                          say=lambda m: say(f"verify: {m}"))
    except BudgetNotMet as e:
        say(f"verify: {e}; comparing the fastest measured design")
        r = e.result
        path = ws.models / f"{name}.json"
        card = r.write_card(path, name, force=True)
        return card, path, r.to_json()
    assert r.card is not None and r.path is not None
    return r.card, r.path, r.to_json()


def accounting_block(space: Any) -> Block:
    """The smallest block a space allows: its narrowest width and smallest FFN ratio, 1 layer."""
    w, r = min(space.widths), min(space.ffn_ratios)
    return Block(width=w, ffn_ratio=r, heads=w // space.head_dim, depth=1)


def smallest_card(space: Any) -> Card:
    """The space's smallest design, with its kind of layer (`accounting_block`, the fewest K/V
    heads it allows)."""
    b = accounting_block(space)
    return space.to_card((Choice(width=b.width, ffn_ratio=b.ffn_ratio, depth=1, shared=False,
                                 kv_heads=space.kv_choices[0]),), "smallest")

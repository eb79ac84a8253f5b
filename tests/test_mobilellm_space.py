"""The Llama-style family in the design path (issue 18, items 3 and 4): search spaces of RMSNorm,
SwiGLU, rotary positions and grouped-query attention; the profile of those layers on this host
(the real exporter and ExecuTorch runtime); every objective, and the exact solver against brute
force, on such spaces; the shipped MobileLLM space designed end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_profile import HOST as PROFILE_HOST

from merino_mobile import accounting as acc
from merino_mobile.card import load_card
from merino_mobile.design import Budgets, Infeasible, Problem, solve
from merino_mobile.design.brute import architectures
from merino_mobile.entropy import OBJECTIVES, EntropySettings, objective_value
from merino_mobile.errors import UserError
from merino_mobile.latency import predict_latency
from merino_mobile.latency.calibration import CalibratedTable, fit
from merino_mobile.latency.grid import make_grid
from merino_mobile.latency.predict import LayerKind, MissingLayerKind
from merino_mobile.latency.profile import run_profile
from merino_mobile.latency.store import Measurement
from merino_mobile.latency.table import read_lut
from merino_mobile.model import Decoder
from merino_mobile.space import Choice, Space, load_space
from merino_mobile.workspace import Workspace

ROOT = Path(__file__).parents[1]
EIGHT_THIRDS = 2.6666666666666665  # MobileLLM's 1536 / 576

# the brief's tiny profile: vocab 256, width 64 (2 heads of 32), SwiGLU, 1 or 2 K/V heads
TINY_LLAMA = """schema_version = 2
name = "tinyllama"
vocab = 256
context = 64
head_dim = 32
positions = "rope"
rope_theta = 10000.0
norm = "rmsnorm"
bias = false
ffn = "swiglu"
kv_heads = [1, 2]
max_blocks = 2
widths = [64]
ffn_ratios = [2.0]
depth = [0, 2]
sharing = true
"""
# the host of tests/test_profile.py, with 5 repeats of at most 0.1 s: a few seconds a profile
HOST = PROFILE_HOST.format(repeats=5, spread=1.5, seconds=0.1, passes=1)


# -- the space -----------------------------------------------------------------------------------

def test_the_mobilellm_space_says_what_mobilellm_is():
    s = load_space(ROOT / "search" / "mobilellm.toml")
    assert (s.norm, s.bias, s.ffn, s.positions, s.rope_theta) == (
        "rmsnorm", False, "swiglu", "rope", 10000.0)
    assert s.kv_heads == (1, 3) and s.kv_choices == (1, 3)
    assert (s.vocab, s.context, s.embed_width, s.tied_head) == (32000, 2048, 576, True)
    assert s.max_blocks * s.max_depth >= 30 and s.sharing and not s.share_always
    assert not s.is_v1
    # version 1 spaces read as before: same sizes, version 1 cards
    default, paper = (load_space(ROOT / "search" / f"{n}.toml") for n in ("default",
                                                                          "merino-paper"))
    assert default.is_v1 and paper.is_v1
    assert (default.size(), paper.size()) == (68_863_440_493_350, 22_457_655_948)
    card = default.to_card([Choice(512, 2.0, 3, True)], "v1")
    assert card.to_json()["schema_version"] == 1


def test_to_card_writes_v2_cards_with_each_blocks_kv_heads(tmp_path):
    s = load_space(ROOT / "search" / "mobilellm.toml")
    arch = (Choice(576, EIGHT_THIRDS, 8, False, 3), Choice(768, 2.0, 4, True, 1))
    card = s.to_card(arch, "m")
    data = card.to_json()
    assert data["schema_version"] == 2
    assert (data["norm"], data["bias"], data["positions"], data["rope_theta"]) == (
        "rmsnorm", False, "rope", 10000.0)
    assert [(b["ffn"], b["kv_heads"], b["shared"]) for b in data["blocks"]] == [
        ("swiglu", 3, False), ("swiglu", 1, True)]
    assert card.blocks[0].ffn_hidden == 1536 and card.blocks[0].kv_width == 192
    assert s.contains(card)
    assert not s.contains(replace(card, blocks=(replace(card.blocks[0], kv_heads=9),)))
    # the decoder built from it has exactly the parameters the accounting counts
    with torch.device("meta"):
        ours = Decoder(card, cache_len=16)
    assert sum(p.numel() for p in ours.parameters()) == acc.params(card)


def test_a_designed_card_counts_what_transformers_counts():
    import transformers

    # the MobileLLM space at its own layer (576 wide, 8/3, 3 K/V heads, unshared): one Llama
    space = replace(load_space(ROOT / "search" / "mobilellm.toml"), widths=(576,),
                    ffn_ratios=(EIGHT_THIRDS,), kv_heads=(3,), sharing=False)
    # deepmad at rho_0 0.06 fills the budget with this one layer (MobileLLM's 30 layers: rho
    # 0.052); merino's bound would stop at fewer
    d = solve(Problem(space, Budgets(params=125e6), EntropySettings(
        rho=0.06, objective="deepmad", effectiveness="deepmad")), "exact")
    card = space.to_card(d.arch, "designed")
    assert card.depth == 30  # 31 layers would be 128.2M
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=576, intermediate_size=1536, num_hidden_layers=card.depth,
            num_attention_heads=9, num_key_value_heads=3, vocab_size=32000,
            tie_word_embeddings=True, max_position_embeddings=2048, rope_theta=10000.0))
    assert acc.params(card) == sum(p.numel() for p in hf.parameters()) == 124_635_456
    assert acc.decoder_params(card) == sum(p.numel() for p in hf.model.layers.parameters())
    assert d.metrics.params == acc.params(card)


# -- every objective, and exact equals brute force -----------------------------------------------

class KindLatency:
    """A synthetic latency table (no profiling): cost proportional to a layer's FLOPs, its kind's
    gate and K/V width included, plus a per-call overhead."""

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim

    def fixed(self, phase="decode"):
        return 0.2

    def layer(self, width, ffn_ratio, heads, context, phase="decode", *, kind=LayerKind()):
        kv = width if kind.kv_heads is None else kind.kv_heads * self.head_dim
        shape = acc.LayerShape(width, round(width * ffn_ratio), kv, kind.ffn, kind.bias,
                               kind.bias, kind.bias, kind.norm)
        return 0.05 + 1e-6 * shape.flops(context) + (0.01 if kind.ffn == "swiglu" else 0.0)

    def projection(self, width_in, width_out, phase="decode", context=1):
        return 0.01 + 2e-6 * width_in * width_out

    def embedding(self, width, vocab, phase="decode", context=1):
        return 0.01

    def head(self, width, vocab, phase="decode"):
        return 0.02 + 2e-6 * width * vocab


def tiny_llama(**kw) -> Space:
    base = dict(name="tinyllama", vocab=256, context=64, head_dim=16, widths=(32, 64),
                ffn_ratios=(1.0, 2.0), max_blocks=2, min_depth=0, max_depth=2, sharing=True,
                order="non-decreasing", positions="rope", norm="rmsnorm", bias=False,
                ffn="swiglu", kv_heads=(1, 2))
    return Space(**(base | kw))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_a_cards_objective_is_the_sum_the_solvers_add_for_gated_gqa_layers(objective):
    space = tiny_llama(embed_width=32)
    s = EntropySettings(objective=objective, alpha=() if objective == "params" else (1.0, 0.5))
    problem = Problem(space, settings=s)
    for arch in architectures(space):
        total = sum(problem.block_score(c, i) for i, c in enumerate(arch))
        assert objective_value(space.to_card(arch, "x"), s) == pytest.approx(total, rel=1e-12)
    # the gate and the narrower K/V maps are what params and merino see, and deepmad does not
    one, few = (space.to_card([Choice(64, 2.0, 1, False, kv)], "x") for kv in (2, 1))
    if objective == "params":
        assert objective_value(one, s) - objective_value(few, s) == 2 * 64 * 16
        layer = acc.LayerShape.of(one, one.blocks[0])
        assert objective_value(one, s) == 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
        assert layer.params == objective_value(one, s)
    elif objective == "deepmad":
        assert objective_value(one, s) == objective_value(few, s)
    else:
        assert objective_value(one, s) != objective_value(few, s)


CASES = [  # (objective, budgets, embed_width, effectiveness rho)
    ("deepmad", dict(params=6e4), None, 1.0),
    ("deepmad", dict(memory=3e5, latency_ms=0.9), 32, 1.0),
    ("merino", dict(params=8e4), None, 1.0),
    ("merino", dict(flops=2e5), 32, 0.3),
    ("params", dict(params=7e4), None, 1.0),
    ("params", dict(memory=2.5e5, latency_ms=1.0), 32, 1.0),
]


@pytest.mark.parametrize("objective,budgets,embed,rho", CASES)
def test_exact_equals_brute_force_on_a_swiglu_gqa_space(objective, budgets, embed, rho):
    space = tiny_llama(embed_width=embed)
    weights = {} if objective == "params" else {"b": 4.0}
    problem = Problem(space, Budgets(**budgets),
                      EntropySettings(rho=rho, objective=objective, **weights), context=32,
                      quant="int8", latency=KindLatency(16) if "latency_ms" in budgets else None)
    try:
        brute = solve(problem, "brute")
    except Infeasible:
        with pytest.raises(Infeasible):
            solve(problem, "exact")
        return
    exact = solve(problem, "exact")
    assert exact.solver.optimal
    assert exact.metrics.entropy == pytest.approx(brute.metrics.entropy, rel=1e-9, abs=1e-9)
    for d in (exact, brute):
        assert problem.feasible(d.arch), problem.violations(d.arch)
        card = problem.card(d.arch)
        assert space.contains(card)
        assert d.metrics.params == acc.params(card)
        assert d.metrics.memory == acc.memory_bytes(card, 32, "int8")
        assert d.metrics.entropy == objective_value(card, problem.settings)
    ea = solve(problem, "ea", generations=100, seed=3)
    assert problem.feasible(ea.arch)


def test_the_exact_check_refuses_kv_heads_outside_the_space():
    problem = Problem(tiny_llama(), Budgets(params=1e6))
    assert "K/V heads 4 are not one of [1, 2]" in problem.violations(
        (Choice(64, 1.0, 1, False, 4),))["space"]
    assert "K/V heads None" in problem.violations((Choice(64, 1.0, 1, False),))["space"]
    mha = Problem(tiny_llama(kv_heads=()), Budgets(params=1e6))
    assert "multi-head" in mha.violations((Choice(64, 1.0, 1, False, 2),))["space"]


# -- the profile of the new layer kinds ----------------------------------------------------------

@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    (root / "search").mkdir()
    (root / "devices").mkdir()
    (root / "search" / "tinyllama.toml").write_text(TINY_LLAMA)
    # the same layers as GELU: a kind the table will not have
    (root / "search" / "tinygelu.toml").write_text(TINY_LLAMA.replace('"swiglu"', '"gelu"'))
    (root / "devices" / "host.toml").write_text(HOST)
    ws = Workspace.resolve(root)
    grid = make_grid(ws.search / "tinyllama.toml", "full", contexts=[16], prompts=[])
    report = run_profile(ws, "host", grid=grid)
    return ws, grid, report


def test_the_grid_measures_each_kv_head_count_of_the_space(profiled):
    _, grid, _ = profiled
    layers = [p for p in grid.points() if p.term == "layer"]
    assert [(p.ffn, p.kv_heads, p.norm, p.nobias) for p in layers] == [
        ("swiglu", 1, "rmsnorm", True), ("swiglu", 2, "rmsnorm", True)]
    # a version 1 space's points keep their keys: no new field in them
    v1 = make_grid(ROOT / "search" / "default.toml", "quick")
    assert all(set(json.loads(p.key)) <= {"term", "phase", "width", "ffn_ratio", "heads",
                                          "context", "width_out", "vocab"} for p in v1.points())


def test_a_tiny_profile_predicts_a_swiglu_gqa_card(profiled, tmp_path, monkeypatch, capsys):
    ws, _, _ = profiled
    lut = read_lut(ws.devices / "host" / "lut-executorch-fp32.json")
    assert {k.kv_heads for k in lut.layer_kinds()} == {1, 2}
    space = load_space(ws.search / "tinyllama.toml")
    card = space.to_card([Choice(64, 2.0, 2, False, 1)], "gqa")
    ms = predict_latency(card, lut, 16)
    assert math.isfinite(ms) and ms > 0
    # on the grid, the layer term is the measurement itself
    measured = {p.kv_heads: v for p, v in lut.entries["layer"]["decode"] if not p.hot}
    assert lut.layer(64, 2.0, 2, 16, kind=LayerKind("swiglu", 1, "rmsnorm", False)) == \
        measured[1]
    # the calibrated table passes the kind through (no calibration: every factor 1)
    assert predict_latency(card, CalibratedTable(lut), 16) == ms
    # a GELU card of the same shape is a kind this table never measured
    gelu = load_space(ws.search / "tinygelu.toml").to_card([Choice(64, 2.0, 2, False, 1)], "g")
    with pytest.raises(MissingLayerKind, match="merino-mobile profile --device host"):
        predict_latency(gelu, lut, 16)
    # a bench of such a card in the store is skipped by the calibration, not fatal to it
    bench = Measurement(
        device="host", fingerprint=lut.fingerprint.key, runtime="executorch", quant="fp32",
        card_name="g", card=gelu.to_json(), prompt=8, generate=8, context=16, cache_len=16,
        threads=1, rounds=1, decode_samples_ms=(1.0,), ttft_samples_ms=(1.0,),
        decode_median_ms=1.0, ttft_median_ms=1.0, artifact="/x/g.pte", artifact_sha256="ab" * 32,
        predicted_ms=None, id=7)
    cal = fit(lut, [bench])
    assert not cal.applied and "never measured" in cal.skipped[0]["reason"]

    from cli_runner import run  # tests/cli_runner.py

    budget = predict_latency(space.to_card([Choice(64, 2.0, 2, True, 2)], "b"), lut, 16,
                             cache_aware=False)
    code, out, err = run(monkeypatch, capsys, "design", "--space", "tinyllama", "--latency",
                         f"{budget * 1.0001}ms", "--device", "host", "--quant", "fp32",
                         "--context", "16", "--rho", "1", "--workspace", str(ws.root), "--json",
                         "--out", str(tmp_path / "d.json"))
    assert code == 0, err
    result = json.loads(out)
    assert result["predicted_latency_ms"] <= budget * 1.0001
    designed = load_card(tmp_path / "d.json")
    assert designed.to_json()["schema_version"] == 2 and designed.blocks[0].ffn == "swiglu"
    # a space of a kind the table lacks: one line naming the profile command, before solving
    code, out, err = run(monkeypatch, capsys, "design", "--space", "tinygelu", "--latency",
                         "5ms", "--device", "host", "--quant", "fp32", "--context", "16",
                         "--workspace", str(ws.root))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "merino-mobile profile --device host --runtime executorch --quant fp32 --space " \
           "tinygelu" in err


# -- the CLI -------------------------------------------------------------------------------------

def test_design_the_mobilellm_space_for_a_parameter_budget(ws, run):
    r = run(ws, "design", "--space", str(ROOT / "search" / "mobilellm.toml"), "--params",
            "125M", "--json", "--name", "mobilellm-p125M")
    result = json.loads(r.stdout)
    assert result["params"] <= 125e6
    card = load_card(ws / "models" / "mobilellm-p125M.json")
    data = card.to_json()
    assert data["schema_version"] == 2 and data["norm"] == "rmsnorm"
    assert all(b["ffn"] == "swiglu" and b["kv_heads"] in (1, 3) for b in data["blocks"])
    # (design --json's architecture lists width, ratio, heads, depth and sharing; the card
    # holds the K/V heads)
    assert acc.params(card) == result["params"]


BAD = [
    ("kv_heads = [1, 3]", "kv_heads 3 does not divide the 2 heads of width 64"),
    ("kv_heads = 0", "kv_heads must be"),
    ('ffn = "geglu"', 'ffn must be one of "gelu", "gelu_tanh", "relu", "swiglu"'),
    ('norm = "batchnorm"', "norm must be one of"),
    ("rope_theta = -1.0", "rope_theta must be"),
]


@pytest.mark.parametrize("line,fragment", BAD)
def test_bad_llama_spaces_exit_2_with_one_line(ws, run, line, fragment):
    key = line.split(" = ")[0]
    text = "\n".join(x for x in TINY_LLAMA.splitlines() if not x.startswith(key + " "))
    (ws / "search" / "bad.toml").write_text(text + "\n" + line + "\n")
    r = run(ws, "design", "--space", "bad", "--params", "1M", ok=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert fragment in r.stderr and "bad.toml" in r.stderr, r.stderr


def test_version_2_keys_in_a_version_1_space_say_so(tmp_path):
    path = tmp_path / "v1.toml"
    path.write_text(TINY_LLAMA.replace("schema_version = 2", "schema_version = 1"))
    with pytest.raises(UserError, match="is a version 2 key: set schema_version = 2"):
        load_space(path)

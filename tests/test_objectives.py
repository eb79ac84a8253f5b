"""The design objectives (deepmad, merino, params) and effectiveness variants (deepmad, merino):
the subspace entropy table against direct SVDs, exact equals brute force for every objective,
every design meets every constraint, MeRino's own space, and the CLI's flags and refusals."""

import decimal
import json
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_design import LinearLatency

from merino_mobile import accounting, entropy
from merino_mobile.card import Block, Card, load_card
from merino_mobile.design import Budgets, Infeasible, Problem, solve
from merino_mobile.design.brute import architectures
from merino_mobile.design.problem import rho_within
from merino_mobile.entropy import (
    MERINO_BETA,
    OBJECTIVES,
    EntropySettings,
    OutsideTable,
    effectiveness,
    load_subspace_table,
    log2_at_least,
    objective_value,
    rho_deficit,
    subspace_table,
)
from merino_mobile.errors import UserError
from merino_mobile.space import Choice, Space, load_space
from merino_mobile.workspace import BUILTIN

EPS = entropy.SUBSPACE_EPS


def direct(d_in: int, d_out: int, samples: int, seed: int) -> tuple[float, float]:
    """Mean and standard error of sum log(sigma + eps) over sampled N(0, 1/d_in) matrices."""
    rng = np.random.default_rng(seed)
    h = [np.sum(np.log(np.linalg.svd(rng.standard_normal((d_in, d_out)) / math.sqrt(d_in),
                                      compute_uv=False) + EPS)) for _ in range(samples)]
    return float(np.mean(h)), float(np.std(h, ddof=1) / math.sqrt(samples))


# -- the subspace entropy table -------------------------------------------------------------------

@pytest.mark.parametrize("d_in,d_out", [
    (64, 64), (48, 32), (32, 48), (16, 64), (64, 16), (128, 16),    # on the grid
    (40, 40), (100, 48), (48, 100), (60, 90), (7, 7), (5, 9), (9, 5), (33, 70), (70, 33),
])
def test_the_table_equals_direct_svd_within_its_stated_error(d_in, d_out):
    table = subspace_table()
    mean, se = direct(d_in, d_out, 400, seed=d_in * 1000 + d_out)
    assert abs(table.expected(d_in, d_out) - mean) <= table.error(d_in, d_out) + 4 * se


def test_the_table_states_its_error_and_was_checked_off_its_grid():
    table = subspace_table()
    assert table.eps == EPS and table.max_size >= 4096 and table.max_ratio >= 4
    data = json.loads(entropy.TABLE_PATH.read_text())
    assert data["validation"]["shapes"] and data["validation"]["worst_share_of_limit"] <= 1
    # a square matrix at initialization scale: about -0.5 nats per singular value
    assert table.expected(1024, 1024) / 1024 == pytest.approx(-0.5, abs=0.01)
    # tall and wide differ by the scale sqrt(ratio): about log(2) per value at ratio 4
    gap = (table.expected(256, 1024) - table.expected(1024, 256)) / 256
    assert gap == pytest.approx(0.5 * math.log(4), abs=0.01)


def test_shapes_outside_the_table_are_refused_by_name():
    with pytest.raises(OutsideTable, match=r"a 8192 x 8192 matrix is outside it"):
        subspace_table().expected(8192, 8192)
    space = Space(name="wide", vocab=256, context=64, head_dim=64, widths=(8192,),
                  ffn_ratios=(1.0,), max_blocks=1, min_depth=1, max_depth=1)
    with pytest.raises(UserError, match="use --objective deepmad or params"):
        Problem(space, Budgets(params=1e9), EntropySettings(objective="merino"))


def test_a_missing_or_corrupt_table_is_one_error_naming_it(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(UserError, match=f"{missing}: .* table is missing; rebuild it with "
                                        "`python -m merino_mobile.entropy`"):
        load_subspace_table(missing)
    good = json.loads(entropy.TABLE_PATH.read_text())
    cases = {
        "truncated.json": entropy.TABLE_PATH.read_text()[:500],
        "not-object.json": "[1, 2]",
        "schema.json": json.dumps(good | {"schema_version": 9}),
        "short-row.json": json.dumps(good | {"tall": good["tall"][:-1]}),
        "nan.json": json.dumps(good | {"wide": [[math.nan] * len(good["ratios"])]
                                       + good["wide"][1:]}),
        "eps.json": json.dumps(good | {"eps": 0.01}),
        "sizes.json": json.dumps(good | {"sizes": list(reversed(good["sizes"]))}),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=f"{path}: .*corrupt.*rebuild it"):
            load_subspace_table(path)


# -- objectives ----------------------------------------------------------------------------------

def tiny(**kw) -> Space:
    base = dict(name="tiny", vocab=256, context=64, head_dim=16, widths=(16, 32, 48),
                ffn_ratios=(1.0, 2.0), max_blocks=3, min_depth=0, max_depth=2, sharing=True,
                order="non-decreasing")
    return Space(**(base | kw))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_a_cards_objective_is_the_sum_the_solvers_add(objective):
    space = tiny(embed_width=32, share_always=False)
    s = EntropySettings(objective=objective, alpha=() if objective == "params" else (1.0, 0.5))
    problem = Problem(space, settings=s)
    for arch in architectures(space):
        total = sum(problem.block_score(c, i) for i, c in enumerate(arch))
        assert objective_value(space.to_card(arch, "x"), s) == pytest.approx(total, rel=1e-12)


def test_entropies_count_executed_layers_and_params_counts_shared_weights_once():
    plain = Card("p", 256, 64, 16, (Block(64, 4.0, 4, 3, False),))
    shared = Card("s", 256, 64, 16, (Block(64, 4.0, 4, 3, True),))
    for name in ("deepmad", "merino"):
        s = EntropySettings(objective=name)
        assert objective_value(shared, s) == objective_value(plain, s)
    p = EntropySettings(objective="params")
    assert objective_value(plain, p) == 3 * objective_value(shared, p)
    assert objective_value(plain, p) == accounting.decoder_params(plain)


def test_merino_weights_mha_and_ffn_terms():
    card = Card("c", 256, 64, 16, (Block(64, 4.0, 4, 2), Block(128, 2.0, 8, 1)))
    t = subspace_table()

    def layer(w, f):
        return 4 * t.expected(w, w), t.expected(w, f) + t.expected(f, w)

    (m1, f1), (m2, f2) = layer(64, 256), layer(128, 256)
    s = EntropySettings(a=0.5, b=2.0, alpha=(1.0, 3.0), objective="merino")
    want = 2 * (0.5 * m1 + 2.0 * f1) + 3.0 * (0.5 * m2 + 2.0 * f2)
    assert objective_value(card, s) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kw,fragment", [
    ({"objective": "magic"}, "unknown objective 'magic'; choose one of deepmad, merino, params"),
    ({"effectiveness": "magic"}, "unknown effectiveness 'magic'; choose one of deepmad, merino"),
    ({"a": -1.0}, "the MHA weight a (alpha_1, --alpha-mha) must be a finite number at least 0"),
    ({"b": math.inf}, "the FFN weight b (alpha_2, --alpha-ffn) must be a finite number"),
    ({"alpha": (1.0, math.nan)}, "the weight alpha of block 1 must be a finite number"),
    ({"objective": "params", "a": 2.0}, "the params objective counts parameters and takes no"),
])
def test_bad_settings_are_refused_by_name(kw, fragment):
    with pytest.raises(UserError) as e:
        EntropySettings(**kw)
    assert fragment in str(e.value)


# -- effectiveness -------------------------------------------------------------------------------

def test_merino_effectiveness_reproduces_the_papers_table_1():
    one = Card("a", 256, 64, 64, (Block(256, 4.0, 4, 1),))
    deep = Card("b", 256, 64, 64, (Block(64, 4.0, 1, 24),))
    assert round(effectiveness(one, "merino"), 3) == 0.008  # 1/16 / log2(256)
    assert effectiveness(deep, "merino") == pytest.approx(0.25)  # 24/16 / log2(64)
    assert effectiveness(deep, "deepmad") == pytest.approx(24 / 64)


def test_merino_rho_is_decided_exactly_on_the_bound():
    arch = (Choice(64, 1.0, 24, False),)  # rho = 1/16 * 24 / 6 = 0.25 exactly
    assert rho_within(arch, 0.25, "merino")
    assert not rho_within(arch, math.nextafter(0.25, 0), "merino")
    odd = (Choice(48, 1.0, 3, False), Choice(96, 2.0, 2, False))  # irrational log2 widths
    value = effectiveness(tiny(widths=(48, 96)).to_card(odd, "x"), "merino")
    assert rho_within(odd, value * (1 + 1e-12), "merino")
    assert not rho_within(odd, value * (1 - 1e-12), "merino")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**6), st.integers(-40, 200), st.integers(1, 40))
def test_log2_at_least_agrees_with_integer_powers(n, p, q):
    # log2(n) >= p/q  <=>  n^q >= 2^p  (q > 0), in integers
    assert log2_at_least(n, Fraction(p, q)) == (n ** q >= 2 ** p if p >= 0 else True)


def test_log2_at_least_tells_apart_values_a_float_cannot():
    n = 3**40
    grid = 2**120
    with decimal.localcontext() as ctx:
        ctx.prec = 80  # Decimal's ln is correctly rounded: far more digits than 2^-120 needs
        below = Fraction(int(Decimal(n).ln() / Decimal(2).ln() * grid), grid)
    above = below + Fraction(1, grid)  # log2(3^40) lies strictly between the two
    assert log2_at_least(n, below) and not log2_at_least(n, above)
    t = Fraction(math.log2(n))  # the float, off by a hair one way or the other
    assert t <= below or t >= above
    assert log2_at_least(n, t) == (t <= below)


# -- solvers: exact equals brute force for every objective --------------------------------------

@st.composite
def problems(draw):
    always = draw(st.integers(0, 3)) == 0
    space = Space(
        name="random", vocab=draw(st.sampled_from([256, 1000])), context=64, head_dim=16,
        widths=tuple(draw(st.lists(st.sampled_from([16, 32, 48, 64, 96]), min_size=1,
                                   max_size=3, unique=True))),
        ffn_ratios=tuple(draw(st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=1,
                                       max_size=2, unique=True))),
        max_blocks=draw(st.integers(1, 3)), min_depth=draw(st.integers(0, 1)),
        max_depth=draw(st.integers(1, 3)), sharing=always or draw(st.booleans()),
        share_always=always, order=draw(st.sampled_from(["any", "non-decreasing"])),
        embed_width=draw(st.sampled_from([None, None, 32])), tied_head=draw(st.booleans()),
    )
    budgets = Budgets(
        params=draw(st.one_of(st.none(), st.floats(2e4, 4e5))),
        flops=draw(st.one_of(st.none(), st.floats(5e4, 2e6))),
        memory=draw(st.one_of(st.none(), st.floats(1e5, 3e6))),
        latency_ms=draw(st.one_of(st.none(), st.floats(0.3, 3.0))),
    )
    if not budgets.active():
        budgets = Budgets(params=draw(st.floats(2e4, 4e5)))
    objective = draw(st.sampled_from(OBJECTIVES))
    variant = draw(st.sampled_from(["deepmad", "merino"]))
    rho = draw(st.sampled_from([0.05, 0.1, 0.3, 1.0] if variant == "deepmad"
                               else [0.02, 0.04, 0.08, 1.0]))
    weights = {} if objective == "params" else {
        "a": draw(st.sampled_from([0.0, 1.0, 2.0])), "b": draw(st.sampled_from([1.0, 4.0]))}
    penalty = {}
    if draw(st.booleans()):  # the rho penalty, from a rho_p below the bound
        penalty = {"penalty": draw(st.sampled_from([0.5, 5.0, 50.0, 5e3])),
                   "penalty_rho": rho * draw(st.sampled_from([0.1, 0.3, 0.6]))}
    s = EntropySettings(rho=rho, objective=objective, effectiveness=variant, **weights,
                        **penalty)
    table = LinearLatency() if budgets.latency_ms is not None else None
    return Problem(space, budgets, s, context=draw(st.sampled_from([16, 64])),
                   quant=draw(st.sampled_from(["fp32", "int8", "int4"])), latency=table)


def outcome(problem, solver, **options):
    try:
        return solve(problem, solver, **options)
    except Infeasible as e:
        return e


def meets_everything(problem, d):
    """The design, re-scored through its card, meets every constraint and is in the space."""
    assert problem.feasible(d.arch), problem.violations(d.arch)
    card = problem.card(d.arch)
    assert problem.space.contains(card)
    m = problem.evaluate(d.arch)
    for name, bound in problem.budgets.active().items():
        assert m.resource(name) <= bound
    assert m.rho <= problem.settings.rho * (1 + 1e-12)
    assert m.entropy == objective_value(card, problem.settings)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_exact_equals_brute_force_for_every_objective(problem):
    exact, brute = outcome(problem, "exact"), outcome(problem, "brute")
    if isinstance(brute, Infeasible):
        assert isinstance(exact, Infeasible), exact.metrics
        return
    assert not isinstance(exact, Infeasible), exact
    assert exact.solver.optimal
    assert exact.metrics.entropy == pytest.approx(brute.metrics.entropy, rel=1e-9, abs=1e-9)
    meets_everything(problem, exact)
    meets_everything(problem, brute)
    ea = solve(problem, "ea", generations=100, seed=3)
    meets_everything(problem, ea)
    assert ea.metrics.entropy <= exact.metrics.entropy + 1e-9 * max(1.0, abs(exact.metrics.entropy))


def test_the_rho_deficit_is_the_linear_row_of_each_variant_and_the_penalty_lowers_by_it():
    space = tiny(widths=(32, 64), max_depth=4)
    card = space.to_card((Choice(32, 2.0, 3, False), Choice(64, 2.0, 4, False)), "x")
    depth = 7
    for variant, rho_p in (("deepmad", 0.05), ("merino", 0.02)):
        rho = effectiveness(card, variant)
        assert rho > rho_p
        want = (depth * math.log(rho / rho_p) if variant == "deepmad"
                else float(MERINO_BETA) * depth ** 2 * (1 / rho_p - 1 / rho))
        assert rho_deficit(card, variant, rho_p) == pytest.approx(want, rel=1e-12)
        assert rho_deficit(card, variant, rho * 1.01) == 0.0  # within rho_p: no deficit
        for objective in OBJECTIVES:
            plain = EntropySettings(rho=1.0, objective=objective, effectiveness=variant)
            lowered = EntropySettings(rho=1.0, objective=objective, effectiveness=variant,
                                      penalty=3.0, penalty_rho=rho_p)
            assert objective_value(card, lowered) == pytest.approx(
                objective_value(card, plain) - 3.0 * want, rel=1e-12)


def test_a_heavy_penalty_acts_like_the_bound_and_every_gamma_matches_brute_force():
    """Deep-and-thin wins unpenalized; a heavy penalty from rho_p keeps the design within
    rho_p, as the hard bound rho <= rho_p would; the exact solver agrees with brute force."""
    space = tiny(widths=(16, 32, 64), ffn_ratios=(1.0,), max_depth=6)
    budgets = Budgets(flops=6e5)
    deepmad = {"objective": "deepmad", "effectiveness": "deepmad"}
    free = Problem(space, budgets, EntropySettings(rho=1.0, **deepmad))
    bound = Problem(space, budgets, EntropySettings(rho=0.08, **deepmad))
    heavy = Problem(space, budgets, EntropySettings(rho=1.0, penalty=1e4, penalty_rho=0.08,
                                                    **deepmad))
    d_free, d_bound, d_heavy = (solve(p, "exact") for p in (free, bound, heavy))
    assert d_free.metrics.rho > 0.08
    assert d_heavy.arch == d_bound.arch and d_heavy.metrics.rho <= 0.08
    for gamma in (0.5, 2.0, 8.0):
        p = Problem(space, budgets, EntropySettings(rho=1.0, penalty=gamma, penalty_rho=0.08,
                                                    **deepmad))
        exact, brute = solve(p, "exact"), solve(p, "brute")
        assert exact.metrics.entropy == pytest.approx(brute.metrics.entropy, rel=1e-9)


def test_penalty_settings_are_checked():
    with pytest.raises(UserError, match="--penalty needs --penalty-rho"):
        EntropySettings(penalty=1.0)
    with pytest.raises(UserError, match="--penalty-rho without --penalty"):
        EntropySettings(penalty_rho=0.02)
    for bad in (-1.0, math.inf, math.nan, True):
        with pytest.raises(UserError, match="--penalty"):
            EntropySettings(penalty=bad, penalty_rho=0.02)
    for bad in (0.0, -0.1, math.inf):
        with pytest.raises(UserError, match="--penalty-rho must be"):
            EntropySettings(penalty=1.0, penalty_rho=bad)


def test_the_params_objective_trades_sharing_under_a_parameter_budget():
    """Scoring parameters, a shared block is worth less: the exact solver must weigh both."""
    space = tiny(widths=(32, 64), ffn_ratios=(4.0,), max_depth=3)
    problem = Problem(space, Budgets(params=1.2e5, flops=1.5e6),
                      EntropySettings(rho=1.0, objective="params"))
    exact, brute = solve(problem, "exact"), solve(problem, "brute")
    assert exact.metrics.entropy == brute.metrics.entropy
    assert exact.metrics.entropy == accounting.decoder_params(problem.card(exact.arch))


# -- MeRino's own space --------------------------------------------------------------------------

def test_the_papers_space_is_shipped_as_the_appendix_states():
    for path in (BUILTIN / "search" / "merino-paper.toml",
                 BUILTIN.parents[1] / "search" / "merino-paper.toml"):
        s = load_space(path)
        assert s.widths == (64, 128, 256, 384, 512, 640, 768, 896, 1024)
        assert s.ffn_ratios == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
        assert s.depths == range(1, 5) and s.order == "non-decreasing"
        assert s.share_always and s.embed_width == 768 and s.context == 2048
        assert s.vocab == 50272 and all(w % s.head_dim == 0 for w in s.widths)


def test_a_design_in_the_papers_space_shares_every_block():
    space = load_space(BUILTIN / "search" / "merino-paper.toml")
    for objective in OBJECTIVES:
        problem = Problem(space, Budgets(params=60e6, flops=400e6),
                          EntropySettings(objective=objective))
        d = solve(problem, "exact")
        card = problem.card(d.arch)
        assert d.solver.optimal and problem.feasible(d.arch) and space.contains(card)
        assert all(b.shared for b in card.blocks if b.depth >= 2)
        assert card.embedding_width == 768
        ea = solve(problem, "ea", generations=200, seed=0)
        assert all(c.shared for c in ea.arch if c.depth >= 2)


def test_sharing_always_is_honoured_by_every_solver_and_by_contains():
    space = tiny(share_always=True, max_depth=3)
    assert all(c.shared == (c.depth >= 2) for c in space.choices())
    problem = Problem(space, Budgets(flops=1e6), EntropySettings(rho=1.0))
    for solver, options in (("exact", {}), ("brute", {}), ("ea", {"generations": 100})):
        d = solve(problem, solver, **options)
        assert all(c.shared for c in d.arch if c.depth >= 2), (solver, d.arch)
    unshared = (Choice(32, 1.0, 2, False),)
    assert "requires (sharing = \"always\")" in problem.violations(unshared)["space"]
    assert not space.contains(tiny().to_card(unshared, "x"))
    with pytest.raises(UserError, match="share_always needs sharing allowed"):
        tiny(sharing=False, share_always=True)


@pytest.mark.parametrize("value,fragment", [
    ('"always"', None), ("true", None), ("false", None),
    ('"sometimes"', 'sharing must be true or false, got the string "sometimes" (or "always"'),
    ("2", "sharing must be true or false, got 2"),
])
def test_the_sharing_key_reads_true_false_or_always(tmp_path, value, fragment):
    text = (BUILTIN / "search" / "merino-paper.toml").read_text()
    path = tmp_path / "s.toml"
    path.write_text(text.replace('sharing = "always"', f"sharing = {value}"))
    if fragment is None:
        s = load_space(path)
        assert (s.sharing, s.share_always) == {'"always"': (True, True), "true": (True, False),
                                               "false": (False, False)}[value]
        return
    with pytest.raises(UserError) as e:
        load_space(path)
    assert fragment in str(e.value) and str(path) in str(e.value)


# -- the CLI --------------------------------------------------------------------------------------

# `ws` (a workspace with search/tiny.toml) and `run` come from tests/conftest.py


def test_design_objective_flag_and_its_json(ws, run):
    base = ("design", "--params", "300k", "--space", "tiny", "--context", "64", "--json")
    default = json.loads(run(ws, *base).stdout)
    assert default["objective"] == "merino" and default["effectiveness"] == "merino"
    assert default["rho_0"] == entropy.DEFAULT_RHOS["merino"] == 0.08
    assert default["rho"] <= 0.08
    # merino's default weights: b = 4 (its `entropy` is the maximized value, at those weights)
    card = load_card(default["card"])
    assert default["entropy"] == pytest.approx(objective_value(
        card, EntropySettings(1.0, 4.0, objective="merino")))
    for name in OBJECTIVES:
        out = json.loads(run(ws, *base, "--objective", name, "--rho", "0.1").stdout)
        assert out["objective"] == name and set(out["objectives"]) == set(OBJECTIVES)
        assert out["entropy"] == pytest.approx(out["objectives"][name])
        assert out["params"] <= 300_000 and out["solver"]["optimal"]
    params = json.loads(run(ws, *base, "--objective", "params", "--rho", "0.1").stdout)
    deepmad = json.loads(run(ws, *base, "--objective", "deepmad", "--rho", "0.1").stdout)
    assert params["objectives"]["params"] >= deepmad["objectives"]["params"]
    merino = json.loads(run(ws, *base, "--effectiveness", "merino", "--rho", "0.05",
                            "--alpha-ffn", "4").stdout)
    assert merino["effectiveness"] == "merino" and merino["rho"] <= 0.05
    card = json.loads(run(ws, "info", merino["card"], "--json").stdout)
    assert card["effectiveness"]["merino"] == pytest.approx(merino["rho"])


def test_design_penalty_flags_and_their_json(ws, run):
    base = ("design", "--params", "300k", "--space", "tiny", "--context", "64", "--rho", "1.0",
            "--json")
    free = json.loads(run(ws, *base).stdout)
    assert free["penalty"] == 0.0 and free["penalty_rho"] is None
    rho_p = free["rho"] / 2  # the unpenalized design is over rho_p: a heavy penalty moves it
    out = json.loads(run(ws, *base, "--penalty", "1e4", "--penalty-rho", repr(rho_p),
                         "--force").stdout)
    assert out["penalty"] == 1e4 and out["penalty_rho"] == rho_p
    assert out["rho"] <= rho_p * (1 + 1e-12) < free["rho"]
    # within rho_p there is no deficit: the maximized value is the objective itself
    assert out["entropy"] == pytest.approx(out["objectives"]["merino"])


def test_info_prints_every_objective(ws, run):
    out = json.loads(run(ws, "info", "gpt2", "--json").stdout)
    assert set(out["objectives"]) == set(OBJECTIVES)
    # `entropy` and `rho` are the defaults' (merino, b = 4; merino's rho)
    assert out["objectives"]["merino"] == pytest.approx(out["entropy"])
    assert out["objectives"]["params"] == out["decoder_params"]
    gpt2 = load_card(out["card"])
    assert out["objectives"]["deepmad"] == pytest.approx(entropy.entropy(gpt2))
    # with a = b = 1 square matrices at init scale pull merino below zero; b = 4 lifts it
    plain = objective_value(gpt2, EntropySettings(1.0, 1.0, objective="merino"))
    assert plain < 0 < out["entropy"]
    assert out["effectiveness"]["merino"] == pytest.approx(out["rho"])
    text = run(ws, "info", "gpt2").stdout
    assert "objective merino" in text and "objective params" in text and "rho merino" in text
    assert "rho deepmad" in text


@pytest.mark.parametrize("args,fragment", [
    (["--objective", "magic"], "unknown --objective 'magic'; choose one of deepmad, merino, "
                               "params"),
    (["--effectiveness", "x"], "unknown --effectiveness 'x'; choose one of deepmad, merino"),
    (["--alpha-mha", "-1"], "the MHA weight a (alpha_1, --alpha-mha) must be a finite number"),
    (["--alpha-ffn", "nan"], "the FFN weight b (alpha_2, --alpha-ffn) must be a finite number"),
    (["--objective", "params", "--alpha-ffn", "2"], "the params objective counts parameters"),
    (["--effectiveness", "merino", "--rho", "inf"], "--rho must be a finite positive number"),
    (["--penalty", "2"], "--penalty needs --penalty-rho"),
    (["--penalty-rho", "0.02"], "--penalty-rho without --penalty changes nothing"),
    (["--penalty", "-1", "--penalty-rho", "0.02"], "the rho penalty (--penalty) must be a finite"),
    (["--penalty", "1", "--penalty-rho", "0"], "--penalty-rho must be a finite positive number"),
])
def test_bad_objective_input_is_one_clear_line(ws, run, args, fragment):
    proc = run(ws, "design", "--params", "300k", "--space", "tiny", *args, ok=False)
    assert proc.returncode == 2 and fragment in proc.stderr
    assert proc.stderr.strip().startswith("error:") and proc.stdout == ""
    assert "Traceback" not in proc.stderr and not (ws / "models").exists()


def test_a_corrupt_table_stops_design_with_its_name(ws, run, monkeypatch, tmp_path):
    bad = tmp_path / "broken-table.json"
    bad.write_text("{not json")
    monkeypatch.setattr(entropy, "TABLE_PATH", bad)
    proc = run(ws, "design", "--params", "300k", "--space", "tiny", "--objective", "merino",
               ok=False)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "corrupt" in proc.stderr
    assert "python -m merino_mobile.entropy" in proc.stderr and "Traceback" not in proc.stderr
    # the other objectives need no table; what cannot be scored is null, and info says why
    out = json.loads(run(ws, "design", "--params", "300k", "--space", "tiny", "--objective",
                         "deepmad", "--json").stdout)
    assert out["objectives"]["merino"] is None and out["objectives"]["deepmad"] is not None
    assert "corrupt" in run(ws, "info", "gpt2").stdout

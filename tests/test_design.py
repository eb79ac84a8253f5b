"""The design solvers: exact equals brute force, every design meets every constraint, the
evolutionary baseline never beats the exact optimum, infeasible budgets are explained."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merino_mobile.design import Budgets, Infeasible, Problem, solve
from merino_mobile.design.brute import architectures
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.latency import predict_latency
from merino_mobile.space import Space, load_space
from merino_mobile.workspace import BUILTIN


class LinearLatency:
    """A synthetic latency table: cost proportional to FLOPs plus a per-call overhead.

    Stands in for a measured LUT (merino_mobile.latency.table) so solver tests need no profiling.
    """

    def __init__(self, ns_per_flop: float = 1e-6, overhead: float = 0.05):
        self.k, self.overhead = ns_per_flop, overhead

    def fixed(self, phase="decode"):
        return 0.2

    def layer(self, width, ffn_ratio, heads, context, phase="decode"):
        return self.overhead + self.k * (2 * (4 * width**2 + 2 * width * width * ffn_ratio)
                                         + 4 * width * context)

    def projection(self, width_in, width_out, phase="decode", context=1):
        return 0.01 + self.k * 2 * width_in * width_out

    def embedding(self, width, vocab, phase="decode", context=1):
        return 0.01

    def head(self, width, vocab, phase="decode"):
        return 0.02 + self.k * 2 * width * vocab


@st.composite
def problems(draw):
    space = Space(
        name="random", vocab=draw(st.sampled_from([256, 1000])), context=64, head_dim=16,
        widths=tuple(draw(st.lists(st.sampled_from([16, 32, 48, 64, 96]), min_size=1,
                                   max_size=3, unique=True))),
        ffn_ratios=tuple(draw(st.lists(st.sampled_from([1.0, 2.0, 4.0]), min_size=1,
                                       max_size=2, unique=True))),
        max_blocks=draw(st.integers(1, 3)), min_depth=draw(st.integers(0, 1)),
        max_depth=draw(st.integers(1, 3)), sharing=draw(st.booleans()),
        order=draw(st.sampled_from(["any", "non-decreasing"])),
        embed_width=draw(st.sampled_from([None, None, 32])), tied_head=draw(st.booleans()),
    )
    budgets = Budgets(
        params=draw(st.one_of(st.none(), st.floats(2e4, 4e5))),
        flops=draw(st.one_of(st.none(), st.floats(5e4, 2e6))),
        memory=draw(st.one_of(st.none(), st.floats(1e5, 3e6))),
        latency_ms=draw(st.one_of(st.none(), st.floats(0.3, 3.0))),
    )
    rho = draw(st.sampled_from([0.05, 0.1, 0.3, 1.0]))
    table = LinearLatency() if budgets.latency_ms is not None else None
    context = draw(st.sampled_from([16, 64]))
    return Problem(space, budgets, EntropySettings(rho=rho), context=context,
                   quant=draw(st.sampled_from(["fp32", "int8", "int4"])), latency=table)


def outcome(problem, solver):
    try:
        return solve(problem, solver)
    except Infeasible as e:
        return e


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_exact_equals_brute_force(problem):
    exact, brute = outcome(problem, "exact"), outcome(problem, "brute")
    if isinstance(brute, Infeasible):
        assert isinstance(exact, Infeasible)
        return
    assert not isinstance(exact, Infeasible), exact
    assert exact.solver.optimal
    assert exact.metrics.entropy == pytest.approx(brute.metrics.entropy, rel=1e-9)
    # the exact design is re-scored through the card: it meets every constraint
    assert problem.feasible(exact.arch), problem.violations(exact.arch)
    assert problem.space.contains(problem.card(exact.arch))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_ea_never_beats_exact_and_respects_constraints(problem):
    exact = outcome(problem, "exact")
    if isinstance(exact, Infeasible):
        return
    ea = solve(problem, "ea", generations=300, seed=1)
    assert problem.feasible(ea.arch, ea.metrics)
    assert ea.metrics.entropy <= exact.metrics.entropy + 1e-9
    assert not ea.solver.optimal


def test_ea_is_reproducible_with_a_seed():
    space = load_space(BUILTIN / "search" / "default.toml")
    problem = Problem(space, Budgets(params=40e6))
    a = solve(problem, "ea", generations=200, seed=7)
    b = solve(problem, "ea", generations=200, seed=7)
    assert a.arch == b.arch


def test_default_space_is_large_and_counted_exactly():
    space = load_space(BUILTIN / "search" / "default.toml")
    assert space.size() >= 10**9
    small = Space(name="s", vocab=256, context=64, head_dim=16, widths=(16, 32),
                  ffn_ratios=(1.0, 2.0), max_blocks=3, min_depth=0, max_depth=2, sharing=True,
                  order="non-decreasing")
    assert small.size() == sum(1 for _ in architectures(small))


def test_default_space_design_is_optimal_and_feasible():
    space = load_space(BUILTIN / "search" / "default.toml")
    problem = Problem(space, Budgets(params=60e6, memory=200e6), context=512)
    d = solve(problem, "exact")
    assert d.solver.optimal and d.solver.gap <= 1e-6
    assert d.metrics.params <= 60e6 and d.metrics.memory <= 200e6
    assert d.metrics.rho <= problem.settings.rho * (1 + 1e-9)
    # the effectiveness bound binds: without it the optimum is deeper and thinner
    assert d.metrics.rho > 0.9 * problem.settings.rho


def test_latency_budget_uses_the_table():
    space = load_space(BUILTIN / "search" / "default.toml")
    table = LinearLatency(ns_per_flop=2e-8)
    problem = Problem(space, Budgets(latency_ms=20.0), latency=table)
    d = solve(problem, "exact")
    card = problem.card(d.arch)
    assert d.metrics.latency_ms == pytest.approx(predict_latency(card, table, 512))
    assert d.metrics.latency_ms <= 20.0


def test_latency_budget_without_a_table_is_refused():
    space = load_space(BUILTIN / "search" / "default.toml")
    with pytest.raises(UserError, match="latency budget needs a latency table"):
        Problem(space, Budgets(latency_ms=20.0))


def test_infeasible_budget_names_the_smallest_achievable_value():
    space = load_space(BUILTIN / "search" / "default.toml")
    with pytest.raises(Infeasible) as e:
        solve(Problem(space, Budgets(params=1e6)), "exact")
    assert "params budget 1.0M is below the smallest achievable" in str(e.value)
    smallest = e.value.minimums["params"]
    # the smallest achievable design really exists: a budget just above it is feasible
    d = solve(Problem(space, Budgets(params=math.ceil(smallest))), "exact")
    assert d.metrics.params == pytest.approx(smallest)


def test_rho_too_small_for_the_space():
    space = load_space(BUILTIN / "search" / "default.toml")
    with pytest.raises(Infeasible, match="rho <= 0.0001"):
        solve(Problem(space, Budgets(params=60e6), EntropySettings(rho=1e-4)), "exact")


def test_brute_force_refuses_large_spaces():
    space = load_space(BUILTIN / "search" / "default.toml")
    with pytest.raises(UserError, match="use --solver exact"):
        solve(Problem(space, Budgets(params=60e6)), "brute")


def test_default_card_names_keep_the_budget_readable():
    from merino_mobile.design import default_name

    assert default_name({"params": 60e6}, None) == "merino-p60M"
    assert default_name({"latency_ms": 1.05, "memory": 2e8}, "pixel7") == \
        "merino-lat1.05ms-m200MB-pixel7"
    assert default_name({"latency_ms": 50.0}, "host") == "merino-lat50ms-host"
    # a budget of 1000 ms or more is written out, not as 1e+03 (which check_name refuses)
    assert default_name({"latency_ms": 1000.0}, "host") == "merino-lat1000ms-host"


def tiny_workspace(tmp_path):
    from merino_mobile.workspace import Workspace

    return Workspace.resolve(tmp_path)


TINY = Space(name="t", vocab=256, context=64, head_dim=16, widths=(16, 32), ffn_ratios=(1.0, 2.0),
             max_blocks=2, min_depth=0, max_depth=2)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "", "x\\y", "x y", "é",
                                  "x" * 201])
def test_design_card_refuses_names_that_are_not_plain_file_names(tmp_path, monkeypatch, name):
    from merino_mobile import design
    from merino_mobile.design import api

    monkeypatch.setattr(api, "solve", lambda *a, **k: pytest.fail("solved before the check"))
    with pytest.raises(UserError, match="is not a plain file name") as e:
        design.design_card(tiny_workspace(tmp_path), TINY, {"params": 1e5},
                           EntropySettings(rho=1.0), 64, "int8", None, "exact", {}, name=name)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.rglob("*.json")) and not (tmp_path.parent / "x.json").exists()


def test_design_card_keeps_plain_names_and_records_the_utc_date(tmp_path):
    from merino_mobile.design import design_card

    d, card, path = design_card(tiny_workspace(tmp_path), TINY, {"params": 1e5},
                                EntropySettings(rho=1.0), 64, "int8", None, "exact", {},
                                name="my_card-2.v1")
    assert path == tmp_path / "models" / "my_card-2.v1.json" and card.name == "my_card-2.v1"
    assert card.meta["date"].endswith("+00:00")
    assert card.meta["solver"]["checked"] == ["space", "params", "rho"]
    assert not list((tmp_path / "models").glob(".*"))  # no temporary file left behind


def test_a_sweep_of_too_many_points_is_refused_before_solving(monkeypatch):
    from merino_mobile.design import MAX_SWEEP_POINTS, api, sweep
    from merino_mobile.units import Range

    monkeypatch.setattr(api, "solve", lambda *a, **k: pytest.fail("solved before the check"))
    with pytest.raises(UserError) as e:
        sweep(TINY, {"params": Range(1e6, 1e9, 1e3)}, "params", EntropySettings(), 64, "int8",
              None, "exact", {})
    msg = str(e.value)
    assert "999,001 points" in msg and f"at most {MAX_SWEEP_POINTS}" in msg
    assert "use a step of at least 5.0M" in msg
    with pytest.raises(UserError, match="over 10\\^"):
        sweep(TINY, {"params": Range(1e6, 1e9, 1e-300)}, "params", EntropySettings(), 64, "int8",
              None, "exact", {})


def test_a_sweep_at_the_limit_runs():
    from merino_mobile.design import MAX_SWEEP_POINTS, sweep
    from merino_mobile.units import Range

    rng = Range(2e4, 2e4 + (MAX_SWEEP_POINTS - 1) * 1e3, 1e3)
    assert rng.count() == MAX_SWEEP_POINTS
    result = sweep(TINY, {"params": rng}, "params", EntropySettings(rho=1.0), 64, "int8", None,
                   "exact", {})
    assert len(result.points) == MAX_SWEEP_POINTS
    for p in result.points:
        assert p.design is None or p.design.metrics.params <= p.budget


def test_the_package_only_re_exports():
    import ast
    import inspect

    from merino_mobile import design

    tree = ast.parse(inspect.getsource(design))
    assert all(isinstance(node, (ast.ImportFrom, ast.Import, ast.Assign, ast.Expr))
               for node in tree.body)
    assert design.format_budget("memory", 2e8) == "200.0MB"
    assert design.format_budget("latency_ms", 1.05) == "1.05ms"

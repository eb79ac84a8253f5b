"""The exact check every solver's answer passes, and the exact solver aimed at its own optimum's
cost: a budget one unit below a design's cost must not return that design, whatever HiGHS's
tolerances let through."""

import math
import os
from dataclasses import replace
from fractions import Fraction
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_design import LinearLatency  # tests/ is on sys.path (pytest puts it there)

from merino_mobile.design import Budgets, Infeasible, Problem, Unverified, solve
from merino_mobile.design import exact as exact_solver
from merino_mobile.design.brute import architectures
from merino_mobile.design.problem import rho_within
from merino_mobile.entropy import EntropySettings, effectiveness
from merino_mobile.errors import UserError
from merino_mobile.space import Choice, Space

COUNTED = ("params", "flops", "memory")


def tiny_space(**kw) -> Space:
    base = dict(name="tiny", vocab=256, context=64, head_dim=16, widths=(16, 32, 48),
                ffn_ratios=(1.0, 2.0), max_blocks=3, min_depth=0, max_depth=2, sharing=True,
                order="non-decreasing")
    return Space(**(base | kw))


@st.composite
def aimed(draw):
    """A tiny problem, one counted resource, and how many units below the optimum's cost of that
    resource the budget is set (0, 1 or 2)."""
    space = tiny_space(
        vocab=draw(st.sampled_from([256, 1000])),
        widths=tuple(draw(st.lists(st.sampled_from([16, 32, 48, 64]), min_size=1, max_size=3,
                                   unique=True))),
        ffn_ratios=tuple(draw(st.lists(st.sampled_from([1.0, 1.5, 2.0, 4.0]), min_size=1,
                                       max_size=2, unique=True))),
        max_blocks=draw(st.integers(1, 3)), max_depth=draw(st.integers(1, 3)),
        sharing=draw(st.booleans()), order=draw(st.sampled_from(["any", "non-decreasing"])),
        embed_width=draw(st.sampled_from([None, None, 32])), tied_head=draw(st.booleans()))
    resource = draw(st.sampled_from(COUNTED))
    others = {r: draw(st.one_of(st.none(), st.none(), st.floats(lo, hi)))
              for r, lo, hi in (("params", 5e4, 4e5), ("flops", 2e5, 2e6),
                                ("memory", 3e5, 3e6)) if r != resource}
    latency = draw(st.one_of(st.none(), st.none(), st.floats(1.0, 3.0)))
    problem = Problem(space, Budgets(latency_ms=latency, **others),
                      EntropySettings(rho=draw(st.sampled_from([0.1, 0.3, 1.0]))),
                      context=draw(st.sampled_from([16, 64])),
                      quant=draw(st.sampled_from(["fp32", "int8", "int4"])),
                      latency=LinearLatency() if latency is not None else None)
    return problem, resource, draw(st.sampled_from([0, 1, 2]))


def outcome(problem, solver):
    try:
        return solve(problem, solver)
    except Infeasible as e:
        return e


def assert_within(problem, d):
    """Every budget met in integers (and the problem's own exact check agrees)."""
    assert not problem.violations(d.arch), problem.violations(d.arch)
    m = d.metrics
    for name, bound in problem.budgets.active().items():
        if name == "latency_ms":
            assert m.latency_ms <= bound
        else:
            assert Fraction(m.resource(name)) <= Fraction(bound), (name, m.resource(name), bound)
    assert d.solver.checked[0] == "space" and "rho" in d.solver.checked
    assert set(problem.budgets.active()) <= set(d.solver.checked)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aimed())
def test_a_budget_aimed_at_the_optimum_cost_is_never_exceeded(case):
    check_aimed(*case)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(aimed())
def test_a_budget_aimed_at_the_optimum_cost_holds_even_with_loose_rows(case):
    """The same with the count rows 50 units too loose, so that designs over budget do come back
    from HiGHS (as its tolerance lets them on the default space) and must be cut off."""
    with mock.patch.object(exact_solver, "COUNT_MARGIN", 50.0):
        check_aimed(*case)


def check_aimed(problem, resource, below):
    free = replace(problem, budgets=replace(problem.budgets, **{resource: None}))
    first = outcome(free, "exact")
    if isinstance(first, Infeasible):
        event("infeasible without the aimed budget")
        return
    cost = first.metrics.resource(resource)
    aimed_at = replace(problem, budgets=replace(free.budgets, **{resource: cost - below}))
    exact, brute = outcome(aimed_at, "exact"), outcome(aimed_at, "brute")
    if isinstance(brute, Infeasible):
        assert isinstance(exact, Infeasible), exact.metrics
        event("aimed budget infeasible")
        return
    event(f"{resource} {below} below, {'cut' if exact.solver.detail['cut_off'] else 'no cut'}")
    assert not isinstance(exact, Infeasible), exact
    assert_within(aimed_at, exact)
    assert_within(aimed_at, brute)
    assert exact.solver.optimal
    assert exact.metrics.entropy == pytest.approx(brute.metrics.entropy, rel=1e-9)
    if below == 0:  # the first optimum itself fits: the optimum cannot get worse
        assert exact.metrics.entropy == pytest.approx(first.metrics.entropy, rel=1e-9)
    else:
        assert exact.metrics.resource(resource) <= cost - below


def sloppy_problem() -> Problem:
    """A budget one parameter under the cost of the optimum at a larger budget."""
    free = Problem(tiny_space(), Budgets(params=1e5), EntropySettings(rho=1.0))
    best = solve(free, "exact")
    return replace(free, budgets=Budgets(params=best.metrics.params - 1))


def test_designs_hiGHS_lets_through_are_cut_off_and_the_exact_optimum_found(monkeypatch):
    """With rows deliberately 3,000 parameters too loose (far more than HiGHS's tolerance ever
    is), the solver still answers the exact optimum: the designs over budget are cut off."""
    problem = sloppy_problem()
    monkeypatch.setattr(exact_solver, "COUNT_MARGIN", 3000.0)
    d = solve(problem, "exact")
    assert d.solver.detail["cut_off"], "the loose rows should have let a design through"
    assert all("params" in why for why in d.solver.detail["cut_off"])
    assert_within(problem, d)
    assert d.solver.optimal
    assert d.metrics.entropy == pytest.approx(solve(problem, "brute").metrics.entropy, rel=1e-9)


def test_no_verified_design_is_an_error_never_a_violating_answer(monkeypatch):
    problem = sloppy_problem()
    monkeypatch.setattr(exact_solver, "COUNT_MARGIN", 3000.0)
    monkeypatch.setattr(exact_solver, "MAX_RESOLVES", 0)
    with pytest.raises(Unverified, match=r"no design that meets the constraints exactly.*params"):
        solve(problem, "exact")


def test_exact_check_counts_one_parameter_over():
    space = tiny_space()
    arch = (Choice(32, 2.0, 2, True),)
    loose = EntropySettings(rho=1.0)
    params = Problem(space).evaluate(arch).params
    assert not Problem(space, Budgets(params=params), loose).violations(arch)
    over = Problem(space, Budgets(params=params - 1), loose).violations(arch)
    assert set(over) == {"params"} and f"{params:,} > budget {params - 1:,}" in over["params"]
    # a float budget a hair under a whole count is under it
    assert Problem(space, Budgets(params=math.nextafter(params, 0)), loose).violations(arch)


@pytest.mark.parametrize("arch,fragment", [
    ((Choice(24, 1.0, 1, False),), "width 24 is not one of"),
    ((Choice(32, 3.0, 1, False),), "FFN ratio 3 is not one of"),
    ((Choice(32, 1.0, 5, False),), "depth 5 is outside"),
    ((Choice(48, 1.0, 1, False), Choice(16, 1.0, 1, False)), "breaks order 'non-decreasing'"),
    (tuple(Choice(16, 1.0, 1, False) for _ in range(4)), "4 blocks"),
])
def test_exact_check_covers_the_space(arch, fragment):
    bad = Problem(tiny_space()).violations(arch)
    assert set(bad) == {"space"} and fragment in bad["space"]


def test_exact_check_refuses_sharing_the_space_does_not_allow():
    bad = Problem(tiny_space(sharing=False)).violations((Choice(32, 1.0, 2, True),))
    assert "shares weights" in bad["space"]


def test_rho_is_decided_exactly_on_the_bound():
    # 16 layers of width 64: rho = 16 / 64 = 0.25 exactly, whatever the float logarithms say
    arch = (Choice(64, 1.0, 16, False),)
    assert rho_within(arch, 0.25)
    assert not rho_within(arch, math.nextafter(0.25, 0))
    space = tiny_space(widths=(64,), max_depth=16, max_blocks=1, min_depth=1)
    deepmad = "deepmad"  # the rho that is 16 / 64 (rho_within's variant by default)
    assert not Problem(space, settings=EntropySettings(rho=0.25, effectiveness=deepmad)
                       ).violations(arch)
    assert "rho" in Problem(space, settings=EntropySettings(rho=0.2499, effectiveness=deepmad)
                            ).violations(arch)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([16, 48, 64, 96, 1024]), st.integers(1, 12)),
                min_size=1, max_size=5), st.floats(0.001, 2.0))
def test_exact_rho_agrees_with_effectiveness_off_the_bound(blocks, rho):
    arch = tuple(Choice(w, 1.0, d, False) for w, d in blocks)
    value = effectiveness(tiny_space(widths=(16, 48, 64, 96, 1024)).to_card(arch, "x"), "deepmad")
    if abs(value - rho) > 1e-9 * rho:
        assert rho_within(arch, rho) == (value <= rho)


@pytest.mark.parametrize("budget", [math.inf, -math.inf, math.nan, 0.0, -5.0, "60M", True])
def test_budgets_must_be_finite_positive_numbers(budget):
    with pytest.raises(UserError, match="params budget must be a"):
        Budgets(params=budget)


@pytest.mark.parametrize("rho", [math.nan, math.inf, 0.0])
def test_rho_must_be_finite_and_positive(rho):
    with pytest.raises(UserError, match="--rho must be a finite positive number"):
        Problem(tiny_space(), Budgets(params=1e5), EntropySettings(rho=rho))


@pytest.mark.parametrize("seconds", [math.nan, math.inf, 0.0])
def test_ea_refuses_a_time_it_could_never_finish(seconds):
    with pytest.raises(UserError, match="--ea-seconds"):
        solve(Problem(tiny_space(), Budgets(params=1e5)), "ea", seconds=seconds)


def test_brute_force_and_ea_report_the_exact_check():
    problem = Problem(tiny_space(), Budgets(params=3e4, flops=3e5), EntropySettings(rho=1.0))
    for solver, options in (("brute", {}), ("ea", {"generations": 50})):
        d = solve(problem, solver, **options)
        assert d.solver.checked == ["space", "flops", "params", "rho"]
        assert_within(problem, d)


def test_every_design_of_a_small_space_is_in_the_space():
    problem = Problem(tiny_space())
    assert all(problem.space_violation(a) is None for a in architectures(problem.space))


def test_hiGHS_chatter_on_stdout_goes_to_stderr(capfd):
    with exact_solver._stdout_to_stderr():
        os.write(1, b"HighsMipSolverData::transformNewIntegerFeasibleSolution\n")
    out, err = capfd.readouterr()
    assert out == "" and "HighsMipSolverData" in err
    os.write(1, b"back\n")
    assert capfd.readouterr().out == "back\n"

"""Measured-in-the-loop design (`design --verify`): a latency budget checked on the device.

A table is a sum of micro-benchmarks, and the solver picks exactly the cells that read low, so a
design's whole-model latency can miss its budget (docs/measurements.md). `verify_design` closes
the loop: it designs (`merino_mobile.design.design_card`), exports (`merino_mobile.export`),
benches the design on the device (`bench_artifact`, `rounds` benches pooled into one
measurement, stored with tag "verify"), and when the measured median exceeds the budget, refits
the calibration from the store (`merino_mobile.latency.calibration.calibrate`) and designs
again, at most `iterations` times.

Each iteration's design comes from a chain of solves (the tighten rule, docs/deploy.md):

1. refit the calibration on every stored measurement of the table's setup; predict the last
   measured design (over budget: the loop stops at one within it) with the refit table, p, and
   start at the budget B the user asked for when p reaches its measured median m (the refit has
   learnt the error on it), else at  b = p * B / m  (`chain_start`);
2. solve at b; if that design was measured already, tighten from it: solve again at
   b' = p * B / m,  p and m that design's. b' < p, so the same design cannot come back, and if
   the table's error on that design holds for its neighbours, the new design measures about B;
3. repeat 2 until the design is one not measured yet. When a tightened budget is below the
   fastest design the table allows, solve at the table's minimum instead (the fastest design);
   when that one was measured already, the budget cannot be met in this space on this device.

So the refit alone moves the design when the calibration applies (it needs measurements of
`calibration.MIN_MODELS` models and held-out errors consistently below the raw table's) and has
learnt the last design's error, and the tightening steps in when it has not: a refit whose
design still reads low no longer spends the iterations at B. Each chain uses only the current
table's error on measured designs, so a calibration that has learnt the device's error undoes
earlier tightening rather than piling on it.

The loop stops at the first measured median within B, or when B lies inside the 90% interval
of that median that its own runs allow (`within_noise`, `judged`: the device cannot tell
the difference, so it says so rather than loop), or when the space cannot meet B once measured
(`unmet`: `BudgetNotMet` names the fastest measured design and the smallest budget it meets),
or after `iterations` (`spent`). Only a design within the budget (or its noise) becomes the
card, with the measurement and every iteration in `meta.verify`.

Resuming: the state of a request is build/verify/<name>-<device>-<format>-<quant>/verify.json,
written after every step. A rerun of the same request (same space, budgets, settings, context,
solver, lengths) continues an unfinished one: measured iterations are kept, an export in
build/verify/exports/ of the same architecture is reused (`reusable_export`), and a pending
iteration's bench, when it was stored before the interruption, is read back from the store. A
finished request starts again from the first iteration (exports still reused), since a rerun
asks for a new measurement.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import Card, save_card
from merino_mobile.deploy.bench import DEFAULT_REPEAT, Stat, artifact_sha256
from merino_mobile.design import (
    Design,
    Infeasible,
    check_name,
    default_name,
    design_card,
    format_budget,
)
from merino_mobile.design.problem import Metrics, SolverInfo
from merino_mobile.device.base import TWO_SPEEDS
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.files import utc_now, write_json
from merino_mobile.space import Choice, Space
from merino_mobile.target import Target, resolve_target
from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
KIND = "merino-mobile-verify"
DEFAULT_ITERATIONS = 3
# benches pooled per measured design: a shared machine can run a whole window of a few calls at
# its other, faster speed (docs/measurements.md, "Two speeds"); several windows show both
DEFAULT_ROUNDS = 3
TAG = "verify"  # the store's tag of the loop's measurements
STATUSES = {
    "within_budget": "measured within the budget",
    "within_noise": "over the budget by less than its median's own uncertainty (90% interval)",
    "unmet": "the space cannot meet the budget once measured",
    "spent": "no design measured within the budget in the iterations allowed",
}
TIGHTEN_RULE = ("refit the calibration; re-solve at the budget B, or at p * B / m when the refit "
                "table predicts the last measured design below its median (p: its prediction "
                "now, m: its measured median); while the design was measured already, re-solve "
                "at its p * B / m")
MAX_LABEL = 80  # an export's name carries its blocks up to this length, then only the hash
# One export at a time in this process: a fleet runs a loop per device in threads, torch's
# export is not thread-safe, and two loops that design the same architecture share its export.
_EXPORTING = threading.Lock()


def bench_lengths(context: int) -> tuple[int, int]:
    """The prompt and generate lengths a verify bench uses at decode context `context`, with
    the export's KV cache `context` positions: a prompt of context - 1 tokens, then one decode
    step at position context - 1, which attends `context` positions whether the artifact
    attends its whole cache (ONNX, Core ML) or up to its own position (ExecuTorch, llama.cpp),
    so it costs exactly what the design was predicted for (`bench.decode_context`)."""
    if context < 2:
        raise UserError(f"--verify needs a --context of at least 2 (a prompt and a generated "
                        f"token), got {context}")
    return context - 1, 1


def arch_key(card: Card) -> str:
    """A hash of what a card computes (everything but its name and meta)."""
    arch = {k: v for k, v in card.to_json().items() if k not in ("name", "meta")}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]


def blocks_label(card: Card) -> str:
    """A card's blocks as width x FFN ratio x depth, 's' when shared: "256x4x1_640x2.5x3s"."""
    return "_".join(f"{b.width}x{b.ffn_ratio:g}x{b.depth}{'s' if b.shared else ''}"
                    for b in card.blocks)


def export_card(card: Card) -> Card:
    """The card the loop exports: the design's architecture under a name made of it, without
    the design's meta (its date), so the same architecture is the same export whatever request
    designed it (`reusable_export` compares the whole card)."""
    label = blocks_label(card)
    key = arch_key(card)
    name = f"verify-{label}-{key[:8]}" if len(label) <= MAX_LABEL else f"verify-{key}"
    return replace(card, name=name, meta={"exported_by": "merino-mobile design --verify"})


@dataclass
class Iteration:
    """One designed, exported and measured design of the loop (measured fields None until the
    bench is in)."""

    index: int
    how: str  # "first", "refit" (the recalibrated table moved it), "tightened", "fastest"
    solve_budget_ms: float  # the latency budget the solver was given
    card: str  # the iteration's card file (build/verify/...)
    card_json: dict[str, Any]
    design: dict[str, Any]  # Design.to_json()
    predicted_ms: float
    calibrated: bool  # whether the table that predicted it was calibrated
    calibration: str  # why (not) calibrated: the table's reason
    designed_at: str
    params: int = 0
    artifact: str | None = None
    export_reused: bool = False
    measurement_id: int | None = None
    measurement_reused: bool = False
    # the store's last measurement id when this iteration's bench started: a rerun reuses only
    # a bench stored after it (None: the bench never started)
    bench_after_id: int | None = None
    measured_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    # the bench's rounds ran at two speeds: the fast side's median and share (`judged`); the
    # measured fields above are then the slow side's
    fast_ms: float | None = None
    fast_share: float | None = None
    # the 90% interval of the measured median (`judged`): a budget inside it is noise
    median_lo_ms: float | None = None
    median_hi_ms: float | None = None
    # the first benches read too fast to trust (`reads_fast`): benched as many times again,
    # and the measurement is all of them
    rebenched: bool = False

    @property
    def measured(self) -> bool:
        return self.measured_ms is not None

    def load_card(self) -> Card:
        return Card.from_json(self.card_json, self.card)

    def summary(self) -> dict[str, Any]:
        """The iteration as `design --json`'s `verify.iterations` shows it."""
        return {"iteration": self.index, "card": self.card,
                "architecture": blocks_label(self.load_card()), "params": self.params,
                "how": self.how, "solve_budget_ms": self.solve_budget_ms,
                "predicted_ms": self.predicted_ms, "calibrated": self.calibrated,
                "measured_ms": self.measured_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "fast_ms": self.fast_ms, "fast_share": self.fast_share,
                "median_interval_ms": (None if self.median_lo_ms is None
                                       else [self.median_lo_ms, self.median_hi_ms]),
                "rebenched": self.rebenched,
                "measurement_id": self.measurement_id, "artifact": self.artifact,
                "reused": {"export": self.export_reused,
                           "measurement": self.measurement_reused}}


@dataclass
class VerifyResult:
    """What the loop did: every iteration, how it ended, and the card it wrote (None unless
    the budget is kept)."""

    budget_ms: float
    device: str
    status: str  # one of STATUSES
    iterations: list[Iteration]
    allowed: int
    chosen: Iteration | None  # the card's iteration; else the fastest measured
    message: str
    state: Path
    resumed: int = 0  # iterations taken over from an interrupted run
    card: Card | None = None
    path: Path | None = None
    lut: dict[str, Any] = field(default_factory=dict)  # the chosen design's table record
    budgets: dict[str, Any] = field(default_factory=dict)  # as asked

    def write_card(self, path: Path, name: str, force: bool = False) -> Card:
        """Write the chosen iteration's design as the card `name` at `path`: its design meta,
        `budgets` as asked (the solver's budget is in `verify`), `measured_latency_ms` and
        `verify` (`to_json`). `verify_design` does it when the budget is kept; a caller that
        wants the fastest measured design anyway (the demo) calls it on `BudgetNotMet.result`."""
        assert self.chosen is not None
        card = self.chosen.load_card()
        meta = dict(card.meta) | {"date": utc_now(), "budgets": dict(self.budgets),
                                  "measured_latency_ms": self.chosen.measured_ms}
        card = replace(card, name=name, meta=meta)
        self.card, self.path = card, Path(path)
        card.meta["verify"] = self.to_json() | {"card": str(path)}
        save_card(card, path, force=force)
        return card

    @property
    def measured_ms(self) -> float | None:
        return self.chosen.measured_ms if self.chosen else None

    @property
    def within_budget(self) -> bool:
        return self.measured_ms is not None and self.measured_ms <= self.budget_ms

    @property
    def design(self) -> Design | None:
        """The chosen iteration's solver answer (what `design --json` summarizes)."""
        return design_from_json(self.chosen.design) if self.chosen else None

    def to_json(self) -> dict[str, Any]:
        """`design --json`'s `verify` object (and the card's `meta.verify`)."""
        c = self.chosen
        return {"iterations": [it.summary() for it in self.iterations],
                "measured_ms": self.measured_ms, "within_budget": self.within_budget,
                "budget_ms": self.budget_ms, "status": self.status, "message": self.message,
                "iterations_allowed": self.allowed, "resumed": self.resumed,
                "chosen": c.index if c else None,
                "spread_ms": [c.p10_ms, c.p90_ms] if c and c.measured else None,
                "measurement_id": c.measurement_id if c else None,
                "device": self.device, "tag": TAG, "tighten_rule": TIGHTEN_RULE,
                "state": str(self.state)}


class BudgetNotMet(UserError):
    """The loop ended without a design within the budget (`unmet` or `spent`); `result` has
    every iteration, and the message names the fastest measured design and the smallest budget
    it meets."""

    def __init__(self, message: str, result: VerifyResult) -> None:
        super().__init__(message)
        self.result = result


def design_from_json(data: dict[str, Any]) -> Design:
    """A `Design` back from `Design.to_json()` (a resumed iteration's)."""
    return Design(tuple(Choice(**c) for c in data["architecture"]), Metrics(**data["metrics"]),
                  SolverInfo(**data["solver"]))


def table_record(target: Target, table: Any) -> dict[str, Any]:
    """The record of the table a design is bounded by, as `target.design_table` makes it."""
    info: dict[str, Any] = {"device": target.name, "runtime": target.runtime,
                            "quant": target.quant, "calibrated": table.calibrated}
    if table.calibrated:
        info["calibration"] = table.summary()
    return info


def chain_start(budget: float, predicted_now: float | None,
                measured: float | None) -> tuple[float, str]:
    """Where an iteration's chain of solves starts: at the budget B for the first design; after
    a design measured over B, at p * B / m when the refit table still predicts that design (p)
    below its measured median (m), so a refit that has not learnt the error on it does not hand
    back a design it reads just as low (`tightened`); at B when the refit has (`refit`)."""
    if predicted_now is None or measured is None:
        return budget, "first"
    if 0 < predicted_now < measured:
        return predicted_now * budget / measured, "tightened"
    return budget, "refit"


def verify_budget(budgets: dict[str, Any]) -> float:
    """The one latency budget (ms) a verify checks, or a UserError: none given, or a range."""
    value = budgets.get("latency_ms")
    if value is None:
        raise UserError("--verify measures a latency budget on the device: give --latency "
                        "(e.g. --latency 20ms)")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UserError("--verify designs one card: give --latency one value, not a range "
                        "(a sweep is not verified)")
    return float(value)


def check_request(budgets: dict[str, Any], iterations: int, repeat: int, rounds: int = 1
                  ) -> float:
    """Refuse a verify request that cannot run on any device (before a device is opened); the
    latency budget (ms)."""
    budget = verify_budget(budgets)
    if iterations < 1:
        raise UserError(f"--iterations must be at least 1 (got {iterations})")
    if repeat < 1:
        raise UserError(f"repeat must be at least 1 (got {repeat})")
    if rounds < 1:
        raise UserError(f"rounds must be at least 1 (got {rounds})")
    return budget


def judged(samples: list[float] | tuple[float, ...], repeat: int
           ) -> tuple[Stat, dict[str, Any], tuple[float, float]]:
    """What a verify measurement is judged by: its runs, `repeat` per bench in bench order, as
    one statistic; when the benches ran at two speeds, the slow benches' runs only
    (`bench.slow_runs`). Also the two-speed split, and the 90% interval of the judged median
    that those runs allow (`bench.median_interval`): a budget inside it cannot be told from
    the measurement."""
    from merino_mobile.deploy.bench import median_interval, slow_runs

    runs, speeds = slow_runs(samples, repeat)
    return Stat.of(runs), speeds, median_interval(runs)


def reads_fast(predicted_ms: float, measured_ms: float, speeds: dict[str, Any]) -> bool:
    """Whether a verify measurement may have run wholly in a shared machine's fast windows: its
    benches ran at one speed, and the table predicted the design at least `TWO_SPEEDS` times
    what it measured (the tables here over-predict whole models by less; docs/measurements.md,
    "Two speeds"). Benches that never met the slow speed cannot show it, so the loop benches
    such a design as many times again and judges all the benches together (`judged`)."""
    return speeds["speeds"] == 1 and predicted_ms >= TWO_SPEEDS * measured_ms


class _Loop:
    """One run of the loop (see the module docstring); `run` returns its result."""

    def __init__(self, ws: Workspace, target: Target, space: Space, budgets: dict[str, float],
                 settings: EntropySettings, context: int, solver: str, options: dict[str, Any],
                 base: str, iterations: int, repeat: int, say: Callable[[str], None],
                 rounds: int = DEFAULT_ROUNDS) -> None:
        self.ws, self.target, self.space, self.budgets = ws, target, space, budgets
        self.settings, self.context, self.solver, self.options = settings, context, solver, options
        self.base, self.allowed, self.repeat, self.say = base, iterations, repeat, say
        self.rounds = rounds
        self.budget = budgets["latency_ms"]
        self.prompt, self.generate = bench_lengths(context)
        fmt, quant = target.format.name, target.quant
        self.folder = ws.root / "build" / "verify" / f"{base}-{target.name}-{fmt}-{quant}"
        self.exports = ws.root / "build" / "verify" / "exports" / f"{fmt}-{quant}-ctx{context}"
        self.state = self.folder / "verify.json"
        # through JSON, so that it compares equal to the one read back from the state file
        self.request = json.loads(json.dumps({
            "space": asdict(space), "budgets": budgets, "settings": asdict(settings),
            "context": context, "solver": solver, "options": options, "device": target.name,
            "runtime": target.runtime, "format": fmt, "quant": quant, "prompt": self.prompt,
            "generate": self.generate, "repeat": repeat, "rounds": rounds}))
        self.its: list[Iteration] = []
        self.resumed = 0
        self.dev: Any = None

    # -- the state file ------------------------------------------------------------------------

    def load(self) -> None:
        """Take over the iterations of an unfinished run of this very request."""
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.say(f"{self.state} does not read ({e}); starting from the first iteration")
            return
        if not isinstance(data, dict) or data.get("kind") != KIND:
            self.say(f"{self.state} is not a verify state; starting from the first iteration")
            return
        if data.get("request") != self.request:
            self.say(f"an earlier verify in {self.folder} asked something else; starting from "
                     f"the first iteration")
            return
        if data.get("finished"):
            return  # a finished run: asking again is asking for a new measurement
        try:
            self.its = [Iteration(**it) for it in data.get("iterations", [])]
        except TypeError as e:
            self.say(f"{self.state} does not read ({e}); starting from the first iteration")
            self.its = []
            return
        self.resumed = len(self.its)
        if self.its:
            done = sum(it.measured for it in self.its)
            self.say(f"resuming {self.state}: {done} iteration(s) measured"
                     + ("" if done == len(self.its) else ", one designed and not measured yet"))

    def save(self, finished: bool = False, status: str | None = None,
             card: Path | None = None) -> None:
        write_json(self.state, {
            "schema_version": SCHEMA_VERSION, "kind": KIND, "request": self.request,
            "finished": finished, "status": status, "card": str(card) if card else None,
            "updated": utc_now(), "iterations": [asdict(it) for it in self.its]})

    # -- one iteration -------------------------------------------------------------------------

    def refit(self) -> None:
        from merino_mobile.latency.calibration import calibrate

        cal, path = calibrate(self.target)
        self.say(f"calibration refit from the store ({len(cal.measurement_ids)} measurement(s) "
                 f"of {cal.models} model(s)): {'applied' if cal.applied else 'not applied'}; "
                 f"{cal.reason}")

    def next_design(self) -> Iteration | None:
        """The next iteration's design by the tighten rule; None when the space cannot meet the
        budget (the fastest design the table knows was measured already)."""
        index = len(self.its) + 1
        seen = {arch_key(it.load_card()): it for it in self.its if it.measured}
        if seen:
            self.refit()
        table = self.target.table()
        info = table_record(self.target, table)
        last = next((it for it in reversed(self.its) if it.measured), None)
        now = None if last is None else self.predict_now(last, table)
        b, how = chain_start(self.budget, now, None if last is None else last.measured_ms)
        out = self.folder / f"iteration-{index}.json"
        for _ in range(len(seen) + 2):  # each tightening rules one measured design out
            try:
                d, card, path = design_card(
                    self.ws, self.space, self.budgets | {"latency_ms": b}, self.settings,
                    self.context, self.target.quant, table, self.solver, self.options,
                    name=self.base, out=out, force=True, lut_info=info)
            except Infeasible as e:
                low = e.minimums.get("latency_ms")
                if not seen:
                    raise  # the budget is infeasible by the table: what `design` says
                if how == "fastest" or low is None or low <= b:
                    return None
                b, how = low, "fastest"
                continue
            prev = seen.get(arch_key(card))
            if prev is None:
                return Iteration(
                    index=index, how=how, solve_budget_ms=b, card=str(path),
                    card_json=card.to_json(), design=d.to_json(),
                    predicted_ms=float(d.metrics.latency_ms or 0.0),
                    calibrated=table.calibrated, calibration=table.reason,
                    designed_at=utc_now(), params=accounting.params(card))
            if how == "fastest":
                return None
            assert prev.measured_ms is not None and d.metrics.latency_ms is not None
            b, how = d.metrics.latency_ms * self.budget / prev.measured_ms, "tightened"
        return None

    def predict_now(self, it: Iteration, table: Any) -> float:
        """The iteration's design as the current (refit) table predicts it, by the solver's
        own linear model."""
        from merino_mobile.design.problem import Budgets, Problem

        problem = Problem(self.space, Budgets(), self.settings, self.context, self.target.quant,
                          latency=table)
        return float(problem.evaluate(design_from_json(it.design).arch).latency_ms or 0.0)

    def measure(self, it: Iteration) -> None:
        """Export the iteration's design (or reuse the export) and bench it (or read back the
        bench an interrupted run stored)."""
        from merino_mobile.deploy.bench import BenchReport, store_bench
        from merino_mobile.export import export, reusable_export

        fmt, quant = self.target.format.name, self.target.quant
        card = export_card(it.load_card())
        where = self.exports / card.name
        with _EXPORTING:
            res = reusable_export(where, card, fmt, quant, self.context)
            it.export_reused = res is not None
            if res is None:
                self.say(f"iteration {it.index}: exporting {blocks_label(card)} ({fmt}, "
                         f"{quant}, KV cache {self.context})")
                # speed only: the export is not checked against fp32 here (`deploy` does that)
                res = export(card, fmt, quant, where, force=True, cache_len=self.context,
                             verify=False)
        if it.export_reused:
            self.say(f"iteration {it.index}: reusing the export {res.artifact}")
        it.artifact = str(res.artifact)
        stored = self.stored_bench(it)
        if stored is not None:
            samples = list(stored.decode_samples_ms)
            it.measurement_id, it.measurement_reused = stored.id, True
            self.say(f"iteration {it.index}: reusing measurement {stored.id} from the store")
        else:
            it.bench_after_id = max((m.id for m in self.device_measurements()), default=0)
            self.save()
            self.say(f"iteration {it.index}: benching on {self.target.name} (prompt "
                     f"{self.prompt}, generate {self.generate}, {self.rounds} x "
                     f"{self.repeat} runs)")
            rep = self.bench(it)
            first = judged(rep.decode_samples_ms, self.repeat)
            if reads_fast(it.predicted_ms, first[0].median, first[1]):
                it.rebenched = True
                self.say(f"iteration {it.index}: measured {first[0].median:.3g} ms/token, under "
                         f"1/{TWO_SPEEDS:g} of the {it.predicted_ms:.3g} ms predicted, at one "
                         f"speed: every bench may have run in a fast window of the device; "
                         f"benching it again ({self.rounds} more "
                         f"bench{'es' if self.rounds > 1 else ''}) and judging all of them")
                rep = BenchReport.pooled([rep, self.bench(it)])
            samples = rep.decode_samples_ms
            # stored once judged: one measurement per design, as the calibration fits them
            it.measurement_id = store_bench(self.target, Path(it.artifact), rep, TAG)
        stat, speeds, (it.median_lo_ms, it.median_hi_ms) = judged(samples, self.repeat)
        it.measured_ms, it.p10_ms, it.p90_ms = stat.median, stat.p10, stat.p90
        if speeds["speeds"] == 2:
            it.fast_ms, it.fast_share = speeds["fast_ms"], speeds["fast_share"]
            self.say(f"iteration {it.index}: the device ran it at two speeds, "
                     f"{stat.median:.3g} and {it.fast_ms:.3g} ms/token "
                     f"({100 * it.fast_share:.0f}% of the benches fast): the budget is checked "
                     f"against the slower")
        self.save()

    def bench(self, it: Iteration) -> Any:
        """`rounds` benches of the iteration's export, pooled, not stored yet."""
        from merino_mobile.deploy.bench import bench_artifact

        return bench_artifact(self.ws, Path(it.artifact or ""), self.target, prompt=self.prompt,
                              generate=self.generate, repeat=self.repeat, dev=self.dev,
                              record=False, rounds=self.rounds)

    def device_measurements(self) -> list[Any]:
        from merino_mobile.latency.store import read_measurements

        return read_measurements(self.ws.state, device=self.target.name,
                                 runtime=self.target.runtime, quant=self.target.quant)

    def stored_bench(self, it: Iteration) -> Any:
        """The bench of this iteration's artifact that an interrupted run stored (after the
        bench started), if any."""
        if it.bench_after_id is None:
            return None
        sha = artifact_sha256(Path(it.artifact or ""))
        for m in reversed(self.device_measurements()):
            if (m.id > it.bench_after_id and m.tag == TAG and m.artifact_sha256 == sha
                    and (m.prompt, m.generate) == (self.prompt, self.generate)):
                return m
        return None

    # -- the loop ------------------------------------------------------------------------------

    def status_of(self, it: Iteration) -> str | None:
        assert it.measured_ms is not None and it.p10_ms is not None
        if it.measured_ms <= self.budget:
            return "within_budget"
        # a state written before the interval was recorded: its p10 stands in (the older rule)
        lo = it.median_lo_ms if it.median_lo_ms is not None else it.p10_ms
        if lo <= self.budget:
            return "within_noise"
        return None

    def run(self) -> str:
        self.load()
        while True:
            last = self.its[-1] if self.its else None
            if last is not None and last.measured:
                status = self.status_of(last)
                if status:
                    return status
                if len(self.its) >= self.allowed:
                    return "spent"
            if last is None or last.measured:
                nxt = self.next_design()
                if nxt is None:
                    return "unmet"
                self.its.append(nxt)
                self.save()
                self.say(f"iteration {nxt.index} ({nxt.how}): {blocks_label(nxt.load_card())}, "
                         f"{nxt.params / 1e6:.2f}M parameters, solved at "
                         f"{format_budget('latency_ms', nxt.solve_budget_ms)}, predicted "
                         f"{nxt.predicted_ms:.3g} ms"
                         + (" (calibrated)" if nxt.calibrated else " (raw table)"))
            it = self.its[-1]
            self.measure(it)
            self.say(f"iteration {it.index}: measured {it.measured_ms:.3g} ms/token "
                     f"(median's 90% interval {it.median_lo_ms:.3g}-{it.median_hi_ms:.3g}; "
                     f"p10 {it.p10_ms:.3g}, p90 {it.p90_ms:.3g}) against the budget "
                     f"{format_budget('latency_ms', self.budget)}")


def verify_design(ws: Workspace, space: Space, budgets: dict[str, Any],
                  settings: EntropySettings, context: int, *,
                  device: str | Target | None = None, runtime: str | None = None,
                  quant: str = "int8", solver: str = "exact",
                  options: dict[str, Any] | None = None, name: str | None = None,
                  out: Path | None = None, force: bool = False,
                  iterations: int = DEFAULT_ITERATIONS, repeat: int = DEFAULT_REPEAT,
                  rounds: int = DEFAULT_ROUNDS,
                  say: Callable[[str], None] | None = None) -> VerifyResult:
    """Design for `budgets` (which must hold one latency budget), export, bench on the device,
    and redesign until the measured median is within the latency budget (module docstring).

    The device is opened first (one that is not ready is its readiness check's line, before
    anything is solved). The card is written (`out`, else models/<name>.json with design's
    naming) only when the budget is kept (`within_budget`, `within_noise`), with
    `meta.measured_latency_ms` and `meta.verify`; otherwise `BudgetNotMet` carries the result.
    """
    say = say or (lambda msg: None)
    budget = check_request(budgets, iterations, repeat, rounds)
    target = resolve_target(ws, device, quant=quant, runtime=runtime)
    base = check_name(name if name is not None else default_name(budgets, target.name))
    if out is not None and Path(out).exists() and not force:
        raise UserError(f"{out} exists; choose another --out or pass --force to replace it")
    loop = _Loop(ws, target, space, dict(budgets), settings, context, solver,
                 dict(options or {}), base, iterations, repeat, say, rounds)
    loop.dev = target.open()  # a device that is not ready stops here, with its check's line
    try:
        target.table(calibrated=False)  # no table: the profile command, before anything else
        status = loop.run()
    finally:
        loop.dev.cleanup()
    measured = [it for it in loop.its if it.measured]
    within = status in ("within_budget", "within_noise")
    # unmet and spent come after a measured iteration: there is a fastest one to name
    chosen = loop.its[-1] if within else min(measured, key=lambda it: it.measured_ms or 0.0)
    result = VerifyResult(budget, target.name, status, loop.its, iterations, chosen, "",
                          loop.state, loop.resumed,
                          lut=chosen.card_json.get("meta", {}).get("latency_table") or {},
                          budgets=dict(budgets))
    result.message = _message(result, loop)
    if not within:
        loop.save(finished=status == "unmet", status=status)
        raise BudgetNotMet(result.message, result)
    path = Path(out) if out is not None else _card_path(ws, base, force)
    result.write_card(path, base if out is not None else path.stem, force=force)
    loop.save(finished=True, status=status, card=Path(path))
    return result


def round_up(x: float, digits: int = 3) -> float:
    """`x` rounded up to `digits` significant digits (a budget that still holds `x`)."""
    if x <= 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / step - 1e-9) * step


def _card_path(ws: Workspace, name: str, force: bool) -> Path:
    """models/<name>.json; an automatic or given name never replaces a card unless `force`
    (it gets a numeric suffix), as `design` does."""
    out = ws.models / f"{name}.json"
    n = 2
    while out.exists() and not force:
        out = ws.models / f"{name}-{n}.json"
        n += 1
    return out


def _message(r: VerifyResult, loop: _Loop) -> str:
    b = format_budget("latency_ms", r.budget_ms)
    c = r.chosen
    assert c is not None and c.measured_ms is not None
    what = f"{blocks_label(c.load_card())} ({c.card})"
    m = f"{c.measured_ms:.3g} ms/token [p10 {c.p10_ms:.3g}, p90 {c.p90_ms:.3g}]"
    n = len(r.iterations)
    if r.status == "within_budget":
        return f"measured {m} on {r.device}, within the budget {b} (iteration {c.index} of {n})"
    if r.status == "within_noise":
        interval = (f" (its median's 90% interval {c.median_lo_ms:.3g}-{c.median_hi_ms:.3g})"
                    if c.median_lo_ms is not None else "")
        return (f"measured {m} on {r.device}: over the budget {b} by less than the uncertainty "
                f"of its median{interval}, so the device cannot tell it from the budget; kept "
                f"(iteration {c.index} of {n})")
    smallest = format_budget("latency_ms", round_up(c.measured_ms))
    if r.status == "unmet":
        return (f"the space cannot meet the latency budget {b} on {r.device} once measured: its "
                f"fastest design measured, {what}, runs at {m}; the smallest budget it meets "
                f"is {smallest} (--latency {smallest}), or widen the search space")
    return (f"after {n} iteration(s) no design measured within {b} on {r.device}: the fastest "
            f"measured, {what}, runs at {m} (it meets --latency {smallest}); rerun with "
            f"--iterations {n + 2} to continue from here (exports and measurements are "
            f"reused), or remove {loop.folder} to start over")

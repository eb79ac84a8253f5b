"""`compare` and `design --verify` on several devices at once, through the local code paths.

    compare_fleet(ws, cards, ["pixel7", "galaxy-s23"], cluster="auto", quant="int8")
    verify_fleet(ws, space, {"latency_ms": 20.0}, settings, 512, ["pixel7", "galaxy-s23"])

As `bench_fleet` does (run.py): one actor per device on the node that has it, one driver thread
per device running the local function unchanged (`merino_mobile.deploy.compare.compare`,
`merino_mobile.deploy.verify.verify_design`) on a `FleetTarget` whose device is the remote one,
lent for the whole job (`_Fleet.lend`), every artifact shipped to a node once through Ray's
object store (the program shelf), every measurement committed by the driver to the workspace's
store under its device's name and fingerprint. A device's failure is its one-line entry in
`errors`; the others go on.

- compare: the cards are exported on the driver before any device benches, once for every
  device of one format and quantization (into the first such device's compare folder, where its
  own compare would put them); each device then writes its own
  build/compare-<device>-<format>-<quant>/.
- design --verify: each device designs against its own table (the budget is one number, the
  tables differ), so each loop exports its own designs, one export at a time in this process
  (two loops that design the same architecture share it: verify.py). Each card goes where a
  single-device run writes it, models/<name>.json with the default name, which names the
  device; a given `name` (or `out`) gets the device's name appended, so that no two devices'
  cards overwrite each other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merino_mobile.card import Card
from merino_mobile.deploy.bench import (
    DEFAULT_GENERATE,
    DEFAULT_PROMPT,
    DEFAULT_REPEAT,
    DEFAULT_ROUNDS,
)
from merino_mobile.deploy.verify import DEFAULT_ITERATIONS
from merino_mobile.entropy import EntropySettings
from merino_mobile.errors import UserError
from merino_mobile.export import ExportResult
from merino_mobile.fleet.cluster import check_devices_have_nodes, connect
from merino_mobile.fleet.run import SCHEMA_VERSION, FleetProgress, FleetTarget, _Fleet
from merino_mobile.space import Space
from merino_mobile.target import Target, resolve_target
from merino_mobile.workspace import Workspace


def _distinct(targets: list[Target]) -> list[str]:
    """The targets' device names; a UserError when one is given twice."""
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--device {', '.join(twice)} given more than once; name each device "
                        f"once")
    return names


@dataclass
class FleetCompare:
    """What `compare_fleet` did: each device's compare result (compare.json's object plus
    `reports`, as `compare` returns it) or its one-line error."""

    results: dict[str, dict[str, Any]]
    errors: dict[str, str]
    order: list[str]
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """`compare --json` with several devices: `devices` maps each name to its compare.json
        object (the single-device `compare --json` object) or to {"error": message}."""
        def one(name: str) -> dict[str, Any]:
            if name not in self.results:
                return {"error": self.errors[name]}
            return {k: v for k, v in self.results[name].items() if k != "reports"}

        return {"schema_version": SCHEMA_VERSION, "devices": {n: one(n) for n in self.order},
                "wall_s": self.wall_s}


def compare_fleet(ws: Workspace, cards: list[Card], devices: Sequence[str], *,
                  cluster: str = "auto", fmt: str | None = None, quant: str = "int8",
                  baseline: str | None = None, prompt: int = DEFAULT_PROMPT,
                  generate: int = DEFAULT_GENERATE, repeat: int = DEFAULT_REPEAT,
                  rounds: int = DEFAULT_ROUNDS, force: bool = False,
                  predict_latency: bool = True, command: str = "merino-mobile compare",
                  progress: FleetProgress | None = None) -> FleetCompare:
    """`compare` of `cards` on every device at once on the fleet `cluster` (module docstring);
    the keywords are `compare`'s, the same for every device. A device whose compare.json exists
    (without `force`) or whose format lacks `quant` is its error entry before anything is
    exported."""
    from merino_mobile.deploy.compare import check_request, compare, compare_dir, export_cards

    base = check_request(cards, baseline, fmt, quant, prompt, generate, repeat, rounds)
    targets = [resolve_target(ws, dev, fmt, quant) for dev in devices]
    names = _distinct(targets)
    t0 = time.perf_counter()
    ray = connect(cluster)
    check_devices_have_nodes(ray, names)
    fleet = _Fleet(ray, ws, targets, None, progress, None, 0, None, 0)
    exported: dict[tuple[str, str], dict[str, ExportResult]] = {}

    def export_once(t: Target) -> None:
        """The cards' exports for `t`'s format and quantization, made once for all devices."""
        key = (t.format.name, t.quant)
        if key not in exported:
            made = export_cards(ws, cards, t, prompt + generate,
                                say=lambda m: fleet._say(None, m))
            exported[key] = {c.name: res for c, (res, _) in zip(cards, made, strict=True)}

    def one(ft: FleetTarget) -> dict[str, Any]:
        return compare(ws, cards, ft, fmt, quant, baseline=base, prompt=prompt,
                       generate=generate, repeat=repeat, rounds=rounds, force=force,
                       predict_latency=predict_latency, command=command,
                       say=lambda m: fleet._say(ft.name, m),
                       exported=exported[(ft.format.name, ft.quant)])

    try:
        ready = []
        for t in fleet.start():
            out = compare_dir(ws, t.name, t.format.name, quant)
            try:
                if (out / "compare.json").exists() and not force:
                    raise UserError(f"{out / 'compare.json'} exists; pass --force to replace "
                                    f"it")
                if quant not in t.format.quants:
                    raise UserError(f"{t.format.name} does not support quantization {quant!r}; "
                                    f"choose {', '.join(t.format.quants)}")
                export_once(t)  # on the driver, before any device benches
                ready.append(t)
            except UserError as e:
                fleet.drop(t.name, str(e))
        results = fleet.run(ready, fleet.lend(one))
    except BaseException:
        fleet.stop()
        raise
    return FleetCompare(results, fleet.errors, names, time.perf_counter() - t0)


@dataclass
class FleetVerify:
    """What `verify_fleet` did: each device's VerifyResult (its card written), or its one-line
    error; `unmet` holds the results of the devices whose loop ended without keeping the budget
    (their error is the loop's message)."""

    results: dict[str, Any]
    errors: dict[str, str]
    order: list[str]
    unmet: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def card_name_for(name: str | None, out: Path | None, device: str, several: bool
                  ) -> tuple[str | None, Path | None]:
    """The card name and file a device's loop writes: as given for one device; with several,
    a given name or file gets the device's name appended (`<name>-<device>`,
    `<stem>-<device><suffix>`), so that no two cards overwrite each other (the default name
    names the device already)."""
    if not several:
        return name, out
    return (None if name is None else f"{name}-{device}",
            None if out is None else Path(out).with_name(f"{Path(out).stem}-{device}"
                                                         f"{Path(out).suffix}"))


def verify_fleet(ws: Workspace, space: Space, budgets: dict[str, Any],
                 settings: EntropySettings, context: int, devices: Sequence[str], *,
                 cluster: str = "auto", runtime: str | None = None, quant: str = "int8",
                 solver: str = "exact", options: dict[str, Any] | None = None,
                 name: str | None = None, out: Path | None = None, force: bool = False,
                 iterations: int = DEFAULT_ITERATIONS, repeat: int = DEFAULT_REPEAT,
                 progress: FleetProgress | None = None) -> FleetVerify:
    """`design --verify` on every device at once on the fleet `cluster` (module docstring):
    each device designs, exports, benches and redesigns against its own table, and writes its
    own card (`card_name_for`). The keywords are `verify_design`'s, the same for every device."""
    from merino_mobile.deploy.verify import BudgetNotMet, check_request, verify_design

    check_request(budgets, iterations, repeat)
    targets = [resolve_target(ws, dev, quant=quant, runtime=runtime) for dev in devices]
    names = _distinct(targets)
    t0 = time.perf_counter()
    ray = connect(cluster)
    check_devices_have_nodes(ray, names)
    fleet = _Fleet(ray, ws, targets, None, progress, None, 0, None, 0)
    unmet: dict[str, Any] = {}

    def one(ft: FleetTarget) -> Any:
        card_name, card_out = card_name_for(name, out, ft.name, len(targets) > 1)
        try:
            return verify_design(ws, space, budgets, settings, context, device=ft,
                                 runtime=runtime, quant=quant, solver=solver, options=options,
                                 name=card_name, out=card_out, force=force,
                                 iterations=iterations, repeat=repeat,
                                 say=lambda m: fleet._say(ft.name, m))
        except BudgetNotMet as e:
            unmet[ft.name] = e.result
            raise

    try:
        results = fleet.run(fleet.start(), fleet.lend(one))
    except BaseException:
        fleet.stop()
        raise
    return FleetVerify(results, fleet.errors, names, unmet, time.perf_counter() - t0)

"""Anchors: whole models timed inside a profile, so that a fresh table has its first calibration.

A table is a sum of micro-benchmarks, and a sum of micro-benchmarks does not add up exactly
inside a whole model (docs/measurements.md, "Calibration"). The calibration corrects it from
whole-model measurements, and those used to come only from later benches (`bench`, `deploy`,
`design --verify`): a fresh table predicted raw until a few models had been benched. `profile
--anchors N` measures N whole models of the space in the profile itself:

- chosen to span the space (`anchor_cards`): widths spread from the narrowest to the widest, two
  blocks an anchor so that every width band of the calibration is in two anchors (one left out
  for validation leaves the other), depths from the deepest to one layer as the width grows, so
  the fixed cost is told apart from the layers, at about the same export cost each;
- exported beside the micro-benchmarks, in the same side-by-side export phase, before anything
  is timed;
- timed interleaved with them, spread over each pass of the grid (`ProfileRun`): a change of the
  machine's pace in the middle of a profile touches the micro-benchmarks and the anchors alike,
  and the calibration absorbs it instead of carrying it into every design;
- stored as every whole-model bench is (the workspace's store, tag "anchor"), each the moment it
  finishes, so a killed profile keeps what it measured and a rerun times only the missing ones.

At the end of the profile the calibration is refitted on every stored measurement of the table's
fingerprint, runtime and quantization (anchors and earlier benches alike), since the re-written
table invalidates a calibration fitted on the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merino_mobile.card import Card
from merino_mobile.errors import UserError
from merino_mobile.space import Choice, Space

if TYPE_CHECKING:
    from merino_mobile.deploy.bench import BenchReport
    from merino_mobile.device.base import Device
    from merino_mobile.latency.store import Measurement
    from merino_mobile.target import Target

DEFAULT_ANCHORS = 4  # calibration.MIN_MODELS (3) plus one, so leave-one-out keeps three
MAX_ANCHORS = 16
TAG = "anchor"  # the store's tag of anchor measurements
REPEAT = 5  # timed runs per anchor bench: the calibration fits medians, not tails
# benches pooled per reading: a shared machine can run a whole bench window at its other,
# faster speed (docs/measurements.md, "Two speeds"); one window is a coin toss, three less so
ROUNDS = 3


def _spread_index(i: int, n: int, size: int) -> int:
    return 0 if n <= 1 else round(i * (size - 1) / (n - 1))


def anchor_cards(space: Space, n: int) -> list[Card]:
    """`n` cards of `space` spanning its widths and depths; fewer when the space has fewer
    distinct ones.

    Anchor i's widths are the i-th and the next of `n` widths spread from the narrowest to the
    widest (the last pairs with the first): one block each where the space allows two, so
    every width (and every width band of the calibration) is in two anchors, and leaving one
    anchor out (the calibration's validation) still leaves data for each of its bands. A
    block's depth falls from the deepest to one layer as its width grows (the anchors cost
    about alike to export), FFN ratios are spread over the anchors; a space that requires all
    its blocks gets the last block repeated."""
    if n < 0 or n > MAX_ANCHORS:
        raise UserError(f"--anchors must be between 0 and {MAX_ANCHORS} (got {n})")
    widths = sorted(space.widths)
    ratios = sorted(space.ffn_ratios)
    depths = sorted(d for d in space.depths if d >= 1)
    m = len(widths)
    spread = [_spread_index(i, n, m) for i in range(n)]

    def depth_of(p: int) -> int:  # width index p: the narrowest deepest, the widest 1 layer
        return depths[-1] if m == 1 else depths[round((m - 1 - p) * (len(depths) - 1) / (m - 1))]

    cards: list[Card] = []
    seen: set[tuple] = set()
    for i in range(n):
        r = ratios[_spread_index(i, n, len(ratios))]
        picks = sorted({spread[i], spread[(i + 1) % n]}) if space.max_blocks >= 2 else [spread[i]]
        # the most K/V heads the space allows (None: multi-head), as its layers are measured
        blocks = [space.with_sharing(Choice(width=widths[p], ffn_ratio=r, depth=depth_of(p),
                                            shared=False, kv_heads=space.kv_choices[-1]))
                  for p in picks]
        blocks += [blocks[-1]] * (space.min_blocks - len(blocks))  # all blocks required
        key = tuple(blocks)
        if key in seen:
            continue
        seen.add(key)
        name = "anchor-" + "_".join(f"{b.width}x{b.ffn_ratio:g}x{b.depth}{'s' * b.shared}"
                                    for b in blocks)
        cards.append(space.to_card(tuple(blocks), name, meta={"anchor_of": space.name}))
    return cards


@dataclass(frozen=True)
class Anchor:
    """One anchor of a profile: its card, the export folder, and the decode context it is
    exported (its KV cache) and benched at: the grid's longest, the one designs are checked at."""

    card: Card
    out_dir: Path
    context: int

    @property
    def prompt_generate(self) -> tuple[int, int]:
        from merino_mobile.deploy.verify import bench_lengths

        return bench_lengths(self.context)

    def export_cost(self) -> float:
        """In `programs._export_cost`'s units: a layer 4, the embedding and head a few more."""
        return 8.0 + 4.0 * self.card.depth


def anchors_for(space: Space, n: int, context: int, cache_dir: Path, fmt: str, quant: str
                ) -> list[Anchor]:
    """The profile's anchors: `anchor_cards`, each exported under the program cache."""
    folder = Path(cache_dir) / "anchors" / f"{fmt}-{quant}-ctx{context}"
    return [Anchor(c, folder / c.name, context) for c in anchor_cards(space, n)]


def export_anchor(card: Card, fmt: str, quant: str, out_dir: Path, context: int) -> str:
    """Export an anchor (a job of the profile's export phase), or reuse the export already there;
    the artifact's path. Speed only: not checked against fp32 (`deploy` does that)."""
    from merino_mobile.export import export, reusable_export

    res = reusable_export(out_dir, card, fmt, quant, context)
    if res is None:
        res = export(card, fmt, quant, out_dir, force=True, cache_len=context, verify=False)
    return str(res.artifact)


def stored_readings(measurements: list[Measurement], anchor: Anchor) -> int:
    """How many readings of `anchor` the store has among `measurements` (already filtered to
    the profile's fingerprint, runtime and quantization)."""
    card = anchor.card.to_json()
    return sum(m.tag == TAG and m.card == card and m.context == anchor.context
               for m in measurements)


def bench_anchor(target: Target, dev: Device, anchor: Anchor, fmt: str, quant: str
                 ) -> BenchReport:
    """Bench an exported anchor on the open device and store it (tag "anchor")."""
    from merino_mobile.deploy.bench import bench_artifact
    from merino_mobile.export import reusable_export

    res = reusable_export(anchor.out_dir, anchor.card, fmt, quant, anchor.context)
    if res is None:  # the export phase makes it; a folder removed since is made again here
        export_anchor(anchor.card, fmt, quant, anchor.out_dir, anchor.context)
        res = reusable_export(anchor.out_dir, anchor.card, fmt, quant, anchor.context)
        assert res is not None
    prompt, generate = anchor.prompt_generate
    return bench_artifact(target.ws, Path(res.artifact), target, prompt=prompt,
                          generate=generate, repeat=REPEAT, dev=dev, tag=TAG, rounds=ROUNDS)


def summary(anchor: Anchor, reading: int, report: Any) -> dict[str, Any]:
    """One anchor reading as the profile report lists it."""
    return {"card": anchor.card.name, "context": anchor.context, "reading": reading,
            "params": report.params, "decode_ms": report.decode_ms_per_token.median,
            "measurement_id": report.measurement_id}

"""Calibration: a device table's decode prediction corrected by that device's own whole-model
measurements (docs/measurements.md, "Calibration").

A table is a sum of micro-benchmarks, and a sum of micro-benchmarks does not add up exactly
inside a whole model (mid-width decode layers run slower inside a deep program than the table's
loaded instances, small models run hot, a table carries the machine's pace of the hour it was
measured in). The calibration keeps the table's structure and scales it:

    lat_cal(A) = sum_g s_g * lat_g(A),   s_g >= 0

where lat_g(A) is the part of the raw prediction that falls in term group g: of the design
solver's linear model (`predict_breakdown(..., cache_aware=False)`, the plain sum of streaming
terms), since the factors scale the terms the solver sums. A table's cache-aware blend of hot and
streaming readings (`predict_latency`) is not linear in the design's choices; fitted on it, the
factors would learn the hot readings' error and then scale the streaming terms by it.

Groups (`GROUPS`), and why these:
- `layers_narrow` (width <= 256), `layers_mid` (257 to 640), `layers_wide` (over 640): the decode
  layers by the width band of each layer. The bands follow what whole models showed on the
  reference host: models of narrow layers fit in the cache and run hot, the designs' mid widths
  run 11 to 13% slower inside a model than the table's layer, the widest layers agree with it.
  A layer's group depends only on its own width, so the calibrated latency is still a sum of
  per-choice terms and the design MIP stays linear (and exact).
- `projections`: the projections between widths (a small share; see the prior below).
- `head_embedding`: the embedding lookup and the head, which every model runs once per token.
- `fixed`: the per-call cost of the runtime.

Fit: non-negative least squares (scipy.optimize.nnls) of the relative error, each measurement
weighing alike whatever its size (row i: lat_g(A_i) / measured_i against 1), with a weak prior
that pulls every factor to 1 (`PRIOR_WEIGHT`: moving a factor by 0.1 costs as much as one model
predicted 0.3% off, so the data decide wherever they can). The prior decides what the
measurements cannot: a group no measured model uses stays at 1, and groups every model has in
the same proportion (the fixed cost and the head in a space of one embedding width) share their
correction instead of taking arbitrary values.

Two fits of that form are candidates (`MODELS`), from the simplest: `scale`, one factor for
every group (what a change of the machine's pace does: every term slower or faster alike), and
`groups`, a factor per group.

Validation and choice: leave one model out (every measurement of one architecture at one
context at once, so a repeated bench does not validate itself), scored as the mean absolute
percentage error (MAPE) of the held-out predictions, model by model. Starting from the raw table,
a candidate replaces the choice so far only where it predicts the held-out models better
consistently: a one-sided paired t-test of the per-model errors at `CONFIDENCE`. A smaller mean
error alone is not enough: with a few anchors read twice each, six factors fit the readings'
noise (a fit 0.4 points better than the raw table on 4 models moved two back-to-back tables'
designs apart by up to 50%, docs/measurements.md "Two profiles back to back"). The calibration
applies only with measurements of at least `MIN_MODELS` models and a candidate chosen so;
otherwise the factors are all 1 (the raw table) and the file says why.

Only measurements of the table's own fingerprint (`Fingerprint.key`), runtime and quantization
are ever used: others are skipped, and refused by name when asked for explicitly.

Only decode terms are scaled (the measurements fitted are decode steps); a prefill prediction
stays the raw table's.

The calibration is written beside the workspace's table, `devices/<name>/lut-<runtime>-<quant>
.calibration.json` (a sidecar: `profile` rewrites the table without knowing about it), with the
table's content hash: a table re-profiled since is not corrected by factors fitted on another.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from merino_mobile.card import Card
from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text, utc_now
from merino_mobile.latency.predict import LatencyTable, MissingLayerKind, predict_breakdown
from merino_mobile.latency.store import Measurement, read_measurements
from merino_mobile.latency.table import Lut

if TYPE_CHECKING:
    from merino_mobile.target import Target
    from merino_mobile.workspace import Workspace

SCHEMA_VERSION = 1
KIND = "merino-mobile-calibration"
NARROW_MAX = 256  # widest layer of the narrow band
MID_MAX = 640  # widest layer of the mid band
GROUPS: dict[str, str] = {
    "fixed": "the runtime's fixed per-call cost",
    "head_embedding": "the embedding lookup and the head",
    "projections": "projections between widths",
    "layers_narrow": f"decode layers of width <= {NARROW_MAX}",
    "layers_mid": f"decode layers of width {NARROW_MAX + 1} to {MID_MAX}",
    "layers_wide": f"decode layers of width > {MID_MAX}",
}
# Fewer models than this and leave-one-out has too little to say (two models: each factor
# fitted on one model); the raw table is used.
MIN_MODELS = 3
PRIOR_WEIGHT = 1e-3  # the pull of every factor towards 1 (see the module docstring)
MODELS: dict[str, str] = {
    "scale": "one factor for every group",
    "groups": "a factor per group",
}
CONFIDENCE = 0.95  # of the paired t-test a candidate must pass against the choice before it


def layer_group(width: int) -> str:
    """The group of a decode layer of this width (its own width only: keeps the MIP linear)."""
    if width <= NARROW_MAX:
        return "layers_narrow"
    return "layers_mid" if width <= MID_MAX else "layers_wide"


def term_group(term: str, width: int = 0) -> str:
    """The group of a latency term ("fixed", "embedding", "layer", "projection", "head")."""
    if term == "layer":
        return layer_group(width)
    if term == "projection":
        return "projections"
    if term in ("embedding", "head"):
        return "head_embedding"
    if term == "fixed":
        return "fixed"
    raise ValueError(f"unknown latency term {term!r}")


def group_costs(card: Card, table: LatencyTable, context: int, *,
                cache_aware: bool = False) -> dict[str, float]:
    """The raw decode prediction of `card` at `context` by the solver's linear model (what the
    fit uses), or with `cache_aware` the table's blend, split by group (ms; sums to
    `predict_latency(card, table, context, cache_aware=cache_aware)`)."""
    costs = dict.fromkeys(GROUPS, 0.0)
    for t in predict_breakdown(card, table, context, "decode", cache_aware=cache_aware):
        costs[term_group(t.term, t.width)] += t.ms
    return costs


def table_hash(lut: Lut) -> str:
    """A content hash of what a table predicts with (terms, fingerprint key, cache size)."""
    blob = json.dumps({"terms": lut.to_json()["terms"], "fingerprint": lut.fingerprint.key,
                       "cache_bytes": lut.cache_bytes}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def calibration_path(devices_dir: Path, device: str, runtime: str, quant: str) -> Path:
    """Where a table's calibration lives: beside the workspace's table of the device."""
    return Path(devices_dir) / device / f"lut-{runtime}-{quant}.calibration.json"


def calibrate_command(device: str, runtime: str, quant: str) -> str:
    return f"merino-mobile calibrate --device {device} --runtime {runtime} --quant {quant}"


# -- the calibration record ----------------------------------------------------------------------

@dataclass
class Calibration:
    """A fitted calibration of one table, with its data and validation (the sidecar file).

    `factors` are what predictions use: those of the chosen candidate `model` when `applied`,
    else all 1. `fitted` are the factor-per-group NNLS factors on every usable measurement (None
    with none); `candidates` each candidate's factors and held-out MAPE. `loo_mape_pct` holds
    the raw table's MAPE and the leave-one-model-out MAPE of the chosen candidate (or, when none
    is chosen, of the one with the lower error) on the same measurements (None with fewer than
    two models); `fit_mape_pct` the in-sample ones. `rows` list each measurement used: measured,
    raw, that candidate's in-sample (`calibrated_ms`) and held-out (`loo_ms`) prediction.
    """

    device: str
    runtime: str
    quant: str
    fingerprint: str
    table_hash: str
    table_source: str
    factors: dict[str, float]
    fitted: dict[str, float] | None
    applied: bool
    reason: str
    measurement_ids: list[int]
    models: int
    loo_mape_pct: dict[str, float] | None
    fit_mape_pct: dict[str, float] | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    fitted_at: str = ""
    min_models: int = MIN_MODELS
    prior_weight: float = PRIOR_WEIGHT
    model: str = "raw"  # what `factors` are: "raw" (all 1), "scale" or "groups" (`MODELS`)
    # per candidate: its factors on every measurement, and its held-out MAPE
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    confidence: float = CONFIDENCE

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": KIND, "groups": GROUPS,
                "bands": {"narrow_max": NARROW_MAX, "mid_max": MID_MAX}, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, source: str = "<calibration>") -> Calibration:
        """Parse a calibration file; anything malformed is an error naming the file."""
        def bad(why: str) -> UserError:
            return UserError(f"{source}: not a valid calibration ({why}); write it again with "
                             f"`merino-mobile calibrate`")

        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise bad(f'expected a JSON object with "kind": "{KIND}"')
        if data.get("schema_version") != SCHEMA_VERSION:
            raise bad(f"schema_version {data.get('schema_version')!r}, this version reads "
                      f"{SCHEMA_VERSION}")
        fields = cls.__dataclass_fields__
        names = set(fields)
        missing = sorted(n for n, f in fields.items() if n not in data
                         and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise bad(f"missing {', '.join(missing)}")
        for key in ("factors", "fitted"):
            value = data[key]
            if value is None and key == "fitted":
                continue
            if not isinstance(value, dict) or set(value) != set(GROUPS) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    and v >= 0 for v in value.values()):
                raise bad(f"{key} must give a non-negative number for each of "
                          f"{', '.join(GROUPS)}")
        if not isinstance(data["applied"], bool):
            raise bad("applied must be true or false")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as e:
            raise bad(str(e)) from None

    def save(self, path: Path) -> Path:
        """Write atomically (a full disk leaves the previous file intact)."""
        try:
            atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}; the previous calibration (if "
                            f"any) is unchanged") from None
        return Path(path)


def read_calibration(path: Path) -> Calibration | None:
    """The calibration file at `path`, None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a valid calibration (not JSON: {e}); write it again with "
                        f"`merino-mobile calibrate`") from None
    return Calibration.from_json(data, str(path))


# -- fitting -------------------------------------------------------------------------------------

def _unusable(table: Lut, m: Measurement) -> str | None:
    """Why measurement `m` cannot calibrate `table` (None when it can)."""
    if m.fingerprint != table.fingerprint.key:
        return (f"was measured on fingerprint {m.fingerprint}, not the table's "
                f"{table.fingerprint.key} ({table.fingerprint.describe()})")
    if m.runtime != table.runtime:
        return f"ran on {m.runtime}, the table is of {table.runtime}"
    if m.quant != table.quant:
        return f"is quantization {m.quant}, the table is of {table.quant}"
    if m.card is None:
        return "has no card (its artifact came without card.json)"
    heads = {p.vocab for p, _ in table.entries.get("head", {}).get("decode", [])}
    vocab = m.card.get("vocab")
    if heads and vocab not in heads:
        return f"is of vocab {vocab}, the table measured the head at vocab {sorted(heads)}"
    return None


def _nnls_with_prior(a: np.ndarray, weight: float) -> np.ndarray:
    """argmin_{s >= 0} |a s - 1|^2 + weight |s - 1|^2."""
    from scipy.optimize import nnls

    k = a.shape[1]
    root = math.sqrt(weight)
    m = np.vstack([a, root * np.eye(k)])
    b = np.concatenate([np.ones(a.shape[0]), root * np.ones(k)])
    s, _ = nnls(m, b)
    return s


def _model_key(card: Card, context: int) -> str:
    arch = {k: v for k, v in card.to_json().items() if k not in ("name", "meta")}
    return json.dumps([arch, context], sort_keys=True)


def _mape(pred: np.ndarray, y: np.ndarray) -> float:
    return float(100 * np.mean(np.abs(pred - y) / y))


def fit(table: Lut | CalibratedTable, measurements: Sequence[Measurement], *,
        device: str | None = None, explicit: bool = False,
        min_models: int = MIN_MODELS, prior_weight: float = PRIOR_WEIGHT,
        confidence: float = CONFIDENCE) -> Calibration:
    """Fit the calibration of `table` (its raw terms) on whole-model `measurements`: each
    candidate of `MODELS`, validated leave-one-model-out, the simplest that predicts the held-out
    models consistently better than the choice before it (module docstring).

    Measurements of another fingerprint, runtime or quantization (or without a card, or of
    another vocabulary) are never used: skipped and listed, or with `explicit` (the caller
    named them) refused with a UserError that names the measurement. `device` names the device
    in messages and the record (default: the table's).
    """
    raw = table.raw if isinstance(table, CalibratedTable) else table
    device = device or raw.device
    usable: list[tuple[Measurement, Card]] = []
    skipped: list[dict[str, Any]] = []
    for m in measurements:
        why = _unusable(raw, m)
        card = None
        if why is None:
            try:
                card = Card.from_json(m.card, f"measurement {m.id}'s card")
                group_costs(card, raw, m.context)  # the table measured its layers' kinds
            except MissingLayerKind as e:
                why = f"has layers the table never measured ({e})"
            except UserError as e:
                why = f"has a card that does not load ({e})"
        if why is not None or card is None:
            if explicit:
                raise UserError(f"measurement {m.id} ({m.card_name or 'no card'}, {m.device}) "
                                f"{why}: a calibration of {raw.source} uses only measurements of "
                                f"its own fingerprint, runtime and quantization; leave it out")
            skipped.append({"id": m.id, "card": m.card_name, "reason": why})
            continue
        usable.append((m, card))

    ids = [m.id for m, _ in usable]
    keys = [_model_key(card, m.context) for m, card in usable]
    models = len(set(keys))
    ones = dict.fromkeys(GROUPS, 1.0)
    base = dict(device=device, runtime=raw.runtime, quant=raw.quant,
                fingerprint=raw.fingerprint.key, table_hash=table_hash(raw),
                table_source=raw.source, measurement_ids=ids, models=models, skipped=skipped,
                fitted_at=utc_now(), min_models=min_models, prior_weight=prior_weight)
    if not usable:
        return Calibration(**base, factors=ones, fitted=None, applied=False,
                           loo_mape_pct=None, fit_mape_pct=None,
                           reason=_too_few(0, 0, min_models, device))

    names = list(GROUPS)
    x = np.array([[group_costs(card, raw, m.context)[g] for g in names] for m, card in usable])
    # the slow speed where a measurement's rounds ran at two: what verify judges a budget by
    y = np.array([m.slow_ms for m, _ in usable])
    a = x / y[:, None]
    raw_pred = x.sum(axis=1)
    held_of = {key: np.array([k == key for k in keys]) for key in dict.fromkeys(keys)}
    fits: dict[str, np.ndarray] = {}
    loos: dict[str, np.ndarray] = {}
    for model in MODELS:
        fits[model] = _factors(model, a, prior_weight)
        loo = np.full(len(y), np.nan)
        if models >= 2:
            for held in held_of.values():
                loo[held] = x[held] @ _factors(model, a[~held], prior_weight)
        loos[model] = loo
    raw_mape = _mape(raw_pred, y)
    n = len(usable)
    chosen = "raw"
    if models >= max(2, min_models):
        errors = {"raw": _fold_errors(raw_pred, y, held_of)}
        for model in MODELS:
            errors[model] = _fold_errors(loos[model], y, held_of)
            if _consistently_better(errors[chosen], errors[model], confidence):
                chosen = model
    applied = chosen != "raw"
    # the candidate a report shows: the chosen one, else the one with the lower held-out error
    shown = chosen if applied else min(
        MODELS, key=lambda m: _mape(loos[m], y) if models >= 2 else 0.0)
    s = fits[shown]
    fit_pred = x @ s
    loo = loos[shown]
    rows = [{"id": m.id, "card": m.card_name, "context": m.context,
             "measured_ms": float(y[i]), "raw_ms": float(raw_pred[i]),
             "calibrated_ms": float(fit_pred[i]),
             "loo_ms": None if math.isnan(loo[i]) else float(loo[i])}
            for i, (m, _) in enumerate(usable)]
    fit_mape = {"raw": raw_mape, "calibrated": _mape(fit_pred, y)}
    fitted = {g: float(v) for g, v in zip(names, fits["groups"], strict=True)}
    loo_mape = None if models < 2 else {"raw": raw_mape, "calibrated": _mape(loo, y)}
    candidates = {m: {"factors": {g: float(v) for g, v in zip(names, fits[m], strict=True)},
                      "loo_mape_pct": None if models < 2 else _mape(loos[m], y)}
                  for m in MODELS}
    if models < min_models:
        reason = _too_few(n, models, min_models, device)
    elif loo_mape is None:
        reason = _too_few(n, models, 2, device)
    elif applied:
        reason = (f"fitted on {n} measurement(s) of {models} models, {MODELS[chosen]}: "
                  f"leave-one-out error {loo_mape['calibrated']:.1f}%, raw table {raw_mape:.1f}%")
    else:
        tried = ", ".join(f"{MODELS[m]} {candidates[m]['loo_mape_pct']:.1f}%" for m in MODELS)
        reason = (f"no fit predicts the {models} held-out models consistently better than the "
                  f"raw table (leave-one-out error: {tried}; raw table {raw_mape:.1f}%; a paired "
                  f"t-test at {confidence:.0%}): the raw table is used")
    return Calibration(**base, factors=candidates[chosen]["factors"] if applied else ones,
                       fitted=fitted, applied=applied, reason=reason, loo_mape_pct=loo_mape,
                       fit_mape_pct=fit_mape, rows=rows, model=chosen, candidates=candidates,
                       confidence=confidence)


def _factors(model: str, a: np.ndarray, weight: float) -> np.ndarray:
    """The factor of every group under `model`, fitted on rows `a` (lat_g / measured)."""
    if model == "scale":
        return np.full(a.shape[1], _nnls_with_prior(a.sum(axis=1, keepdims=True), weight)[0])
    return _nnls_with_prior(a, weight)


def _fold_errors(pred: np.ndarray, y: np.ndarray, held_of: dict[str, np.ndarray]
                 ) -> np.ndarray:
    """Each held-out model's mean absolute relative error (its measurements together)."""
    err = np.abs(pred - y) / y
    return np.array([err[held].mean() for held in held_of.values()])


def _consistently_better(base: np.ndarray, cand: np.ndarray, confidence: float) -> bool:
    """Whether `cand`'s per-model errors are below `base`'s by a one-sided paired t-test: a
    mean that the spread of the differences could not give by chance at `confidence`."""
    from scipy.stats import t

    d = base - cand
    mean = float(d.mean())
    if len(d) < 2 or mean <= 1e-12:
        return False
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # every model better by the same amount
        return True
    return mean / (sd / math.sqrt(len(d))) > float(t.ppf(confidence, len(d) - 1))


def _too_few(n: int, models: int, min_models: int, device: str) -> str:
    return (f"{n} usable measurement(s) of {models} model(s); calibrating needs measurements of "
            f"at least {min_models} models: the raw table is used (bench more models on "
            f"{device}: `merino-mobile bench`, `deploy` or `compare` record each one)")


def calibrate(target: Target, ids: Sequence[int] | None = None) -> tuple[Calibration, Path]:
    """Fit the calibration of the target's table from the workspace's stored measurements of
    its fingerprint, runtime and quantization (or exactly `ids`, refusing any of another), and
    write it beside the table; the calibration and its file."""
    raw = target.table(calibrated=False)
    assert isinstance(raw, Lut)
    state = target.ws.state
    if ids:
        ms = read_measurements(state, ids=ids)
        missing = sorted(set(ids) - {m.id for m in ms})
        if missing:
            raise UserError(f"no measurement {', '.join(map(str, missing))} in "
                            f"{state / 'profile.db'}; `merino-mobile measurements --device "
                            f"{target.name}` lists them")
    else:
        ms = read_measurements(state, fingerprint=raw.fingerprint.key, runtime=raw.runtime,
                               quant=raw.quant)
        # the device's others are named as not used, so a user sees why they do not count
        mine = {m.id for m in ms}
        ms += [m for m in read_measurements(state, device=target.name) if m.id not in mine]
    cal = fit(raw, ms, device=target.name, explicit=bool(ids))
    path = calibration_path(target.ws.devices, target.name, raw.runtime, raw.quant)
    return cal, cal.save(path)


# -- the calibrated table ------------------------------------------------------------------------

class CalibratedTable:
    """A `LatencyTable`: the raw table's decode terms, each scaled by its group's factor.

    Every factor depends on the term and (for a layer) its own width only, so the calibrated
    latency of a card is a sum of per-choice terms like the raw one: the design MIP is as
    linear, and as exact, as with the raw table. Prefill terms are the raw table's. Everything
    else (has_hot, cache_bytes, quant, fingerprint, source, entries, check, ...) is the raw
    table's. Without an applied calibration every factor is 1 and `reason` says why.
    """

    def __init__(self, raw: Lut, calibration: Calibration | None = None, *,
                 file: Path | None = None, reason: str = "") -> None:
        self.raw = raw
        self.calibration = calibration
        self.file = file
        applied = calibration is not None and calibration.applied and not reason
        self._factors = dict(calibration.factors) if applied and calibration else {}
        self.reason = reason or (calibration.reason if calibration else "no calibration")

    @property
    def calibrated(self) -> bool:
        """Whether a fitted calibration corrects this table's predictions."""
        return bool(self._factors)

    def factor(self, group: str) -> float:
        """The factor of a group (1 where nothing is applied)."""
        return self._factors.get(group, 1.0)

    def summary(self) -> dict[str, Any]:
        """What a report says about the calibration: file, factors, data, validation, why."""
        c = self.calibration
        return {"file": str(self.file) if self.file else None,
                "factors": dict(self._factors) or None,
                "measurements": len(c.measurement_ids) if c else 0,
                "models": c.models if c else 0,
                "loo_mape_pct": c.loo_mape_pct if c else None, "reason": self.reason}

    def _scaled(self, group: str, phase: str, ms: float) -> float:
        return ms * self.factor(group) if phase == "decode" else ms

    # -- LatencyTable --------------------------------------------------------------------------

    def fixed(self, phase: str = "decode", *args: Any, **kwargs: Any) -> float:
        return self._scaled("fixed", phase, self.raw.fixed(phase, *args, **kwargs))

    def layer(self, width: int, ffn_ratio: float, heads: int, context: int,
              phase: str = "decode", **kwargs: Any) -> float:
        """The raw table's layer, scaled; `hot=` and a layer's `kind=` (`LayerKind`) pass
        through to the raw table, so its group's factor applies to every layer kind alike."""
        return self._scaled(layer_group(width), phase,
                            self.raw.layer(width, ffn_ratio, heads, context, phase, **kwargs))

    def projection(self, width_in: int, width_out: int, phase: str = "decode",
                   context: int = 1, **kwargs: Any) -> float:
        return self._scaled("projections", phase,
                            self.raw.projection(width_in, width_out, phase, context, **kwargs))

    def embedding(self, width: int, vocab: int, phase: str = "decode", context: int = 1) -> float:
        return self._scaled("head_embedding", phase,
                            self.raw.embedding(width, vocab, phase, context))

    def head(self, width: int, vocab: int, phase: str = "decode", **kwargs: Any) -> float:
        return self._scaled("head_embedding", phase, self.raw.head(width, vocab, phase, **kwargs))

    # -- the raw table's identity --------------------------------------------------------------

    @property
    def source(self) -> str:
        return self.raw.source

    @property
    def device(self) -> str:
        return self.raw.device

    @property
    def runtime(self) -> str:
        return self.raw.runtime

    @property
    def quant(self) -> str:
        return self.raw.quant

    @property
    def fingerprint(self) -> Any:
        return self.raw.fingerprint

    @property
    def entries(self) -> dict[str, dict[str, list[Any]]]:
        return self.raw.entries

    @property
    def has_hot(self) -> bool:
        return getattr(self.raw, "has_hot", False)

    @property
    def cache_bytes(self) -> float:
        return getattr(self.raw, "cache_bytes", 0.0)

    def __getattr__(self, name: str) -> Any:
        # only reached for what this class does not define; `raw` itself may be missing while
        # an instance is being unpickled, so private names never delegate
        if name.startswith("_") or name == "raw":
            raise AttributeError(name)
        return getattr(self.raw, name)


def calibrated_table(ws: Workspace, device: str, raw: Lut) -> CalibratedTable:
    """`raw` with the workspace's calibration of it (devices/<device>/lut-*.calibration.json)
    when that applies; else factors of 1 and the reason (none, not fitted, too few, stale,
    another fingerprint)."""
    path = calibration_path(ws.devices, device, raw.runtime, raw.quant)
    cal = read_calibration(path)
    again = calibrate_command(device, raw.runtime, raw.quant)
    if cal is None:
        return CalibratedTable(raw, None, reason=f"no calibration of {raw.source}; after benching "
                               f"whole models on {device}, run `{again}`")
    if (cal.fingerprint, cal.runtime, cal.quant) != (raw.fingerprint.key, raw.runtime,
                                                     raw.quant):
        return CalibratedTable(raw, cal, file=path, reason=(
            f"{path} was fitted for fingerprint {cal.fingerprint} ({cal.runtime}, {cal.quant}), "
            f"not {raw.source}'s {raw.fingerprint.key} ({raw.runtime}, {raw.quant}): not used; "
            f"run `{again}`"))
    if cal.table_hash != table_hash(raw):
        return CalibratedTable(raw, cal, file=path, reason=(
            f"{path} was fitted on another version of {raw.source} (profiled again since): not "
            f"used; run `{again}`"))
    return CalibratedTable(raw, cal, file=path)

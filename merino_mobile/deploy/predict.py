"""Measured against predicted: a deploy's prediction from the device's latency table, and the
memory roofline of its decode step.

- Card vs latency table: a card whose vocabulary differs from the one the table's head was
  measured at is an error (the head dominates small models). A decode context or prompt outside
  the measured range is a warning: the prediction is extrapolated and flagged. The predicted
  decode latency is the table's at the positions the bench's decode steps attended
  (`BenchReport.decode_context`: the whole static cache, or up to the step's own position for an
  artifact that follows it), the predicted prefill the table's at the prompt length.
- Calibrated or not: the decode prediction uses the device's calibration when one applies
  (`Target.table`, `merino_mobile.latency.calibration`); `calibrated` says whether it did,
  `calibration` gives its factors (or why none applied), and each phase keeps the raw table's
  own prediction beside it (`raw_predicted_ms`; prefill is never calibrated).
- Memory roofline: bytes read per token (weights, accounting.weight_bytes, plus the KV cache
  attended) over the device's read bandwidth at its thread count (bandwidth.json under
  devices/<name>/, measured once by a read-only sweep).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from merino_mobile import accounting
from merino_mobile.card import Card
from merino_mobile.deploy.bench import BenchReport
from merino_mobile.device.base import Fingerprint
from merino_mobile.errors import UserError
from merino_mobile.files import utc_now, write_json
from merino_mobile.latency import predict_latency
from merino_mobile.latency.predict import MissingLayerKind
from merino_mobile.target import Target

SCHEMA_VERSION = 2  # of bandwidth.json: 2 is the read-only sweep (1 was a copy)
FLAG_PCT = 10.0  # a prediction further off than this is flagged in the report


def predict(target: Target, card: Card, bench: BenchReport,
            fingerprint: Fingerprint) -> tuple[dict[str, Any], list[str]]:
    """Predicted vs measured decode and prefill (or the reason there is no prediction), and
    warnings, from the target's table.

    Raises UserError when the card and the table disagree on the vocabulary.
    """
    device, runtime, quant = target.name, target.runtime, target.quant
    try:
        lut = target.table()
    except UserError as e:
        return {"reason": str(e)}, []
    warnings: list[str] = []
    mism = lut.fingerprint.mismatch(fingerprint)
    if mism:
        why = (f"{lut.source} was measured on another setup ({'; '.join(mism)}); re-profile "
               f"`merino-mobile profile --device {device} --runtime {runtime} --quant {quant}`")
        return {"reason": why}, [why]
    heads = {p.vocab for p, _ in lut.entries.get("head", {}).get("decode", [])}
    if heads and card.vocab not in heads:
        raise UserError(f"card {card.name!r} has vocab {card.vocab} but {lut.source} measured the "
                        f"head at vocab {sorted(heads)}: they come from different search spaces; "
                        f"profile with a space of vocab {card.vocab} (--space) or deploy with "
                        f"--no-predict")
    context = bench.decode_context
    out: dict[str, Any] = {"lut": lut.source, "lut_fingerprint": lut.fingerprint.describe(),
                           "calibrated": lut.calibrated, "calibration": lut.summary()}
    for phase, length, measured in (("decode", context, bench.decode_ms_per_token.median),
                                    ("prefill", bench.prompt, bench.ttft_ms.median)):
        lengths = {p.context for p, _ in lut.entries.get("layer", {}).get(phase, [])}
        if lengths and not min(lengths) <= length <= max(lengths):
            warnings.append(f"{phase} length {length} is outside the measured {phase} lengths "
                            f"{sorted(lengths)} of {lut.source}: the prediction is extrapolated")
        try:
            # a calibration corrects the solver's linear model (streaming terms), the raw
            # prediction blends in the table's hot readings where a model fits the cache
            pred = predict_latency(card, lut, length, phase, cache_aware=not lut.calibrated)
            raw = predict_latency(card, lut.raw, length, phase)
        except MissingLayerKind as e:
            # a layer kind the table never measured (a Llama-style card, a v1 table): the
            # bench stands, without a prediction, and the reason names the profile to run
            return {"reason": str(e)}, [str(e)]
        err = 100 * (pred - measured) / measured
        out[phase] = {"length": length, "predicted_ms": pred, "measured_ms": measured,
                      "error_pct": err, "flagged": abs(err) > FLAG_PCT,
                      "raw_predicted_ms": raw}
    for phase in ("decode", "prefill"):
        if out[phase]["flagged"]:
            warnings.append(f"predicted {phase} latency is off by {out[phase]['error_pct']:+.1f}% "
                            f"(more than {FLAG_PCT:g}%)")
    return out, warnings


# -- memory bandwidth and roofline ---------------------------------------------------------------

def host_read_bandwidth(threads: int, mbytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a read-only sweep over a buffer far larger than any cache (`torch.sum` of
    `mbytes` of fp32 with `threads` threads), best of `repeats`: what a decode step does with
    its weights, which are read and never written (a copy would count writes a decode does
    not make)."""
    import torch

    x = torch.ones(mbytes * (1 << 20) // 4)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        float(x.sum())  # first touch and thread pool start-up are not timed
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            float(x.sum())
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return x.numel() * x.element_size() / best


def device_bandwidth(target: Target) -> dict[str, Any] | None:
    """The device's read bandwidth (single-threaded and at its profile's thread count),
    measured once and kept in devices/<name>/bandwidth.json; None for a device this host
    cannot measure (a phone: put its numbers in that file, see docs/phones.md). A file of an
    older method (a copy's read + write bytes) is measured again."""
    path = target.ws.devices / target.name / "bandwidth.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("schema_version") == SCHEMA_VERSION and data.get("bytes_per_s"):
            return data
    if target.profile.transport != "local":
        return None
    threads = target.profile.threads
    single = host_read_bandwidth(1)
    data = {"schema_version": SCHEMA_VERSION, "device": target.name,
            "method": "read-only sweep: torch.sum over 256 MiB of fp32, best of 5",
            "threads": threads,
            "read_bytes_per_s": {"1": single,
                                 str(threads): single if threads == 1
                                 else host_read_bandwidth(threads)},
            "date": utc_now()}
    data["bytes_per_s"] = data["read_bytes_per_s"][str(threads)]
    write_json(path, data)
    return data


def roofline(target: Target, card: Card, bench: BenchReport) -> dict[str, Any]:
    """The decode step's floor: the bytes it reads per token (every weight, plus the KV cache
    it attends: `BenchReport.decode_context` positions) over the device's read
    bandwidth at its thread count, and the share of the measured step that floor explains."""
    bw = device_bandwidth(target)
    if bw is None:
        return {"share": None, "reason": f"no measured read bandwidth for {target.name}: "
                                         f"see docs/phones.md (bandwidth.json)"}
    wb = accounting.weight_bytes(card, target.quant)
    kv = accounting.kv_cache_bytes(card, bench.decode_context)
    floor_ms = 1000 * (wb + kv) / bw["bytes_per_s"]
    return {"weight_bytes": wb, "kv_bytes": kv, "bytes_per_token": wb + kv,
            "bandwidth_gbs": bw["bytes_per_s"] / 1e9, "threads": bw.get("threads"),
            "floor_ms": floor_ms, "share": floor_ms / bench.decode_ms_per_token.median}

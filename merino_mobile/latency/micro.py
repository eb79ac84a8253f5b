"""Micro-models: each latency term as a small torch module, built from the decoder's own modules.

A point's micro-model is made of the very modules the decoder uses (`merino_mobile.model`:
`DecoderLayer`, `KVCache`, `LayerNorm`), so the runtime sees the same operators a whole model
has; its inputs are described by `InputSpec`s the device fills at run time.

A micro-benchmark calls one term many times, so weights that fit in the caches are timed hot,
while a whole model, larger than any cache it runs on, streams its weights from DRAM every token.
So a decode term with weights is timed as `copies` distinct instances called one after the other,
which read up to STREAM_BYTES of weights between two calls of one instance; the table stores the
time of one. Where the copies live depends on the device:
- a device that `replicates` (the host) loads the exported single instance `copies` times and
  calls them in turn: nothing extra to export, so up to MAX_INSTANCES (how close this comes to a
  layer inside a whole program: `python benchmarks/cold_weights.py`);
- elsewhere (a phone's executor_runner runs one method once) the copies are built into the
  micro-model and each is exported and lowered, so MAX_COPIES bounds that cost.
A replicating device also times each such term hot (`hot_points`), one instance called again and
again, for whole models small enough to stay in the cache (`predict.predict_latency`).

A layer point of another kind (`Point.ffn`, `kv_heads`, `norm`, `nobias`; `predict.LayerKind`)
builds the decoder's layer of that kind: a SwiGLU FFN's gate, K and V maps of kv_heads x
head_dim, and a KV cache of the K/V heads only, exactly as `Decoder` builds a card's layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from merino_mobile.device.base import InputSpec
from merino_mobile.latency.grid import Grid
from merino_mobile.latency.store import Point

NULL_WIDTH = 64
STREAM_BYTES = 48e6
MAX_COPIES = 4
MAX_INSTANCES = 32


def weight_bytes(p: Point, quant: str) -> float:
    """Bytes of the weight matrices one instance of a term reads per call (0: none)."""
    from merino_mobile.accounting import matrix_bytes

    if p.term == "layer":
        return sum(matrix_bytes(rows, cols, quant) for _, rows, cols in _shape(p).matrices())
    if p.term == "projection":
        return matrix_bytes(p.width_out, p.width, quant)
    if p.term == "head":
        return matrix_bytes(p.vocab, p.width, quant)
    return 0.0


def _shape(p: Point) -> Any:
    """The `accounting.LayerShape` of a layer point (its kind's gate and K/V width)."""
    from merino_mobile.accounting import LayerShape
    from merino_mobile.latency.predict import LayerKind

    kind = LayerKind.of_point(p)
    kv = None if kind.kv_heads is None else kind.kv_heads * (p.width // p.heads)
    return LayerShape(p.width, round(p.width * p.ffn_ratio), kv, kind.ffn, kind.bias, kind.bias,
                      kind.bias, kind.norm)


def copies(p: Point, quant: str, replicated: bool = False) -> int:
    """Instances of a term timed in turn (see STREAM_BYTES); prefill is compute-bound.
    `replicated`: the device loads them (up to MAX_INSTANCES), else the micro-model holds them
    (up to MAX_COPIES)."""
    b = weight_bytes(p, quant)
    if p.phase != "decode" or b <= 0:
        return 1
    cap = MAX_INSTANCES if replicated else MAX_COPIES
    return max(1, min(cap, math.ceil(STREAM_BYTES / b)))


def input_specs(p: Point) -> tuple[InputSpec, ...]:
    """The inputs of a point's micro-benchmark method (see `micro_model`)."""
    t = 1 if p.phase == "decode" else p.context
    if p.term == "layer":
        # decode writes slot context-1 and sees all slots; prefill writes slots 0..T-1
        pos_fill: str | int = p.context - 1 if p.phase == "decode" else "arange"
        return (InputSpec((1, t, p.width)), InputSpec((t,), "int64", pos_fill),
                InputSpec((t, p.context), "bool", 1))
    if p.term == "projection":
        return (InputSpec((1, t, p.width)),)
    if p.term == "embedding":  # tokens, positions
        return (InputSpec((1, t), "int64", 7), InputSpec((t,), "int64", "arange"))
    if p.term == "fixed":  # tokens, start position
        return (InputSpec((1, t), "int64", 7), InputSpec((1,), "int64", 0))
    if p.term == "head":
        return (InputSpec((1, 1, p.width)),)
    if p.term == "null":
        return (InputSpec((1, t, NULL_WIDTH)),)
    raise ValueError(f"unknown term {p.term!r}")


def micro_model(p: Point, grid: Grid, quant: str = "fp32", n: int | None = None
                ) -> tuple[Any, tuple, tuple[InputSpec, ...]]:
    """(module, example args, input specs) of one point's micro-benchmark, with `n` instances
    of its term (default `copies(p, quant)`)."""
    import torch
    from torch import nn

    from merino_mobile.latency.predict import LayerKind
    from merino_mobile.model import DecoderLayer, KVCache, LayerNorm

    n = copies(p, quant) if n is None else n
    specs = input_specs(p)
    if p.term == "layer":
        cache_len = p.context
        kind = LayerKind.of_point(p)

        def layer() -> nn.Module:
            hidden = round(p.width * p.ffn_ratio)
            if kind.is_v1:  # exactly the module version 1 points always measured
                return DecoderLayer(p.width, hidden, p.heads)
            return DecoderLayer(p.width, hidden, p.heads, kind.bias, kv_heads=kind.kv_heads,
                                ffn=kind.ffn, norm=kind.norm)

        class LayerBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = nn.ModuleList(layer() for _ in range(n))
                # the cache holds the K/V heads only, as the decoder's
                self.caches = nn.ModuleList(
                    KVCache(kind.kv_heads or p.heads, cache_len, p.width // p.heads)
                    for _ in range(n))

            def forward(self, x, pos, mask):
                for layer, cache in zip(self.layers, self.caches, strict=True):
                    x = layer(x, cache, pos, mask)
                return x

        return LayerBench(), _example(specs), specs
    if p.term == "projection":
        class ProjectionBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.proj = nn.ModuleList(nn.Linear(p.width, p.width_out, bias=False)
                                          for _ in range(n))

            def forward(self, x):
                # every instance reads the same input: the sum keeps all of them in the graph
                return sum(proj(x) for proj in self.proj)

        return ProjectionBench(), _example(specs), specs
    if p.term == "embedding":
        rows = grid.max_context

        class EmbedBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(p.vocab, p.width)
                self.pos_embed = nn.Embedding(rows, p.width)

            def forward(self, tokens, pos):
                return self.embed(tokens) + self.pos_embed(pos)

        return EmbedBench(), _example(specs), specs
    if p.term == "head":
        class HeadBench(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.norm = LayerNorm(p.width)
                self.heads = nn.ModuleList(nn.Linear(p.width, p.vocab, bias=False)
                                           for _ in range(n))

            def forward(self, x):
                y = self.norm(x[:, -1, :])
                return sum(head(y) for head in self.heads)

        return HeadBench(), _example(specs), specs
    if p.term == "fixed":
        cache_len = p.context

        class FixedBench(nn.Module):
            def forward(self, tokens, start):
                pos = start + torch.arange(tokens.shape[1], dtype=torch.long)
                mask = torch.arange(cache_len, dtype=torch.long)[None, :] <= pos[:, None]
                # tokens feed an output so no exporter drops the input as unused
                return pos, mask, tokens[:, -1:]

        return FixedBench(), _example(specs), specs
    if p.term == "null":
        class NullBench(nn.Module):
            def forward(self, x):
                return x + 1.0

        return NullBench(), _example(specs), specs
    raise ValueError(f"unknown term {p.term!r}")


def _example(specs: Sequence[InputSpec]) -> tuple:
    from merino_mobile.device.worker import make_inputs

    return tuple(make_inputs(tuple(specs), torch_tensors=True))


def in_program(p: Point, quant: str, replicated: bool) -> int:
    """Instances of a point's term built into its micro-model (1 when the device replicates)."""
    return 1 if replicated else copies(p, quant)


def hot_points(points: Sequence[Point], quant: str, replicated: bool) -> list[Point]:
    """The hot twins of `points` (`Point.hot`): every decode term timed as several instances
    (`copies`), timed again as one instance called again and again, its weights staying in the
    caches. Only a device that `replicates` reads them: there the twin is the same method
    loaded once, nothing more to export. Read in the first pass only."""
    if not replicated:
        return []
    return [replace(p, hot=True) for p in points
            if not p.hot and copies(p, quant, replicated) > 1]



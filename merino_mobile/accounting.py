"""Exact cost accounting of a card: parameters, FLOPs, KV-cache bytes, weight bytes.

Every total is a sum of per-term functions (one layer, one projection, the embedding, the head),
and the design solver adds up the very same functions, so a designed card and its accounting can
never disagree.

Conventions (the decoder of `merino_mobile.model` follows them, and tests check the counts
against transformers' OPT, GPT-2, Llama and Qwen2 models):
- a layer (`LayerShape`) has q and o maps (E x E), k and v maps (E x K each, K = kv heads x head
  dim: K = E without grouped-query attention) and an FFN of two matrices (E x F, F x E), or three
  when gated (SwiGLU's gate beside up); biases where the card has them (q, k, v: `qkv_bias`; o:
  `out_bias`; the FFN's: `bias`), and two norms (LayerNorm: weight and bias; RMSNorm: weight);
- projections between blocks, in and out of the embedding width, and an untied head have no bias;
- the final norm (if `card.final_norm`) sits at the last block's width.
FLOPs count a multiply-add as 2, so 2 per weight of every matrix a token passes through (the gate
included); attention costs 2 * 2 * E per attended position (scores and weighted sum, over every
query head: sharing K and V heads saves cache, not arithmetic); the embedding lookup, norms,
activations and softmax are not counted. The KV cache holds K heads: 2 * context * K per layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from merino_mobile.card import GATED, Block, Card

# bytes per weight for each weight format; int formats add their scales below
QUANT_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
INT4_GROUP = 32  # group-wise int4 weights share one scale per 32 weights
KV_BYTES = {"fp32": 4, "fp16": 2}


# -- per-term functions (shared with the solver) -------------------------------------------------

@dataclass(frozen=True)
class LayerShape:
    """The parameter layout of one decoder layer. The defaults are a version 1 card's layer
    (MHA, GELU FFN, every bias, LayerNorm); `LayerShape.of(card, block)` reads a card's."""

    width: int
    ffn_hidden: int
    kv_width: int | None = None  # None: as wide as the layer (no grouped-query attention)
    ffn: str = "gelu"
    qkv_bias: bool = True
    out_bias: bool = True
    ffn_bias: bool = True
    norm: str = "layernorm"

    @classmethod
    def of(cls, card: Card, block: Block) -> LayerShape:
        return cls(block.width, block.ffn_hidden, block.kv_width, block.ffn, card.has_qkv_bias,
                   card.has_out_bias, card.bias, card.norm)

    def matrices(self) -> Iterator[tuple[str, int, int]]:
        """(name, rows, cols) of each weight matrix, rows being the output width."""
        e, f, k = self.width, self.ffn_hidden, self.kv
        yield from (("q", e, e), ("k", k, e), ("v", k, e), ("o", e, e))
        if self.ffn in GATED:
            yield "ffn_gate", f, e
        yield from (("ffn_up", f, e), ("ffn_down", e, f))

    @property
    def kv(self) -> int:
        return self.width if self.kv_width is None else self.kv_width

    @property
    def matrix_params(self) -> int:
        """Weights in the matrices (what quantization compresses)."""
        return sum(rows * cols for _, rows, cols in self.matrices())

    @property
    def vector_params(self) -> int:
        """Biases and norm parameters (kept in full precision)."""
        e, f = self.width, self.ffn_hidden
        n = 2 * norm_params(self.norm, e)
        n += (e + 2 * self.kv) if self.qkv_bias else 0
        n += e if self.out_bias else 0
        ups = 2 if self.ffn in GATED else 1
        return n + ((ups * f + e) if self.ffn_bias else 0)

    @property
    def params(self) -> int:
        return self.matrix_params + self.vector_params

    def flops(self, context: int) -> int:
        """FLOPs of the layer for one new token attending to `context` positions."""
        return 2 * self.matrix_params + 4 * self.width * context

    def kv_bytes(self, context: int, kv_dtype: str = "fp32") -> int:
        """Keys and values of the layer for `context` positions."""
        return kv_bytes_per_layer(self.kv, context, kv_dtype)


def norm_params(norm: str, width: int) -> int:
    """Parameters of one norm: LayerNorm has a weight and a bias, RMSNorm a weight."""
    return 2 * width if norm == "layernorm" else width


def _v1(width: int, ffn_hidden: int, bias: bool = True) -> LayerShape:
    return LayerShape(width, ffn_hidden, qkv_bias=bias, out_bias=bias, ffn_bias=bias)


def layer_matrix_params(width: int, ffn_hidden: int) -> int:
    """Weights in the matrices of one version 1 layer (what quantization compresses)."""
    return _v1(width, ffn_hidden).matrix_params


def layer_vector_params(width: int, ffn_hidden: int, bias: bool = True) -> int:
    """Biases and LayerNorm parameters of one version 1 layer (kept in full precision)."""
    return _v1(width, ffn_hidden, bias).vector_params


def layer_params(width: int, ffn_hidden: int, bias: bool = True) -> int:
    return _v1(width, ffn_hidden, bias).params


def block_params(block: Block, bias: bool = True, card: Card | None = None) -> int:
    """A shared block stores one layer's weights however deep it is. With `card`, the layer is
    the card's (`LayerShape.of`); without, a version 1 layer with or without biases."""
    copies = 1 if block.shared else block.depth
    shape = LayerShape.of(card, block) if card is not None else _v1(block.width,
                                                                   block.ffn_hidden, bias)
    return copies * shape.params


def layer_flops(width: int, ffn_hidden: int, context: int) -> int:
    """FLOPs of one version 1 layer for one new token attending to `context` positions."""
    return _v1(width, ffn_hidden).flops(context)


def projection_params(width_in: int, width_out: int) -> int:
    return 0 if width_in == width_out else width_in * width_out


def kv_bytes_per_layer(kv_width: int, context: int, kv_dtype: str = "fp32") -> int:
    """Keys and values of one layer whose K and V maps are `kv_width` wide, for `context`
    positions (`kv_width` is the layer's width without grouped-query attention)."""
    return 2 * context * kv_width * KV_BYTES[kv_dtype]


def matrix_bytes(rows: int, cols: int, quant: str) -> float:
    """Bytes of one rows x cols weight matrix in a weight format, scales included.

    int8: per-output-channel fp32 scale (one per row). int4: one fp32 scale per group of 32 weights.
    """
    n = rows * cols
    if quant in ("fp32", "fp16"):
        return n * QUANT_BITS[quant] / 8
    if quant == "int8":
        return n + 4 * rows
    if quant == "int4":
        return n / 2 + 4 * n / INT4_GROUP
    raise ValueError(f"unknown quantization {quant!r}; known: {sorted(QUANT_BITS)}")


# -- the pieces of a card ------------------------------------------------------------------------

@dataclass(frozen=True)
class Matrix:
    """One weight matrix of a card, for byte accounting."""

    name: str
    rows: int
    cols: int


def transitions(card: Card) -> Iterator[tuple[int, int]]:
    """Width changes that need a projection: embedding -> block 0 -> ... -> last block -> head."""
    widths = [card.embedding_width] + [b.width for b in card.blocks] + [card.embedding_width]
    for a, b in zip(widths, widths[1:], strict=False):
        if a != b:
            yield a, b


def matrices(card: Card) -> Iterator[Matrix]:
    """Every stored weight matrix (shared layers once)."""
    e = card.embedding_width
    yield Matrix("embedding", card.vocab, e)
    if card.positions == "learned":
        yield Matrix("positions", card.context + card.pos_offset, card.blocks[0].width)
    for i, b in enumerate(card.blocks):
        layer = LayerShape.of(card, b)
        for j in range(1 if b.shared else b.depth):
            for k, rows, cols in layer.matrices():
                yield Matrix(f"block{i}.layer{j}.{k}", rows, cols)
    for n, (a, b) in enumerate(transitions(card)):
        yield Matrix(f"projection{n}", b, a)
    if not card.tied_head:
        yield Matrix("head", card.vocab, e)


def vector_params(card: Card) -> int:
    """Biases and norms (never quantized)."""
    n = sum((1 if b.shared else b.depth) * LayerShape.of(card, b).vector_params
            for b in card.blocks)
    if card.final_norm:
        n += norm_params(card.norm, card.blocks[-1].width)
    return n


# -- totals --------------------------------------------------------------------------------------

def params(card: Card) -> int:
    """Stored parameters: shared blocks count once; a tied head adds nothing."""
    return sum(m.rows * m.cols for m in matrices(card)) + vector_params(card)


def decoder_params(card: Card) -> int:
    """Parameters of the decoder layers only (LiteTransformerSearch's training-free proxy)."""
    return sum(block_params(b, card=card) for b in card.blocks)


def flops_per_token(card: Card, context: int) -> int:
    """FLOPs to generate one token with a KV cache holding `context` positions."""
    total = sum(b.depth * LayerShape.of(card, b).flops(context) for b in card.blocks)
    total += sum(2 * a * b for a, b in transitions(card))
    total += 2 * card.embedding_width * card.vocab  # the head
    return total


def kv_cache_bytes(card: Card, context: int, kv_dtype: str = "fp32") -> int:
    """KV cache for `context` positions: sum_i L_i * 2 * context * K_i * bytes per element, K_i
    the width of block i's K and V maps (E_i without grouped-query attention)."""
    return sum(b.depth * kv_bytes_per_layer(b.kv_width, context, kv_dtype) for b in card.blocks)


def weight_bytes(card: Card, quant: str = "fp32") -> int:
    """Bytes of all weights in a format: matrices quantized, biases and norms in fp32."""
    total = sum(matrix_bytes(m.rows, m.cols, quant) for m in matrices(card))
    return round(total + 4 * vector_params(card))


def memory_bytes(card: Card, context: int, quant: str = "int8", kv_dtype: str = "fp32") -> int:
    """What the model needs resident to decode at `context`: weights plus KV cache."""
    return weight_bytes(card, quant) + kv_cache_bytes(card, context, kv_dtype)


def decode_working_set(card: Card, context: int, quant: str = "int8",
                       kv_dtype: str = "fp32") -> int:
    """Bytes one decode step reads: every weight matrix but the lookup tables (a token reads one
    row of each; a tied head reads the token table whole), and the KV cache at `context`.
    Whether this fits in the device's last-level cache decides whether the model runs hot
    (`merino_mobile.latency.predict_latency`)."""
    total = sum(matrix_bytes(m.rows, m.cols, quant) for m in matrices(card)
                if m.name not in ("embedding", "positions"))
    if card.tied_head:
        total += matrix_bytes(card.vocab, card.embedding_width, quant)
    return round(total + 4 * vector_params(card) + kv_cache_bytes(card, context, kv_dtype))

"""Exact cost accounting of a card: parameters, FLOPs, KV-cache bytes, weight bytes.

Every total is a sum of per-term functions (one layer, one projection, the embedding, the head),
and the design solver adds up the very same functions, so a designed card and its accounting can
never disagree.

Conventions (the decoder of `merino_mobile.model` follows them, and tests check the counts
against transformers' OPT and GPT-2):
- a layer has q, k, v, o projections (E x E each) and a two-matrix FFN (E x F, F x E), with
  biases when `card.bias`, plus two LayerNorms (weight and bias);
- projections between blocks, in and out of the embedding width, and an untied head have no bias;
- the final LayerNorm (if `card.final_norm`) sits at the last block's width.
FLOPs count a multiply-add as 2; attention costs 2 * 2 * E per attended position (scores and
weighted sum); the embedding lookup, norms and softmax are not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from merino_mobile.card import Block, Card

# bytes per weight for each weight format; int formats add their scales below
QUANT_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
INT4_GROUP = 32  # group-wise int4 weights share one scale per 32 weights
KV_BYTES = {"fp32": 4, "fp16": 2}


# -- per-term functions (shared with the solver) -------------------------------------------------

def layer_matrix_params(width: int, ffn_hidden: int) -> int:
    """Weights in the matrices of one decoder layer (what quantization compresses)."""
    return 4 * width * width + 2 * width * ffn_hidden


def layer_vector_params(width: int, ffn_hidden: int, bias: bool = True) -> int:
    """Biases and LayerNorm parameters of one layer (kept in full precision)."""
    biases = (4 * width + ffn_hidden + width) if bias else 0
    return biases + 4 * width


def layer_params(width: int, ffn_hidden: int, bias: bool = True) -> int:
    return layer_matrix_params(width, ffn_hidden) + layer_vector_params(width, ffn_hidden, bias)


def block_params(block: Block, bias: bool = True) -> int:
    """A shared block stores one layer's weights however deep it is."""
    copies = 1 if block.shared else block.depth
    return copies * layer_params(block.width, block.ffn_hidden, bias)


def layer_flops(width: int, ffn_hidden: int, context: int) -> int:
    """FLOPs of one layer for one new token attending to `context` positions."""
    return 2 * layer_matrix_params(width, ffn_hidden) + 4 * width * context


def projection_params(width_in: int, width_out: int) -> int:
    return 0 if width_in == width_out else width_in * width_out


def kv_bytes_per_layer(width: int, context: int, kv_dtype: str = "fp32") -> int:
    """Keys and values of one layer for `context` positions."""
    return 2 * context * width * KV_BYTES[kv_dtype]


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
        for j in range(1 if b.shared else b.depth):
            for k in ("q", "k", "v", "o"):
                yield Matrix(f"block{i}.layer{j}.{k}", b.width, b.width)
            yield Matrix(f"block{i}.layer{j}.ffn_up", b.ffn_hidden, b.width)
            yield Matrix(f"block{i}.layer{j}.ffn_down", b.width, b.ffn_hidden)
    for n, (a, b) in enumerate(transitions(card)):
        yield Matrix(f"projection{n}", b, a)
    if not card.tied_head:
        yield Matrix("head", card.vocab, e)


def vector_params(card: Card) -> int:
    """Biases and norms (never quantized)."""
    n = sum((1 if b.shared else b.depth) * layer_vector_params(b.width, b.ffn_hidden, card.bias)
            for b in card.blocks)
    if card.final_norm:
        n += 2 * card.blocks[-1].width
    return n


# -- totals --------------------------------------------------------------------------------------

def params(card: Card) -> int:
    """Stored parameters: shared blocks count once; a tied head adds nothing."""
    return sum(m.rows * m.cols for m in matrices(card)) + vector_params(card)


def decoder_params(card: Card) -> int:
    """Parameters of the decoder layers only (LiteTransformerSearch's training-free proxy)."""
    return sum(block_params(b, card.bias) for b in card.blocks)


def flops_per_token(card: Card, context: int) -> int:
    """FLOPs to generate one token with a KV cache holding `context` positions."""
    total = sum(b.depth * layer_flops(b.width, b.ffn_hidden, context) for b in card.blocks)
    total += sum(2 * a * b for a, b in transitions(card))
    total += 2 * card.embedding_width * card.vocab  # the head
    return total


def kv_cache_bytes(card: Card, context: int, kv_dtype: str = "fp32") -> int:
    """KV cache for `context` positions: sum_i L_i * 2 * context * E_i * bytes per element."""
    return sum(b.depth * kv_bytes_per_layer(b.width, context, kv_dtype) for b in card.blocks)


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

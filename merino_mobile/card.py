"""Architecture card: a decoder described precisely enough to count, build and export it.

A card is a list of blocks. Block i has width E_i, FFN ratio R_i, H_i = E_i / head_dim heads and
L_i layers; if `shared`, the L_i layers reuse one set of weights (MeRino's parameter sharing).
Blocks of different widths are joined by a bias-free linear projection.

The token embedding has width `embed_width` (default: the first block's width). When it differs
from the first block there is a projection in; when the last block's width differs from it there is
a projection out before the head (OPT-350M: 512 -> 1024 -> 512). The head is tied to the embedding
or a separate bias-free matrix. Learned positions (`positions = "learned"`) add a
(context + pos_offset) x E_1 table; OPT keeps 2 extra rows (pos_offset = 2), GPT-2 none; "rope"
positions have no parameters. Every layer is pre-norm: x + attn(norm(x)), x + ffn(norm(x)); with
`final_norm`, one more norm sits at the last block's width before the projection out. With `bias`,
every linear map of a layer (q, k, v, o and the FFN's) has a bias.

Schema version 2 adds what Llama-style decoders (SmolLM2, MobileLLM, Qwen2.5) need; each field's
default is what version 1 means, so a version 1 card reads as the same decoder:

- per card: `norm` ("layernorm", weight and bias, or "rmsnorm", weight only) with `norm_eps`
  (1e-5); `rope_theta` (10000, rope positions only); `qkv_bias` and `out_bias`, the biases of the
  q, k, v maps and of the attention's output map o, each following `bias` when absent (Qwen2:
  `"bias": false, "qkv_bias": true`);
- per block: `ffn`, the FFN kind: "gelu" (erf), "gelu_tanh" (GPT-2's tanh approximation), "relu"
  or "swiglu" (down(silu(gate x) * up x), a third matrix); its hidden size as `ffn_ratio` x width
  or as an explicit `ffn_hidden` (one of the two); `kv_heads`, the heads of the K and V maps
  (grouped-query attention; 1 is multi-query; heads must be a multiple of it; default: heads).

JSON form (`models/*.json`), versioned by `schema_version`:

    {"schema_version": 1, "name": "gpt2", "vocab": 50257, "context": 1024, "head_dim": 64,
     "positions": "learned", "pos_offset": 0, "embed_width": null, "tied_head": true,
     "final_norm": true, "bias": true,
     "blocks": [{"width": 768, "ffn_ratio": 4.0, "heads": 12, "depth": 12, "shared": false}],
     "meta": {...free-form provenance...}}

    {"schema_version": 2, "name": "smollm2-135m", "vocab": 49152, "context": 8192,
     "head_dim": 64, "positions": "rope", "rope_theta": 100000.0, "embed_width": null,
     "tied_head": true, "norm": "rmsnorm", "norm_eps": 1e-05, "final_norm": true, "bias": false,
     "blocks": [{"width": 576, "ffn_hidden": 1536, "heads": 9, "kv_heads": 3, "depth": 30,
                 "shared": false, "ffn": "swiglu"}], "meta": {...}}

A card is written in the version it was read in, or the lowest version that expresses it when
that is higher: a card that uses no version 2 field is written as version 1, as before.

Reading is strict (`load_card`, `Card.from_json`): integers are JSON integers (`64`; `64.0` and
`"64"` are refused, not converted), `ffn_ratio` a finite number (`4` or `4.0`; no NaN or
Infinity), flags `true`/`false` (not 0/1 or strings), `embed_width` an integer or null, `meta` an
object of any JSON but non-finite numbers; unknown keys, in the card or in a block, are refused
with the known ones (a version 2 key in a version 1 card says so). Sizes are bounded so that
nothing downstream (accounting walks every layer, the model allocates every table) can run away:
vocab <= MAX_VOCAB (2,097,152), context <= MAX_CONTEXT (1,048,576), widths and head_dim <=
MAX_WIDTH (65,536), ffn_ratio <= MAX_FFN_RATIO (64), depth <= MAX_DEPTH (1024) per block and in
total. A card breaking one of these, or inconsistent (kv_heads that do not divide heads, rope_theta
with learned positions, both ffn_ratio and ffn_hidden), is a UserError naming the file, the field
and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text
from merino_mobile.workspace import Fields, parse_json, read_text

SCHEMA_VERSION = 2  # the newest version this code reads and writes
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
FFN_KINDS = ("gelu", "gelu_tanh", "relu", "swiglu")
GATED = ("swiglu",)  # FFN kinds with a gate matrix beside up and down
DEFAULT_NORM_EPS = 1e-5  # torch's LayerNorm default: what a version 1 card's norms use
DEFAULT_ROPE_THETA = 10000.0  # the rotary base of RoFormer: what a version 1 rope card uses

# Far beyond any decoder a phone runs (Gemma 3's vocabulary is 262,144, the widest open models are
# 16,384 wide and 126 layers deep), and small enough that per-layer loops and tables stay cheap.
MAX_VOCAB = 1 << 21
MAX_CONTEXT = 1 << 20
MAX_WIDTH = 1 << 16
MAX_FFN_RATIO = 64.0
MAX_DEPTH = 1024
MAX_HIDDEN = int(MAX_FFN_RATIO) * MAX_WIDTH
MAX_NORM_EPS = 0.1  # norms use 1e-6..1e-5; a larger eps is a typo, not a design

# the keys of each version, in the order a card is written
V1_KEYS = ("name", "vocab", "context", "head_dim", "blocks", "positions", "pos_offset",
           "embed_width", "tied_head", "final_norm", "bias", "meta")
V1_BLOCK_KEYS = ("width", "ffn_ratio", "heads", "depth", "shared")
V2_KEYS = V1_KEYS + ("rope_theta", "norm", "norm_eps", "qkv_bias", "out_bias")
V2_BLOCK_KEYS = V1_BLOCK_KEYS + ("ffn_hidden", "kv_heads", "ffn")


@dataclass(frozen=True)
class Block:
    """`depth` decoder layers of one width; with `shared`, they reuse one set of weights.

    `hidden` is the FFN's hidden size when the card gives it explicitly (JSON `ffn_hidden`;
    `ffn_ratio` is then hidden / width); `kv_heads` None means as many K/V heads as heads.
    """

    width: int
    ffn_ratio: float
    heads: int
    depth: int
    shared: bool = False
    ffn: str = "gelu"
    kv_heads: int | None = None
    hidden: int | None = None

    @property
    def ffn_hidden(self) -> int:
        """Hidden size of the FFN (of each of its up and gate maps)."""
        return self.hidden if self.hidden is not None else round(self.width * self.ffn_ratio)

    @property
    def n_kv_heads(self) -> int:
        """Heads of the K and V maps (and of the KV cache)."""
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def kv_width(self) -> int:
        """Output width of the K and V maps: kv heads x head dim."""
        return self.n_kv_heads * (self.width // self.heads) if self.heads else 0

    @property
    def gated(self) -> bool:
        return self.ffn in GATED

    def uses_v2(self) -> bool:
        return self.ffn != "gelu" or self.kv_heads is not None or self.hidden is not None

    def to_json(self, version: int) -> dict[str, Any]:
        d: dict[str, Any] = {"width": self.width}
        if version >= 2 and self.hidden is not None:
            d["ffn_hidden"] = self.hidden
        else:
            d["ffn_ratio"] = self.ffn_ratio
        d["heads"] = self.heads
        if version >= 2 and self.kv_heads is not None:
            d["kv_heads"] = self.kv_heads
        d |= {"depth": self.depth, "shared": self.shared}
        if version >= 2:
            d["ffn"] = self.ffn
        return d


@dataclass(frozen=True)
class Card:
    """A decoder-only transformer: vocabulary, context, embedding and the blocks.

    `qkv_bias` and `out_bias` None follow `bias` (see `has_qkv_bias`, `has_out_bias`); `version`
    is the schema version the card was read in (0 when built in Python), see `schema_version`.
    """

    name: str
    vocab: int
    context: int
    head_dim: int
    blocks: tuple[Block, ...]
    positions: str = "learned"
    pos_offset: int = 0
    embed_width: int | None = None
    tied_head: bool = True
    final_norm: bool = True
    bias: bool = True
    norm: str = "layernorm"
    norm_eps: float = DEFAULT_NORM_EPS
    rope_theta: float = DEFAULT_ROPE_THETA
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    version: int = field(default=0, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        problems = self.problems()
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise UserError(f"card {self.name!r} is not a valid architecture: "
                            + "; ".join(problems[:5]) + more)

    # -- derived shape -------------------------------------------------------------------------

    @property
    def embedding_width(self) -> int:
        """Width of the token embedding (and of a tied head)."""
        return self.embed_width or self.blocks[0].width

    @property
    def depth(self) -> int:
        """Total number of decoder layers D = sum L_i."""
        return sum(b.depth for b in self.blocks)

    @property
    def has_qkv_bias(self) -> bool:
        """Whether the q, k and v maps have biases."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def has_out_bias(self) -> bool:
        """Whether the attention's output map o has a bias."""
        return self.bias if self.out_bias is None else self.out_bias

    @property
    def schema_version(self) -> int:
        """The version `to_json` writes: the one read in, or the lowest that expresses the card."""
        needs_v2 = (self.norm != "layernorm" or self.norm_eps != DEFAULT_NORM_EPS
                    or self.rope_theta != DEFAULT_ROPE_THETA or self.qkv_bias is not None
                    or self.out_bias is not None or any(b.uses_v2() for b in self.blocks))
        return max(self.version, 2 if needs_v2 else 1)

    # -- validation ------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every reason this card cannot be a decoder (empty when it is fine)."""
        out = [p for p in (
            out_of_range("vocab", self.vocab, 1, MAX_VOCAB),
            out_of_range("context", self.context, 1, MAX_CONTEXT),
            out_of_range("head_dim", self.head_dim, 1, MAX_WIDTH),
            out_of_range("pos_offset", self.pos_offset, 0, MAX_CONTEXT),
            None if self.embed_width is None else
            out_of_range("embed_width", self.embed_width, 1, MAX_WIDTH),
        ) if p]
        if self.positions not in POSITIONS:
            out.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.norm not in NORMS:
            out.append(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps <= MAX_NORM_EPS):
            out.append(f"norm_eps {self.norm_eps} is outside (0, {MAX_NORM_EPS:g}]")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            out.append(f"rope_theta {self.rope_theta} must be a finite number above 0")
        elif self.positions == "learned" and self.rope_theta != DEFAULT_ROPE_THETA:
            out.append(f"rope_theta {self.rope_theta:g} is set but positions are learned; "
                       "rope_theta applies to rope positions only")
        if self.positions == "rope" and self.pos_offset and self.schema_version >= 2:
            out.append(f"pos_offset {self.pos_offset} is set but positions are rope; pos_offset "
                       "applies to learned positions only")
        if not self.blocks:
            out.append("it has no blocks; give at least one block with depth >= 1")
        for i, b in enumerate(self.blocks):
            out += _block_problems(f"block {i}", b, self.head_dim)
        if all(b.depth <= MAX_DEPTH for b in self.blocks) and self.depth > MAX_DEPTH:
            out.append(f"it has {self.depth} layers in all; the most is {MAX_DEPTH}")
        return out

    # -- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The card's JSON object, in `schema_version` (version 1 exactly as it always was)."""
        version = self.schema_version
        d: dict[str, Any] = {"schema_version": version}
        for key in V1_KEYS if version == 1 else _V2_ORDER:
            if key == "blocks":
                d["blocks"] = [b.to_json(version) for b in self.blocks]
            elif not _unset(self, key):
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_json(cls, data: Any, source: str = "<card>") -> Card:
        """A card from parsed JSON, read strictly (see the module docstring); every problem is a
        UserError naming `source` and the field."""
        f = Fields(data, source)
        versions = " or ".join(map(str, _READERS))
        version = f.get("schema_version", int, expect=f"the integer {versions}")
        reader = _READERS.get(version)
        if reader is None:
            raise UserError(
                f"{source}: schema_version {version!r} is not supported (this version of "
                f"merino-mobile reads schema_version {', '.join(map(str, _READERS))})"
            )
        try:
            return reader(f)
        except UserError as e:
            if str(e).startswith(f"{source}: "):
                raise
            raise UserError(f"{source}: {e}") from None

    def with_name(self, name: str) -> Card:
        return replace(self, name=name)


def _unset(card: Card, key: str) -> bool:
    """Whether a version 2 key stays out of the JSON: rope_theta of learned positions, pos_offset
    of rope positions, a bias flag that follows `bias`."""
    return ((key == "rope_theta" and card.positions != "rope")
            or (key == "pos_offset" and card.positions == "rope")
            or (key in ("qkv_bias", "out_bias") and getattr(card, key) is None))


_V2_ORDER = ("name", "vocab", "context", "head_dim", "positions", "rope_theta", "pos_offset",
             "embed_width", "tied_head", "norm", "norm_eps", "final_norm", "bias", "qkv_bias",
             "out_bias", "blocks", "meta")


def _block_problems(where: str, b: Block, head_dim: int) -> list[str]:
    out = []
    if b.depth < 1:
        out.append(f"{where} has depth {b.depth}; every block needs at least one layer")
    elif b.depth > MAX_DEPTH:
        out.append(f"{where} has depth {b.depth}; the most is {MAX_DEPTH} layers")
    width_ok = 1 <= b.width <= MAX_WIDTH
    if not width_ok:
        out.append(f"{where} width {b.width} is outside 1..{MAX_WIDTH}")
    elif head_dim < 1 or b.width % head_dim:
        out.append(f"{where} width {b.width} is not a multiple of head_dim {head_dim}")
    elif b.heads != b.width // head_dim:
        out.append(f"{where} has {b.heads} heads but width {b.width} / head_dim "
                   f"{head_dim} = {b.width // head_dim}")
    elif b.kv_heads is not None and not (1 <= b.kv_heads <= b.heads and b.heads % b.kv_heads == 0):
        out.append(f"{where} kv_heads {b.kv_heads} does not divide its {b.heads} heads; give "
                   "a divisor of heads (1 for multi-query attention, heads for none shared)")
    if b.ffn not in FFN_KINDS:
        out.append(f"{where} ffn must be one of {FFN_KINDS}, got {b.ffn!r}")
    if b.hidden is not None:
        if not 1 <= b.hidden <= MAX_HIDDEN:
            out.append(f"{where} ffn_hidden {b.hidden} is outside 1..{MAX_HIDDEN}")
        elif width_ok and not math.isclose(b.ffn_ratio, b.hidden / b.width):
            out.append(f"{where} ffn_ratio {b.ffn_ratio} disagrees with ffn_hidden {b.hidden} / "
                       f"width {b.width}; give one of them")
    elif not (math.isfinite(b.ffn_ratio) and 0 < b.ffn_ratio <= MAX_FFN_RATIO):
        out.append(f"{where} ffn_ratio {b.ffn_ratio} is outside (0, {MAX_FFN_RATIO:g}]")
    elif not math.isclose(b.width * b.ffn_ratio, b.ffn_hidden):
        out.append(f"{where} ffn_ratio {b.ffn_ratio} x width {b.width} is not a whole number")
    return out


def _only(f: Fields, known: tuple[str, ...], newer: tuple[str, ...]) -> None:
    """`f.only(known)`, saying when an unknown key is a field of schema version 2."""
    try:
        f.only(known)
    except UserError as e:
        later = sorted(k for k in f.data if k in newer and k not in known)
        if not later:
            raise
        one = len(later) == 1
        raise UserError(f"{e}; {', '.join(later)} {'is a field' if one else 'are fields'} of "
                        f"schema_version 2: set \"schema_version\": 2 to use "
                        f"{'it' if one else 'them'}") from None


def _block_v1(f: Fields) -> Block:
    _only(f, V1_BLOCK_KEYS, V2_BLOCK_KEYS)
    return Block(**f.fill(Block, {"ffn": "gelu", "kv_heads": None, "hidden": None}))


def _card_v1(f: Fields) -> Card:
    _only(f, V1_KEYS + ("schema_version",), V2_KEYS)
    blocks = tuple(_block_v1(b) for b in f.tables("blocks"))
    return Card(**f.fill(Card, {"blocks": blocks, "meta": _meta(f), "norm": "layernorm",
                                "norm_eps": DEFAULT_NORM_EPS, "rope_theta": DEFAULT_ROPE_THETA,
                                "qkv_bias": None, "out_bias": None, "version": 1},
                         limits={"positions": {"choices": POSITIONS}}))


def _block_v2(f: Fields) -> Block:
    f.only(V2_BLOCK_KEYS)
    width = f.get("width", int)
    if "ffn_hidden" in f and "ffn_ratio" in f:
        f.fail("ffn_hidden", "and ffn_ratio are both given; give one of them (ffn_hidden is the "
                             "FFN's hidden size, ffn_ratio that size over the width)")
    if "ffn_hidden" not in f and "ffn_ratio" not in f:
        f.fail("ffn_ratio", "is missing: give ffn_ratio (a finite number) or ffn_hidden (a whole "
                            "number), the FFN's hidden size over the width or the size itself")
    hidden = f.get("ffn_hidden", int, None, lo=1, hi=MAX_HIDDEN)
    given: dict[str, Any] = {"width": width, "hidden": hidden}
    if hidden is not None:
        given["ffn_ratio"] = hidden / width if width else 0.0
    return Block(**f.fill(Block, given, limits={"ffn": {"choices": FFN_KINDS},
                                                "kv_heads": {"lo": 1, "hi": MAX_WIDTH}}))


def _card_v2(f: Fields) -> Card:
    _only(f, V2_KEYS + ("schema_version",), ())
    positions = f.get("positions", str, "learned", choices=POSITIONS)
    if positions == "learned" and "rope_theta" in f:
        f.fail("rope_theta", "applies to rope positions only, and positions are \"learned\": "
                             "remove rope_theta or set positions to \"rope\"")
    if positions == "rope" and f.get("pos_offset", int, 0):
        f.fail("pos_offset", "applies to learned positions only, and positions are \"rope\": "
                             "remove pos_offset or set it to 0")
    blocks = tuple(_block_v2(b) for b in f.tables("blocks"))
    given = {"blocks": blocks, "meta": _meta(f), "version": 2,
             "qkv_bias": f.get("qkv_bias", bool, None), "out_bias": f.get("out_bias", bool, None)}
    return Card(**f.fill(Card, given, limits={
        "positions": {"choices": POSITIONS}, "norm": {"choices": NORMS},
        "norm_eps": {"lo": 0.0, "hi": MAX_NORM_EPS, "above": True},
        "rope_theta": {"lo": 0.0, "above": True}}))


def _meta(f: Fields) -> dict[str, Any]:
    meta = f.free("meta", {})
    if not isinstance(meta, dict):
        f.fail("meta", f"must be an object {{...}} (free-form provenance), got {f.show(meta)}")
    return meta


# One reader per schema version; a new version adds its reader here (and may reuse these).
_READERS: dict[int, Callable[[Fields], Card]] = {1: _card_v1, 2: _card_v2}


def out_of_range(name: str, value: int, lo: int, hi: int) -> str | None:
    """The problem of an integer setting outside [lo, hi], or None (cards and spaces)."""
    if lo <= value <= hi:
        return None
    return f"{name} must be from {lo} to {hi}, got {value}"


def load_card(path: str | Path) -> Card:
    """Read a card from a JSON file, with errors that name the file, the field and the fix."""
    path = Path(path)
    text = read_text(path, "card", "`merino-mobile info` lists shipped cards")
    return Card.from_json(parse_json(text, path), source=str(path))


def save_card(card: Card, path: str | Path, force: bool = False) -> Path:
    """Write a card as JSON; refuses to replace an existing file unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; choose another --out or pass --force to replace it")
    return atomic_write_text(path, json.dumps(card.to_json(), indent=2) + "\n")


DESIGNED_BY = "merino-mobile design"  # a card's meta.designed_by when `design` wrote it


def last_designed(folder: Path) -> tuple[Card, Path] | None:
    """The card `design` wrote last into `folder` (models/ of a workspace): the newest by its
    recorded date, then by file time; None when `design` wrote none there. Cards that do not
    load are passed over: they cannot be what the last design wrote."""
    found = []
    for path in Path(folder).glob("*.json"):
        try:
            card = load_card(path)
        except UserError:
            continue
        if card.meta.get("designed_by") == DESIGNED_BY:
            found.append((str(card.meta.get("date", "")), path.stat().st_mtime, card, path))
    if not found:
        return None
    *_, card, path = max(found, key=lambda f: (f[0], f[1]))
    return card, path


def uniform(name: str, vocab: int, context: int, width: int, depth: int, ffn_ratio: float = 4.0,
            head_dim: int = 64, **kw: Any) -> Card:
    """A plain GPT/OPT-style card: one block of `depth` unshared layers."""
    block = Block(width=width, ffn_ratio=ffn_ratio, heads=width // head_dim, depth=depth)
    return Card(name=name, vocab=vocab, context=context, head_dim=head_dim, blocks=(block,), **kw)

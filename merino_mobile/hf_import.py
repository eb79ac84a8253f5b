"""A local Hugging Face model folder as a card and a checkpoint (`merino-mobile import DIR`).

The folder is what `save_pretrained` writes: `config.json`, the weights as `model.safetensors` or
as shards listed by `model.safetensors.index.json`, and `tokenizer.json` when there is one.
Nothing is downloaded and transformers is not needed: the config is read as JSON and the tensors
with safetensors. Four families are read:

    llama   LlamaForCausalLM (SmolLM2, MobileLLM-style): RMSNorm, SwiGLU, GQA, RoPE
    qwen2   Qwen2ForCausalLM (Qwen2.5): the same with q, k, v biases
    opt     OPTForCausalLM: pre-LN LayerNorm, ReLU FFN, learned positions with 2 extra rows, an
            optional embedding width with projections in and out
    gpt2    GPT2LMHeadModel: LayerNorm, tanh-GELU FFN, learned positions, fused q|k|v in
            Conv1D layout (input x output), split and transposed here

Each becomes one block of unshared layers: `models/NAME.json` in the workspace, and beside the
training runs the checkpoint `build/NAME/import/model.safetensors` (exactly the decoder's
state_dict in fp32, what `build_decoder(card, checkpoint=...)` and `merino-mobile export
--checkpoint` read; its metadata records the card and the source) with the folder's
`tokenizer.json` copied next to it. The card's meta names the source, the checkpoint and the
tokenizer.

Refused, each with one line naming what: a family or architecture outside the four, a missing
config or weight file, a config the card cannot express (post-LN OPT, rope scaling, sliding-window
attention, a head dim other than width / heads, an activation the FFN kinds lack), a tensor
missing or of the wrong shape (the first one, by its name in the folder), tensors the layout has
no place for (a norm on q and k, say), and a tokenizer with more ids than the vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from merino_mobile.card import Block, Card, save_card
from merino_mobile.errors import UserError
from merino_mobile.files import atomic_write_text
from merino_mobile.workspace import Fields, Workspace, parse_json, read_text

FAMILIES = ("llama", "qwen2", "opt", "gpt2")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "opt": "OPTForCausalLM", "gpt2": "GPT2LMHeadModel"}
CONFIG, INDEX, SINGLE, TOKENIZER = ("config.json", "model.safetensors.index.json",
                                    "model.safetensors", "tokenizer.json")
CHECKPOINT = "model.safetensors"
SCHEMA_VERSION = 1  # of the checkpoint's metadata
# activations of the OPT and GPT-2 configs, as the card's FFN kinds
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh"}
# tensors a folder may hold that are not weights: GPT-2's causal-mask buffers, old rotary tables
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


@dataclass(frozen=True)
class Imported:
    """What `import_folder` wrote."""

    card: Card
    card_path: Path
    checkpoint: Path
    tokenizer: Path | None
    family: str
    source: Path

    def to_json(self) -> dict[str, Any]:
        from merino_mobile.accounting import params

        return {"card": str(self.card_path), "checkpoint": str(self.checkpoint),
                "tokenizer": str(self.tokenizer) if self.tokenizer else None,
                "family": self.family, "name": self.card.name, "params": params(self.card),
                "source": str(self.source)}


# -- the config ----------------------------------------------------------------------------------

def read_config(folder: Path) -> tuple[str, Fields]:
    """The family and the fields of `folder/config.json`; refuses other families."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder of a Hugging Face model "
                        f"(config.json and *.safetensors)")
    path = folder / CONFIG
    f = Fields(parse_json(read_text(path, "model config", f"{folder} is not a Hugging Face "
                                    "model folder (save one with save_pretrained)"), path),
               str(path))
    family = f.get("model_type", str, expect="a string such as \"llama\"")
    if family not in FAMILIES:
        raise UserError(f"{path}: model_type {family!r} is not supported; import reads the "
                        f"{', '.join(FAMILIES)} families")
    architectures = f.data.get("architectures") or [ARCHITECTURES[family]]
    if architectures != [ARCHITECTURES[family]]:
        raise UserError(f"{path}: architectures {architectures} is not a causal language model "
                        f"of the {family} family ({ARCHITECTURES[family]})")
    return family, f


def _cannot(f: Fields, key: str, what: str) -> UserError:
    return UserError(f"{f.source}: {key} {what}; the card cannot express it")


def _rope_theta(f: Fields) -> float:
    """rope_theta as older configs write it (top level, with rope_scaling) or newer ones do
    (rope_parameters); scaled rope variants are refused."""
    params = f.data.get("rope_parameters") or {}
    scaling = f.data.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling or {})):
        if not isinstance(value, dict):
            raise UserError(f"{f.source}: {key} must be an object, got {f.show(value)}")
        kind = value.get("rope_type", value.get("type", "default"))
        if kind != "default":
            raise _cannot(f, key, f"asks for {kind!r} rope scaling")
    theta = params.get("rope_theta", f.data.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
        raise UserError(f"{f.source}: rope_theta must be a number above 0, got {f.show(theta)}")
    return float(theta)


def _llama_card(family: str, f: Fields, name: str) -> Card:
    width = f.get("hidden_size", int)
    heads = f.get("num_attention_heads", int)
    kv_heads = f.get("num_key_value_heads", int, None, nullable=True) or heads
    head_dim = f.get("head_dim", int, None, nullable=True) or width // max(heads, 1)
    if head_dim * heads != width:
        raise _cannot(f, "head_dim", f"{head_dim} x {heads} heads is not hidden_size {width}")
    act = f.get("hidden_act", str, "silu")
    if act != "silu":
        raise _cannot(f, "hidden_act", f"{act!r} gates the FFN (the card's gated FFN is SwiGLU)")
    if family == "qwen2":
        if f.get("use_sliding_window", bool, False):
            raise _cannot(f, "use_sliding_window", "is true (sliding-window attention)")
        qkv_bias, out_bias, mlp_bias = True, False, False
    else:
        qkv_bias = out_bias = f.get("attention_bias", bool, False)
        mlp_bias = f.get("mlp_bias", bool, False)
    layer_types = f.data.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise _cannot(f, "layer_types", "has layers other than full attention")
    hidden = f.get("intermediate_size", int)
    block = Block(width, hidden / width if width else 0.0, heads,
                  f.get("num_hidden_layers", int), ffn="swiglu",
                  kv_heads=kv_heads, hidden=hidden)
    return Card(name=name, vocab=f.get("vocab_size", int),
                context=f.get("max_position_embeddings", int), head_dim=head_dim,
                blocks=(block,), positions="rope", rope_theta=_rope_theta(f),
                tied_head=f.get("tie_word_embeddings", bool, False), norm="rmsnorm",
                norm_eps=f.get("rms_norm_eps", float, 1e-6), bias=mlp_bias,
                qkv_bias=None if qkv_bias == mlp_bias else qkv_bias,
                out_bias=None if out_bias == mlp_bias else out_bias)


def _opt_card(f: Fields, name: str) -> Card:
    if not f.get("do_layer_norm_before", bool, True):
        raise _cannot(f, "do_layer_norm_before", "is false (post-LN layers; OPT-350M is one)")
    if not f.get("layer_norm_elementwise_affine", bool, True):
        raise _cannot(f, "layer_norm_elementwise_affine", "is false (norms without weights)")
    width = f.get("hidden_size", int)
    heads = f.get("num_attention_heads", int)
    act = f.get("activation_function", str, "relu")
    if act not in ACTIVATIONS:
        raise _cannot(f, "activation_function", f"{act!r} is not one of {sorted(ACTIVATIONS)}")
    embed = f.get("word_embed_proj_dim", int, None, nullable=True) or width
    hidden = f.get("ffn_dim", int)
    block = Block(width, hidden / width if width else 0.0, heads,
                  f.get("num_hidden_layers", int), ffn=ACTIVATIONS[act], hidden=hidden)
    return Card(name=name, vocab=f.get("vocab_size", int),
                context=f.get("max_position_embeddings", int),
                head_dim=width // max(heads, 1), blocks=(block,), positions="learned",
                pos_offset=2, embed_width=None if embed == width else embed,
                tied_head=f.get("tie_word_embeddings", bool, True),
                final_norm=not f.get("_remove_final_layer_norm", bool, False),
                bias=f.get("enable_bias", bool, True))


def _gpt2_card(f: Fields, name: str) -> Card:
    if not f.get("scale_attn_weights", bool, True):
        raise _cannot(f, "scale_attn_weights", "is false (unscaled attention scores)")
    if f.get("scale_attn_by_inverse_layer_idx", bool, False):
        raise _cannot(f, "scale_attn_by_inverse_layer_idx", "is true (scores scaled per layer)")
    if f.get("add_cross_attention", bool, False):
        raise _cannot(f, "add_cross_attention", "is true (cross-attention layers)")
    width = f.get("n_embd", int)
    heads = f.get("n_head", int)
    act = f.get("activation_function", str, "gelu_new")
    if act not in ACTIVATIONS:
        raise _cannot(f, "activation_function", f"{act!r} is not one of {sorted(ACTIVATIONS)}")
    hidden = f.get("n_inner", int, None, nullable=True) or 4 * width
    block = Block(width, hidden / width if width else 0.0, heads, f.get("n_layer", int),
                  ffn=ACTIVATIONS[act], hidden=hidden)
    return Card(name=name, vocab=f.get("vocab_size", int),
                context=f.get("n_positions", int), head_dim=width // max(heads, 1),
                blocks=(block,), positions="learned",
                tied_head=f.get("tie_word_embeddings", bool, True),
                norm_eps=f.get("layer_norm_epsilon", float, 1e-5))


def card_from_config(family: str, f: Fields, name: str) -> Card:
    """The card of a config of one of FAMILIES (read by `read_config`)."""
    try:
        if family == "opt":
            return _opt_card(f, name)
        if family == "gpt2":
            return _gpt2_card(f, name)
        return _llama_card(family, f, name)
    except UserError as e:
        if str(e).startswith(f"{f.source}: "):
            raise
        raise UserError(f"{f.source}: {e}") from None


# -- the tensors ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where one tensor of the decoder comes from: a tensor of the folder, of `shape` there, and
    `take`, which turns it into the decoder's (a transpose, a slice of a fused q|k|v)."""

    name: str
    shape: tuple[int, ...]
    take: Callable[[Tensor], Tensor] = field(default=lambda t: t)


def _conv1d(name: str, rows: int, cols: int, part: int = 0, parts: int = 1) -> Source:
    """A GPT-2 Conv1D weight [cols, parts * rows] (input x output), or a bias [parts * rows]:
    part `part` of its outputs as a linear layer's [rows, cols] weight (or [rows] bias)."""
    lo, hi = part * rows, (part + 1) * rows
    if name.endswith(".bias"):
        return Source(name, (parts * rows,), lambda t: t[lo:hi])
    return Source(name, (cols, parts * rows), lambda t: t[:, lo:hi].T)


def sources(family: str, card: Card, prefix: str) -> dict[str, Source]:
    """The folder's tensor behind every tensor of the card's decoder, by the decoder's name."""
    b = card.blocks[0]
    e, f, kv, v = b.width, b.ffn_hidden, b.kv_width, card.vocab
    ew = card.embedding_width
    out: dict[str, Source] = {}

    def linear(ours: str, theirs: str, rows: int, cols: int, bias: bool) -> None:
        out[f"{ours}.weight"] = Source(f"{theirs}.weight", (rows, cols))
        if bias:
            out[f"{ours}.bias"] = Source(f"{theirs}.bias", (rows,))

    def norm(ours: str, theirs: str, width: int) -> None:
        out[f"{ours}.weight"] = Source(f"{theirs}.weight", (width,))
        if card.norm == "layernorm":
            out[f"{ours}.bias"] = Source(f"{theirs}.bias", (width,))

    if family in ("llama", "qwen2"):
        out["embed.weight"] = Source(f"{prefix}embed_tokens.weight", (v, e))
        for j in range(b.depth):
            ours, theirs = f"blocks.0.layers.{j}", f"{prefix}layers.{j}"
            norm(f"{ours}.ln1", f"{theirs}.input_layernorm", e)
            for k, rows in (("q", e), ("k", kv), ("v", kv)):
                linear(f"{ours}.attn.{k}", f"{theirs}.self_attn.{k}_proj", rows, e,
                       card.has_qkv_bias)
            linear(f"{ours}.attn.o", f"{theirs}.self_attn.o_proj", e, e, card.has_out_bias)
            norm(f"{ours}.ln2", f"{theirs}.post_attention_layernorm", e)
            for k, rows, cols in (("gate", f, e), ("up", f, e), ("down", e, f)):
                linear(f"{ours}.ffn.{k}", f"{theirs}.mlp.{k}_proj", rows, cols, card.bias)
        norm("norm", f"{prefix}norm", e)
    elif family == "opt":
        out["embed.weight"] = Source(f"{prefix}embed_tokens.weight", (v, ew))
        out["pos_embed.weight"] = Source(f"{prefix}embed_positions.weight",
                                         (card.context + card.pos_offset, e))
        if ew != e:
            out["proj_in.weight"] = Source(f"{prefix}project_in.weight", (e, ew))
            out["proj_out.weight"] = Source(f"{prefix}project_out.weight", (ew, e))
        for j in range(b.depth):
            ours, theirs = f"blocks.0.layers.{j}", f"{prefix}layers.{j}"
            norm(f"{ours}.ln1", f"{theirs}.self_attn_layer_norm", e)
            for k, hf in (("q", "q"), ("k", "k"), ("v", "v"), ("o", "out")):
                linear(f"{ours}.attn.{k}", f"{theirs}.self_attn.{hf}_proj", e, e, card.bias)
            norm(f"{ours}.ln2", f"{theirs}.final_layer_norm", e)
            linear(f"{ours}.ffn.up", f"{theirs}.fc1", f, e, card.bias)
            linear(f"{ours}.ffn.down", f"{theirs}.fc2", e, f, card.bias)
        if card.final_norm:
            norm("norm", f"{prefix}final_layer_norm", e)
    else:  # gpt2
        out["embed.weight"] = Source(f"{prefix}wte.weight", (v, e))
        out["pos_embed.weight"] = Source(f"{prefix}wpe.weight", (card.context, e))
        for j in range(b.depth):
            ours, theirs = f"blocks.0.layers.{j}", f"{prefix}h.{j}"
            norm(f"{ours}.ln1", f"{theirs}.ln_1", e)
            for p in ("weight", "bias"):  # q, k, v in turn from one fused tensor, read once
                for i, k in enumerate("qkv"):
                    out[f"{ours}.attn.{k}.{p}"] = _conv1d(f"{theirs}.attn.c_attn.{p}", e, e, i, 3)
            norm(f"{ours}.ln2", f"{theirs}.ln_2", e)
            for ours_k, theirs_k, rows, cols in (("attn.o", "attn.c_proj", e, e),
                                                 ("ffn.up", "mlp.c_fc", f, e),
                                                 ("ffn.down", "mlp.c_proj", e, f)):
                for p in ("weight", "bias"):
                    out[f"{ours}.{ours_k}.{p}"] = _conv1d(f"{theirs}.{theirs_k}.{p}", rows, cols)
        norm("norm", f"{prefix}ln_f", e)
    if not card.tied_head:
        out["head.weight"] = Source("lm_head.weight", (v, ew))
    return out


# prefixes of the base model's tensors: a ...ForCausalLM folder, or its base model's own
PREFIXES = {"llama": ("model.", ""), "qwen2": ("model.", ""),
            "opt": ("model.decoder.", "decoder."), "gpt2": ("transformer.", "")}
EMBEDDING = {"llama": "embed_tokens.weight", "qwen2": "embed_tokens.weight",
             "opt": "embed_tokens.weight", "gpt2": "wte.weight"}


class Weights:
    """The tensors of a folder's safetensors files (one file, or shards named by the index),
    read lazily: shapes from the headers, data only when a tensor is taken."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        index = folder / INDEX
        if index.is_file():
            f = Fields(parse_json(read_text(index, "weight index"), index), str(index))
            weight_map = f.data.get("weight_map")
            if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) for v in weight_map.values()):
                raise UserError(f"{index}: weight_map must be an object of tensor names to "
                                "shard file names")
            files = {name: folder / shard for name, shard in weight_map.items()}
        else:
            found = [folder / SINGLE] if (folder / SINGLE).is_file() else sorted(
                folder.glob("*.safetensors"))
            if not found:
                raise UserError(f"{folder} has no model.safetensors (nor shards with "
                                f"{INDEX}); save the model with save_pretrained("
                                "safe_serialization=True)")
            files = {}
            for path in found:
                for name in self._names(path):
                    files.setdefault(name, path)
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise UserError(f"{folder}: shard {path.name} named by {INDEX} is missing")
        self.folder, self.files = folder, files
        self._shapes: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _open(path: Path):
        from safetensors import SafetensorError, safe_open

        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as e:
            raise UserError(f"{path} is not a readable safetensors file: {e}") from None

    def _names(self, path: Path) -> list[str]:
        with self._open(path) as f:
            return list(f.keys())

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> Iterator[str]:
        return iter(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:  # read every shape of the file from its header at once
            with self._open(self.files[name]) as f:
                self._shapes |= {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}  # noqa: SIM118
            if name not in self._shapes:
                raise UserError(f"{self.files[name]} has no tensor {name!r}, which {INDEX} "
                                "places there")
        return self._shapes[name]

    def get(self, name: str) -> Tensor:
        with self._open(self.files[name]) as f:
            tensor = f.get_tensor(name)
        if not tensor.is_floating_point():
            raise UserError(f"{self.files[name]}: tensor {name!r} is {tensor.dtype}, not a "
                            "floating-point weight")
        return tensor


def convert(family: str, card: Card, weights: Weights) -> dict[str, Tensor]:
    """The decoder's state_dict (fp32) from the folder's tensors, every name and shape checked
    first (the first missing or misshapen tensor is named) and nothing left unused."""
    from merino_mobile.model import Decoder

    prefix = next((p for p in PREFIXES[family] if p + EMBEDDING[family] in weights),
                  PREFIXES[family][0])
    plan = sources(family, card, prefix)
    with torch.device("meta"):  # the names and shapes of the decoder, without its memory
        expected = {k: tuple(t.shape) for k, t in Decoder(card, cache_len=1).state_dict().items()}
    if set(plan) != set(expected):  # a bug in `sources`, not in the folder
        raise AssertionError(f"{family} sources and the decoder differ: "
                             f"{sorted(set(plan) ^ set(expected))[:5]}")
    for ours in expected:
        src = plan[ours]
        if src.name not in weights:
            raise UserError(f"{weights.folder}: tensor {src.name!r} is missing (shape "
                            f"{list(src.shape)} expected by config.json); the weights are not "
                            f"of this config")
        if weights.shape(src.name) != src.shape:
            raise UserError(f"{weights.folder}: tensor {src.name!r} has shape "
                            f"{list(weights.shape(src.name))}, config.json needs "
                            f"{list(src.shape)} ({weights.files[src.name].name})")
    used = {s.name for s in plan.values()}
    tied = "lm_head.weight" if card.tied_head else None
    extra = [n for n in weights.names() if n not in used and n != tied
             and not n.endswith(IGNORED_SUFFIXES)]
    if extra:
        raise UserError(f"{weights.folder}: tensors the {family} layout has no place for: "
                        f"{sorted(extra)[:5]}{' ...' if len(extra) > 5 else ''}; it is not a "
                        f"plain {ARCHITECTURES[family]}")
    state, cache = {}, {}
    for ours, src in plan.items():
        if src.name not in cache:
            cache = {src.name: weights.get(src.name)}  # a fused q|k|v is read once for 3
        state[ours] = src.take(cache[src.name]).to(torch.float32).contiguous()
        assert tuple(state[ours].shape) == expected[ours], ours
    return state


# -- the import ----------------------------------------------------------------------------------

def default_name(folder: Path) -> str:
    """The card name of a folder: its own name, lowercased (SmolLM2-135M -> smollm2-135m)."""
    return Path(folder).resolve().name.lower()


def import_folder(folder: str | Path, ws: Workspace, name: str | None = None,
                  force: bool = False) -> Imported:
    """Read a Hugging Face folder and write its card (models/NAME.json), its checkpoint and its
    tokenizer (build/NAME/import/); everything is checked before anything is written, and an
    existing card or checkpoint is replaced only with `force`."""
    from merino_mobile.design import check_name
    from merino_mobile.tokenizer import Tokenizer

    folder = Path(folder).expanduser()
    family, config = read_config(folder)
    name = check_name(name if name is not None else default_name(folder))
    card_path = ws.models / f"{name}.json"
    out = ws.root / "build" / name / "import"
    checkpoint = out / CHECKPOINT
    for path in (card_path, checkpoint):
        if path.exists() and not force:
            raise UserError(f"{path} exists; choose another --name or pass --force to replace it")
    card = card_from_config(family, config, name)
    tokenizer_src = folder / TOKENIZER
    if tokenizer_src.is_file():
        Tokenizer(tokenizer_src).check_fits(card.vocab)
    state = convert(family, card, Weights(folder))

    tokenizer = out / TOKENIZER if tokenizer_src.is_file() else None
    card = replace(card, meta={
        "source": f"imported from {folder.resolve()} ({ARCHITECTURES[family]})",
        "family": family, "checkpoint": str(checkpoint),
        "tokenizer": str(tokenizer) if tokenizer else None})
    _save_checkpoint(state, checkpoint, {"schema_version": str(SCHEMA_VERSION),
                                         "card": json.dumps(card.to_json()),
                                         "source": str(folder.resolve()), "family": family})
    if tokenizer is not None:
        atomic_write_text(tokenizer, tokenizer_src.read_text(encoding="utf-8"))
    elif (out / TOKENIZER).exists():
        (out / TOKENIZER).unlink()  # a forced import of a folder without one: no stale tokenizer
    save_card(card, card_path, force=True)  # last: a card in models/ means the import finished
    return Imported(card, card_path, checkpoint, tokenizer, family, folder.resolve())


def _save_checkpoint(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

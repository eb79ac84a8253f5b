"""The torch decoder of an architecture card: adaptive blocks, weight sharing, static KV cache.

Data flows top to bottom in the order of this file:

    tokens -> token embedding (embed_width) -> projection in -> + learned positions
           -> block 0: depth x DecoderLayer (one shared layer run depth times, or depth layers)
           -> projection -> block 1 ... -> final norm -> projection out -> head -> logits

Every layer is pre-norm (x + attn(norm(x)), x + ffn(norm(x))), the norm a LayerNorm or an RMSNorm;
attention has as many K/V heads as the block's `kv_heads` (grouped-query attention: each K/V head
serves heads / kv_heads query heads); the FFN is GELU, ReLU or gated (SwiGLU); rotary positions
(RoPE) turn q and k instead of adding a learned table. The parameter layout follows the card's
accounting exactly (`merino_mobile.accounting`), so `sum(p.numel())` equals `accounting.params`.

The KV cache is static: one pair of [kv_heads, cache_len, head_dim] fp32 buffers per *executed*
layer (a shared block reuses its weights, but each of its depth positions sees different inputs
and so keeps its own cache). `forward(tokens, start)` writes the keys and values of positions
start..start+T-1 and attends causally over the whole buffer with a mask, so one function with a
dynamic T serves both prefill (T = prompt length) and decode (T = 1) and exports as such: the
caches become ExecuTorch mutable buffers.

`use_llm_ops(model)` switches a model (a copy: the ExecuTorch exporter's) to ExecuTorch's own LLM
kernels: the cache becomes [1, cache_len, kv_heads, head_dim] and is written by `update_cache`,
and `custom_sdpa` attends positions 0..start+T-1 only, so a decode step costs what its position
needs, not what the whole cache costs. Same weights, same results (tests/test_model.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from merino_mobile.card import DEFAULT_NORM_EPS, DEFAULT_ROPE_THETA, GATED, Block, Card
from merino_mobile.errors import UserError

ROPE_BASE = DEFAULT_ROPE_THETA


class KVCache(nn.Module):
    """Keys and values of one executed layer. Non-persistent: never part of a checkpoint."""

    def __init__(self, heads: int, cache_len: int, head_dim: int) -> None:
        super().__init__()
        shape = (heads, cache_len, head_dim)  # batch 1: the decoder serves one sequence
        self.register_buffer("k", torch.zeros(shape), persistent=False)
        self.register_buffer("v", torch.zeros(shape), persistent=False)
        self.cache_len = cache_len
        self.llm_ops = False  # see `use_llm_ops`

    def use_llm_ops(self) -> None:
        """Become an empty cache in the layout of ExecuTorch's LLM ops, [1, cache_len, heads,
        head_dim] (what was cached is dropped: call before the first token)."""
        heads, length, dim = self.k.shape
        self.register_buffer("k", torch.zeros(1, length, heads, dim), persistent=False)
        self.register_buffer("v", torch.zeros(1, length, heads, dim), persistent=False)
        self.llm_ops = True

    def update(self, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [heads, T, head_dim] at positions `pos` [T]; return the whole cache."""
        # index_put_ with a position tensor (not a slice) keeps T dynamic under torch.export;
        # ExecuTorch's own static cache writes the same way.
        self.k[:, pos] = k
        self.v[:, pos] = v
        return self.k, self.v


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding (GPT-NeoX half-split layout) of x [..., T, head_dim]; cos, sin [T, dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters, same result) written in ops that XNNPACK runs.

    ExecuTorch's XNNPACK backend has no layer norm: the fused op would run as a portable kernel
    between two delegate partitions, three times a layer. Its mean runs only over the two inner
    dimensions of a 4-D tensor, hence the [1, rows, width, 1] view.
    """

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.view(1, -1, x.shape[-1], 1)  # [1, rows, width, 1]
        centered = x4 - x4.mean(dim=(2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).view(x.shape)
        return y * self.weight + self.bias


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Llama's norm: no centering, no bias), in the same XNNPACK-friendly
    ops as LayerNorm above."""

    def __init__(self, width: int, eps: float = DEFAULT_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.view(1, -1, x.shape[-1], 1)  # [1, rows, width, 1]
        y = (x4 * torch.rsqrt((x4 * x4).mean(dim=(2, 3), keepdim=True) + self.eps)).view(x.shape)
        return y * self.weight


def make_norm(kind: str, width: int, eps: float = DEFAULT_NORM_EPS) -> nn.Module:
    return RMSNorm(width, eps) if kind == "rmsnorm" else LayerNorm(width, eps=eps)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool, *, kv_heads: int | None = None,
                 out_bias: bool | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.kv_heads = kv_heads or heads
        kv_width = self.kv_heads * self.head_dim
        # three matmuls, not one fused q|k|v: XNNPACK cannot slice a tensor with a dynamic
        # length, and the slices of a fused output would run outside it
        self.q = nn.Linear(width, width, bias=bias)
        self.k = nn.Linear(width, kv_width, bias=bias)
        self.v = nn.Linear(width, kv_width, bias=bias)
        self.o = nn.Linear(width, width, bias=bias if out_bias is None else out_bias)

    def forward(self, x: Tensor, cache: KVCache, pos: Tensor, mask: Tensor | None,
                rope: tuple[Tensor, Tensor] | None) -> Tensor:
        if cache.llm_ops:
            return self.attend_to_position(x, cache, pos, rope)
        t = x.shape[1]  # x [1, T, width]: batch 1, like the cache
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        q = self.q(x).view(t, h, d).transpose(0, 1)  # [heads, T, head_dim]
        k, v = (proj(x).view(t, kv, d).transpose(0, 1)
                for proj in (self.k, self.v))  # each [kv_heads, T, head_dim]
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        keys, values = cache.update(pos, k, v)  # [kv_heads, cache_len, head_dim]
        group = h // kv
        if group > 1:
            # query heads g*j .. g*j+g-1 share K/V head j (transformers' order): they become
            # the rows of one product with that head, so the cache is never copied g times
            q, mask = q.contiguous().view(kv, group * t, d), mask.repeat(group, 1)
        # The whole static cache is attended; the additive mask (-inf) hides future and
        # never-written slots. Written out rather than F.scaled_dot_product_attention, whose
        # decomposition adds fully-masked-row guards that split the XNNPACK partitions; as 3-D
        # bmm, since a 4-D matmul adds an expand (a copy of the cache) outside XNNPACK; and with
        # views, not reshapes, which the exporter can keep inside XNNPACK at a dynamic T.
        scores = torch.bmm(q, keys.transpose(1, 2)) * (d ** -0.5) + mask
        y = torch.bmm(scores.softmax(dim=-1), values)  # [kv_heads, group * T, head_dim]
        # to [T, heads, head_dim]; split the rows back into (group, T) rather than merging
        # (kv_heads, group): torch.export cannot prove that merge is a view at a dynamic T
        y = y.view(kv, group, t, d).permute(2, 0, 1, 3) if group > 1 else y.transpose(0, 1)
        return self.o(y.contiguous().view(1, t, h * d))

    def attend_to_position(self, x: Tensor, cache: KVCache, pos: Tensor,
                           rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """The same attention through ExecuTorch's LLM ops (`use_llm_ops`): positions
        pos[0]..pos[0]+T-1 are written, and each query attends the slots up to its own."""
        t = x.shape[1]
        h, kv, d = self.heads, self.kv_heads, self.head_dim
        q = self.q(x).view(1, t, h, d)  # the ops' layout: [batch, T, heads, head_dim]
        k, v = (proj(x).view(1, t, kv, d) for proj in (self.k, self.v))
        if rope is not None:
            cos, sin = (r[:, None, :] for r in rope)  # [T, 1, head_dim]: every head alike
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        start = pos[0].item()
        # what the exporter must know of the data-dependent start (ExecuTorch's llama does so)
        torch._check_is_size(start)
        torch._check(start + t <= cache.cache_len)
        torch.ops.llama.update_cache(k, cache.k, start)
        torch.ops.llama.update_cache(v, cache.v, start)
        # causal from `start`: query i sees slots 0..start+i; a GQA cache is read as it is
        y = torch.ops.llama.custom_sdpa(q, cache.k, cache.v, start, None, 0.0, True)
        return self.o(y.view(1, t, h * d))


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
               "relu": F.relu, "swiglu": F.silu}


class FFN(nn.Module):
    """down(act(up x)); gated (SwiGLU): down(silu(gate x) * up x)."""

    def __init__(self, width: int, hidden: int, bias: bool, kind: str = "gelu") -> None:
        super().__init__()
        self.kind = kind
        self.gate = nn.Linear(width, hidden, bias=bias) if kind in GATED else None
        self.up = nn.Linear(width, hidden, bias=bias)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        act = ACTIVATIONS[self.kind]
        if self.gate is not None:
            return self.down(act(self.gate(x)) * self.up(x))
        return self.down(act(self.up(x)))


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer: x + attention(ln1(x)), then x + ffn(ln2(x)).

    The positional arguments make a version 1 layer (LayerNorm, MHA, GELU, every bias or none);
    the keywords give the rest of a card's layer (`DecoderLayer.of(card, block)`).
    """

    def __init__(self, width: int, ffn_hidden: int, heads: int, bias: bool = True, *,
                 kv_heads: int | None = None, ffn: str = "gelu", norm: str = "layernorm",
                 eps: float = DEFAULT_NORM_EPS, qkv_bias: bool | None = None,
                 out_bias: bool | None = None) -> None:
        super().__init__()
        self.ln1 = make_norm(norm, width, eps)
        self.attn = Attention(width, heads, bias if qkv_bias is None else qkv_bias,
                              kv_heads=kv_heads, out_bias=bias if out_bias is None else out_bias)
        self.ln2 = make_norm(norm, width, eps)
        self.ffn = FFN(width, ffn_hidden, bias, ffn)

    @classmethod
    def of(cls, card: Card, block: Block) -> DecoderLayer:
        return cls(block.width, block.ffn_hidden, block.heads, card.bias,
                   kv_heads=block.n_kv_heads, ffn=block.ffn, norm=card.norm, eps=card.norm_eps,
                   qkv_bias=card.has_qkv_bias, out_bias=card.has_out_bias)

    def forward(self, x: Tensor, cache: KVCache, pos: Tensor, mask: Tensor | None,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), cache, pos, mask, rope)
        return x + self.ffn(self.ln2(x))


class AdaptiveBlock(nn.Module):
    """`depth` layers of one width; with `shared`, one layer's weights run `depth` times."""

    def __init__(self, card: Card, block: Block) -> None:
        super().__init__()
        copies = 1 if block.shared else block.depth
        self.layers = nn.ModuleList(DecoderLayer.of(card, block) for _ in range(copies))
        self.depth = block.depth

    def schedule(self) -> list[DecoderLayer]:
        """The layer run at each depth position (the same module repeated when shared)."""
        return [self.layers[i % len(self.layers)] for i in range(self.depth)]


def rope_tables(length: int, head_dim: int, theta: float = ROPE_BASE) -> tuple[Tensor, Tensor]:
    """cos and sin [length, head_dim] of the rotary angles of positions 0..length-1."""
    inv = theta ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(length).float(), inv).repeat(1, 2)
    return angles.cos(), angles.sin()


def projection(width_in: int, width_out: int) -> nn.Module:
    return nn.Identity() if width_in == width_out else nn.Linear(width_in, width_out, bias=False)


class Decoder(nn.Module):
    """A decoder-only transformer built from a card, with a static KV cache of `cache_len`."""

    def __init__(self, card: Card, cache_len: int | None = None) -> None:
        super().__init__()
        self.card = card
        self.cache_len = cache_len or card.context
        if not 1 <= self.cache_len <= card.context:
            raise UserError(f"cache_len {self.cache_len} must be between 1 and the card's "
                            f"context {card.context}")
        e, first, last = card.embedding_width, card.blocks[0].width, card.blocks[-1].width
        self.embed = nn.Embedding(card.vocab, e)
        self.proj_in = projection(e, first)
        if card.positions == "learned":
            self.pos_embed = nn.Embedding(card.context + card.pos_offset, first)
        elif card.head_dim % 2:
            raise UserError(f"rope positions need an even head_dim, got {card.head_dim}")
        else:
            cos, sin = rope_tables(self.cache_len, card.head_dim, card.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(AdaptiveBlock(card, b) for b in card.blocks)
        self.joins = nn.ModuleList(projection(a.width, b.width)
                                   for a, b in zip(card.blocks, card.blocks[1:], strict=False))
        self.norm = make_norm(card.norm, last, card.norm_eps) if card.final_norm else nn.Identity()
        self.proj_out = projection(last, e)
        self.head = None if card.tied_head else nn.Linear(e, card.vocab, bias=False)
        self.caches = nn.ModuleList(KVCache(b.n_kv_heads, self.cache_len, card.head_dim)
                                    for b in card.blocks for _ in range(b.depth))

    def forward(self, tokens: Tensor, start: Tensor) -> Tensor:
        """Logits [1, vocab] of the last of `tokens` [1, T], placed at positions start..start+T-1.

        Writes their keys and values into the cache; start + T must not exceed cache_len.
        """
        t = tokens.shape[1]
        pos = start + torch.arange(t, dtype=torch.long)  # [T]
        mask = None  # the LLM ops mask by position themselves
        if not self.caches[0].llm_ops:
            # query i (at pos[i]) sees cache slot j when j <= pos[i]: additive mask [T, cache_len]
            slots = torch.arange(self.cache_len, dtype=torch.long)[None, :]
            mask = torch.zeros(slots.shape).masked_fill(slots > pos[:, None], float("-inf"))
        x = self.proj_in(self.embed(tokens))
        rope = None
        if self.card.positions == "learned":
            # offset folded into the arange: a tensor + int add breaks int8 (pt2e) preparation
            off = self.card.pos_offset
            x = x + self.pos_embed(start + torch.arange(off, off + t, dtype=torch.long))
        else:
            rope = (self.rope_cos[pos], self.rope_sin[pos])
        caches = iter(self.caches)
        for i, block in enumerate(self.blocks):
            if i:
                x = self.joins[i - 1](x)
            for layer in block.schedule():
                x = layer(x, next(caches), pos, mask, rope)
        x = self.proj_out(self.norm(x[:, -1, :]))
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    def forward_train(self, tokens: Tensor) -> Tensor:
        """Logits [B, T, vocab] at every position of `tokens` [B, T] (T <= cache_len), for training.

        Same layers and weights as `forward`, but causal attention over the batch itself instead of
        the KV cache, which it neither reads nor writes.
        """
        t = tokens.shape[1]
        x = self.proj_in(self.embed(tokens))
        rope = None
        if self.card.positions == "learned":
            off = self.card.pos_offset
            x = x + self.pos_embed(torch.arange(off, off + t, dtype=torch.long))
        else:
            rope = (self.rope_cos[:t], self.rope_sin[:t])
        for i, block in enumerate(self.blocks):
            if i:
                x = self.joins[i - 1](x)
            for layer in block.schedule():
                x = x + causal_attention(layer.attn, layer.ln1(x), rope)
                x = x + layer.ffn(layer.ln2(x))
        x = self.proj_out(self.norm(x))
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    def reset_cache(self) -> None:
        """Forget every cached key and value (a new conversation)."""
        for cache in self.caches:
            cache.k.zero_()
            cache.v.zero_()


def use_llm_ops(module: nn.Module) -> nn.Module:
    """Switch every attention in `module` (a decoder or a profiler's micro-model) to ExecuTorch's
    LLM kernels, `update_cache` and `custom_sdpa` (module docstring); returns `module`. Its caches
    start empty. Registers the ops with torch first (a program using them loads only after the
    same import: `merino_mobile.export.executorch.load_llm_kernels`)."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

    for m in module.modules():
        if isinstance(m, KVCache):
            m.use_llm_ops()
    return module


def causal_attention(attn: Attention, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """`attn` over x [B, T, width] with a causal mask and no cache (the training path)."""
    b, t, e = x.shape
    q = attn.q(x).view(b, t, attn.heads, attn.head_dim).transpose(1, 2)
    k, v = (proj(x).view(b, t, attn.kv_heads, attn.head_dim).transpose(1, 2)
            for proj in (attn.k, attn.v))
    if rope is not None:
        q, k = rotate(q, *rope), rotate(k, *rope)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                       enable_gqa=attn.kv_heads != attn.heads)
    return attn.o(y.transpose(1, 2).reshape(b, t, e))


def init_weights(model: Decoder, seed: int = 0, scaled_projections: bool = False) -> None:
    """GPT-2 style random init (normal 0.02, zero biases, unit norms), reproducible by seed.

    With `scaled_projections` (what `train` starts from), the projections where the width
    changes (into the first block, between blocks, out to the embedding width) are drawn at std
    1/sqrt(width in) instead, which carries the residual stream across at its own scale: at 0.02
    a 128-to-192 projection shrinks it about 4x, and width-changing designs trained far worse
    than single-width ones for it (docs/experiments.md, "Which objective picks architectures
    that train best?"). They are drawn after everything else, so a model without projections
    gets the same weights either way. Random-weight models for speed (export, bench, profile)
    keep 0.02 everywhere: their export checks against fp32 are set on it (an int4 program whose
    projections carry the whole stream misses the 0.95 cosine bound on random weights).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():  # modules() visits a shared layer once
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.02)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for m in (model.proj_in, *model.joins, model.proj_out) if scaled_projections else ():
            if isinstance(m, nn.Linear):
                fan_in = m.weight.shape[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in ** 0.5)


def load_checkpoint(model: Decoder, path: Path) -> None:
    """Load a safetensors file whose names and shapes match the module's state_dict exactly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"no checkpoint at {path}") from None
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in tensors:
            raise UserError(f"checkpoint {path} has no tensor {name!r} (expected shape "
                            f"{list(tensor.shape)}); it was not saved from this card")
        if tensors[name].shape != tensor.shape:
            raise UserError(f"checkpoint {path} does not match card {model.card.name!r}: tensor "
                            f"{name!r} expected shape {list(tensor.shape)}, found "
                            f"{list(tensors[name].shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise UserError(f"checkpoint {path} has tensors the card does not: {extra[:5]}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()})


def build_decoder(card: Card, *, cache_len: int | None = None, seed: int = 0,
                  checkpoint: Path | None = None, for_training: bool = False) -> Decoder:
    """The decoder of `card` in eval mode: random weights from `seed` (`for_training`: with the
    projections scaled, see `init_weights`), or a safetensors file."""
    model = Decoder(card, cache_len)
    if checkpoint is None:
        init_weights(model, seed, scaled_projections=for_training)
    else:
        load_checkpoint(model, Path(checkpoint))
    return model.eval()


@torch.no_grad()
def generate(model: Decoder, prompt: list[int], max_new_tokens: int, *, top_k: int | None = None,
             seed: int = 0) -> list[int]:
    """Prefill `prompt`, then decode `max_new_tokens` ids one at a time (greedy unless top_k)."""
    if not prompt:
        raise UserError("the prompt is empty; give at least one token")
    if len(prompt) + max_new_tokens > model.cache_len:
        raise UserError(f"prompt ({len(prompt)}) + new tokens ({max_new_tokens}) exceed the KV "
                        f"cache of {model.cache_len} positions; shorten them or raise cache_len")
    bad = [t for t in prompt if not 0 <= t < model.card.vocab]
    if bad:
        raise UserError(f"token ids {bad[:5]} are outside the vocabulary of {model.card.vocab}")
    gen = torch.Generator().manual_seed(seed)
    model.reset_cache()
    logits = model(torch.tensor([prompt]), torch.tensor([0]))
    out: list[int] = []
    for step in range(max_new_tokens):
        out.append(pick(logits[0], top_k, gen))
        if step + 1 < max_new_tokens:
            logits = model(torch.tensor([[out[-1]]]), torch.tensor([len(prompt) + step]))
    return out


def pick(logits: Tensor, top_k: int | None, gen: torch.Generator) -> int:
    """Greedy argmax, or a sample from the softmax over the top_k logits."""
    if top_k is None:
        return int(logits.argmax())
    values, ids = logits.topk(min(top_k, logits.numel()))
    probs = F.softmax(values, dim=-1)
    return int(ids[torch.multinomial(probs, 1, generator=gen)])


"""CPU training of a card's decoder: AdamW, warmup + cosine schedule, gradient clipping, resume.

One step reads `batch` random windows of `seq + 1` tokens from the training split; the window
starts come from a generator seeded by (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have. Validation is the mean next-token cross-entropy (nats) over
consecutive, non-overlapping windows at the start of the held-out split, and its perplexity.

A run's folder holds two safetensors files, written every `checkpoint_every` steps and at the end:

- ``model.safetensors``: exactly the Decoder's state_dict (no KV cache, it is not a weight), so
  ``build_decoder(card, checkpoint=...)`` and ``merino-mobile export --checkpoint`` load it; its
  metadata records the step, the card, the config and the corpus.
- ``optimizer.safetensors``: AdamW's moments, with the same step in its metadata.

Running again with the same folder resumes from the last checkpoint; a checkpoint of another
architecture, or of another --seq/--batch, is refused.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from merino_mobile.card import Card
from merino_mobile.corpus import TokenSplit
from merino_mobile.errors import UserError
from merino_mobile.model import Decoder, build_decoder

SCHEMA_VERSION = 1
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"

Progress = Callable[[int, int, float, float], None]  # step, steps, loss, tokens per second


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train. `tokens` is the training budget: steps = tokens // (batch*seq)."""

    tokens: int = 1_000_000
    seq: int = 256
    batch: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    clip: float = 1.0
    eval_tokens: int = 32_768
    checkpoint_every: int = 200
    seed: int = 0

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch * self.seq))

    @property
    def warmup(self) -> int:
        return max(1, round(self.steps * self.warmup_fraction))

    def lr_at(self, step: int) -> float:
        """Linear warmup to `lr`, then a cosine down to `lr * min_lr_ratio` at the last step."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        low = self.lr * self.min_lr_ratio
        return low + 0.5 * (self.lr - low) * (1 + math.cos(math.pi * progress))

    def check(self) -> None:
        for name in ("tokens", "seq", "batch", "eval_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, "
                                f"got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"the learning rate must be positive, got {self.lr}")


@dataclass
class TrainResult:
    """What a training run did and how good the model is on the held-out split."""

    card: str
    corpus: dict[str, Any]
    config: dict[str, Any]
    steps: int
    start_step: int  # > 0 when resumed from a checkpoint
    tokens_trained: int
    train_loss: float | None  # mean over the last steps of this run (None if nothing to train)
    val_loss: float
    val_ppl: float
    seconds: float
    tokens_per_s: float
    checkpoint: str | None
    params: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) samples

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **asdict(self)}


def architecture(card: Card) -> dict[str, Any]:
    """The parts of a card that decide the weights' names and shapes (not its name or meta)."""
    d = card.to_json()
    return {k: v for k, v in d.items() if k not in ("name", "meta", "schema_version")}


def check_data(data: TokenSplit, config: TrainConfig) -> None:
    need = config.batch * config.seq + 1
    if data.train.numel() < need:
        raise UserError(f"corpus {data.source} has {data.train.numel()} training tokens, fewer "
                        f"than one batch ({config.batch} x {config.seq} + 1 = {need}); give "
                        "more text or a smaller --batch/--seq")
    if data.val.numel() < config.seq + 1:
        raise UserError(f"corpus {data.source} has {data.val.numel()} validation tokens, fewer "
                        f"than one window of --seq {config.seq} + 1; give more text or a "
                        "smaller --seq")


def get_batch(tokens: Tensor, config: TrainConfig, step: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets [batch, seq] of one step; depends only on (seed, step)."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    starts = torch.randint(0, tokens.numel() - config.seq, (config.batch,), generator=gen)
    idx = starts[:, None] + torch.arange(config.seq + 1)
    window = tokens[idx]
    return window[:, :-1], window[:, 1:]


def loss_of(model: Decoder, x: Tensor, y: Tensor) -> Tensor:
    logits = model.forward_train(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: Decoder, tokens: Tensor, seq: int, max_tokens: int, batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over non-overlapping windows of the first tokens."""
    n = min(max(1, max_tokens // seq), (tokens.numel() - 1) // seq)
    starts = torch.arange(n) * seq
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, n, batch):
        idx = starts[i:i + batch, None] + torch.arange(seq + 1)
        window = tokens[idx].to(next(model.parameters()).device)
        total += float(loss_of(model, window[:, :-1], window[:, 1:])) * window[:, 1:].numel()
        count += window[:, 1:].numel()
    model.train(was_training)
    return total / count


def make_optimizer(model: Decoder, config: TrainConfig) -> torch.optim.AdamW:
    # no weight decay on biases, norms (1-D); embeddings and matrices decay, as in nanoGPT
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=config.lr, betas=(0.9, 0.95))


# -- checkpoints -------------------------------------------------------------------------------

def _atomic_save(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata)
    os.replace(tmp, path)


def save_checkpoint(out: Path, model: Decoder, opt: torch.optim.AdamW, step: int,
                    config: TrainConfig, corpus: str) -> Path:
    """Write the optimizer, then the weights (whose metadata names the step) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    state = opt.state_dict()
    moments = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]}
              for g in state["param_groups"]]
    _atomic_save(moments, out / OPTIMIZER, {"step": str(step), "param_groups": json.dumps(groups)})
    meta = {"schema_version": str(SCHEMA_VERSION), "step": str(step),
            "card": json.dumps(model.card.to_json()), "config": json.dumps(asdict(config)),
            "corpus": corpus}
    _atomic_save(model.state_dict(), out / WEIGHTS, meta)
    return out / WEIGHTS


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}; delete it to start "
                        "over") from None


def resume(out: Path, model: Decoder, opt: torch.optim.AdamW, config: TrainConfig) -> int:
    """Load the last checkpoint in `out` into model and optimizer; the step to continue from."""
    from safetensors.torch import load_file

    from merino_mobile.model import load_checkpoint

    weights = out / WEIGHTS
    if not weights.exists():
        return 0
    meta = read_metadata(weights)
    if "card" not in meta or "step" not in meta:
        raise UserError(f"{weights} was not written by `merino-mobile train` (no step/card "
                        "metadata); use another --out")
    saved = Card.from_json(json.loads(meta["card"]), source=str(weights))
    if architecture(saved) != architecture(model.card):
        raise UserError(f"the checkpoint in {out} is of card {saved.name!r}, whose architecture "
                        f"differs from card {model.card.name!r}; use another --out, or delete "
                        f"{out} to start over")
    old = json.loads(meta.get("config", "{}"))
    for key in ("seq", "batch", "seed"):
        if key in old and old[key] != getattr(config, key):
            raise UserError(f"the checkpoint in {out} was trained with --{key} {old[key]}, not "
                            f"{getattr(config, key)}; resume with the same value or use "
                            "another --out")
    step = int(meta["step"])
    load_checkpoint(model, weights)
    opt_path = out / OPTIMIZER
    if not opt_path.exists() or read_metadata(opt_path).get("step") != str(step):
        raise UserError(f"{opt_path} is missing or from another step than {weights}; delete "
                        f"{out} to start over")
    moments = load_file(str(opt_path))
    groups = json.loads(read_metadata(opt_path)["param_groups"])
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in moments.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = tensor
    opt.load_state_dict({"state": state, "param_groups": groups})
    return step


# -- the loop ----------------------------------------------------------------------------------

def train_device(name: str) -> torch.device:
    """The torch device `name` ("cpu", "cuda", "cuda:1"), refused with the fix when this torch
    cannot use it (pip's CPU build has no CUDA)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown training device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"training device {name!r}: this torch ({torch.__version__}) has no usable "
                        "CUDA; on a GPU machine install a CUDA build of torch, or use cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unknown training device {name!r}; use cpu or cuda")
    return device


def train(card: Card, data: TokenSplit, config: TrainConfig = TrainConfig(),
          out: Path | None = None, progress: Progress | None = None,
          device: str = "cpu") -> TrainResult:
    """Train `card` on `data` for `config.steps` steps, resuming from `out` if it has a checkpoint.

    Without `out` nothing is written. Returns the validation loss of the final weights. `device`
    is where the model trains ("cpu" or "cuda"); checkpoints are written from it alike.
    """
    config.check()
    where = train_device(device)
    if config.seq > card.context:
        raise UserError(f"--seq {config.seq} exceeds the context of card {card.name!r} "
                        f"({card.context}); use --seq {card.context} or less")
    vmax = int(max(data.train.max(), data.val.max())) if data.train.numel() else 0
    if vmax >= card.vocab:
        raise UserError(f"the corpus has token id {vmax} but card {card.name!r} has a vocabulary "
                        f"of {card.vocab}; use a tokenizer of {card.vocab} ids")
    check_data(data, config)
    torch.manual_seed(config.seed)
    model = build_decoder(card, cache_len=config.seq, seed=config.seed,
                          for_training=True).train().to(where)
    opt = make_optimizer(model, config)
    start = resume(out, model, opt, config) if out is not None else 0
    steps, tokens_per_step = config.steps, config.batch * config.seq
    history: list[tuple[int, float]] = []
    recent: list[float] = []
    t0 = time.perf_counter()
    checkpoint = str(out / WEIGHTS) if out is not None and start else None
    sample_every = max(1, steps // 100)
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = config.lr_at(step)
        x, y = get_batch(data.train, config, step)
        loss = loss_of(model, x.to(where), y.to(where))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        value = loss.detach().item()
        if not math.isfinite(value):
            raise UserError(f"training diverged at step {step} (loss {value}); lower the learning "
                            "rate")
        recent = (recent + [value])[-20:]
        if step % sample_every == 0 or step == steps - 1:
            history.append((step, value))
        done = step + 1
        if out is not None and (done % config.checkpoint_every == 0 or done == steps):
            checkpoint = str(save_checkpoint(out, model, opt, done, config, data.source))
        if progress is not None:
            rate = (done - start) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            progress(done, steps, sum(recent) / len(recent), rate)
    seconds = time.perf_counter() - t0
    val = evaluate(model, data.val, config.seq, config.eval_tokens)
    trained = (steps - start) * tokens_per_step if steps > start else 0
    return TrainResult(
        card=card.name, corpus=data.to_json(), config=asdict(config), steps=steps,
        start_step=start, tokens_trained=trained,
        train_loss=sum(recent) / len(recent) if recent else None, val_loss=val,
        val_ppl=math.exp(min(val, 50.0)), seconds=seconds,
        tokens_per_s=trained / seconds if seconds > 0 and trained else 0.0,
        checkpoint=checkpoint, params=sum(p.numel() for p in model.parameters()),
        history=history)

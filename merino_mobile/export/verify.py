"""Proof that an artifact computes what the eager model computes, shared by every format.

The eager fp32 model prefills a fixed prompt and decodes greedily (`reference_run`). The artifact
is then fed the *same* tokens (the eager model's choices), so its logits can be compared row by
row at every step even when a quantized artifact would have chosen differently (`run_steps`).
`compare` reports:
- max_rel_err: max |got - ref| over all logits, divided by max |ref| (elementwise relative error
  is meaningless for logits near zero);
- cosine_min / cosine_mean: cosine similarity of each step's logit vector;
- greedy_agreement: share of steps whose argmax token agrees.
fp32 passes within 1e-4 relative; fp16 within 1e-2; int8 and int4 by logit cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from merino_mobile.model import Decoder

# token ids below 256, so the prompt is valid for every vocabulary (bytes of a sentence)
PROMPT: list[int] = list(b"The quick brown fox jumps over")
STEPS = 32

THRESHOLDS = {
    "fp32": ("max_rel_err", 1e-4),
    "fp16": ("max_rel_err", 1e-2),
    "int8": ("cosine_min", 0.99),
    "int4": ("cosine_min", 0.95),
}

StepFn = Callable[[Tensor, Tensor], Tensor]


def fit_prompt(model: Decoder, prompt: list[int] = PROMPT,
               steps: int = STEPS) -> tuple[list[int], int]:
    """The prompt and step count, shortened so that both fit the model's KV cache and vocab."""
    prompt = [t % model.card.vocab for t in prompt][: max(1, model.cache_len // 2)]
    return prompt, min(steps, model.cache_len - len(prompt))


@torch.no_grad()
def reference_run(model: Decoder, prompt: list[int], steps: int = STEPS) -> dict:
    """Eager logits [steps + 1, vocab] of the prefill and `steps` greedy decode steps.

    Returns {"logits": Tensor, "tokens": the `steps` greedy tokens fed after the prompt}.
    """
    model.reset_cache()
    rows = [model(torch.tensor([prompt]), torch.tensor([0]))[0]]
    tokens = []
    for i in range(steps):
        tokens.append(int(rows[-1].argmax()))
        rows.append(model(torch.tensor([[tokens[-1]]]), torch.tensor([len(prompt) + i]))[0])
    model.reset_cache()
    return {"logits": torch.stack(rows), "tokens": tokens}


def run_steps(step: StepFn, prompt: list[int], tokens: list[int]) -> Tensor:
    """Logits [len(tokens) + 1, vocab] of any runtime, given `step(tokens [1,T], start [1])`."""
    rows = [step(torch.tensor([prompt]), torch.tensor([0])).reshape(-1)]
    for i, tok in enumerate(tokens):
        rows.append(step(torch.tensor([[tok]]), torch.tensor([len(prompt) + i])).reshape(-1))
    return torch.stack([torch.as_tensor(r, dtype=torch.float32) for r in rows])


def compare(ref_logits: Tensor, got_logits: Tensor, quant: str) -> dict:
    """Numbers and a verdict for logits of an artifact against the fp32 eager reference."""
    ref = torch.as_tensor(ref_logits, dtype=torch.float64)
    got = torch.as_tensor(got_logits, dtype=torch.float64)
    if ref.shape != got.shape:
        return {"passed": False, "quant": quant,
                "error": f"logit shapes differ: reference {list(ref.shape)}, got {list(got.shape)}"}
    scale = ref.abs().max().clamp_min(1e-30)
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    result = {
        "quant": quant,
        "steps": ref.shape[0] - 1,
        "max_abs_err": float((got - ref).abs().max()),
        "max_rel_err": float((got - ref).abs().max() / scale),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "greedy_agreement": float((ref.argmax(-1) == got.argmax(-1)).double().mean()),
        "finite": bool(torch.isfinite(got).all()),
    }
    key, limit = THRESHOLDS[quant]
    ok = result[key] <= limit if key == "max_rel_err" else result[key] >= limit
    result["criterion"] = f"{key} {'<=' if key == 'max_rel_err' else '>='} {limit:g}"
    result["passed"] = bool(ok and result["finite"])
    return result

"""Real text from an exported artifact: `generate` (a prompt in, text and tokens/s out) and `eval`
(perplexity on the held-out split of a corpus), run by the artifact's own runtime.

An exported decoder's `forward(tokens [1, T], start [1])` returns the logits [1, vocab] of the last
of `tokens` and writes their K/V into the artifact's cache (model.py), so both commands drive it
step by step through one `Stepper` per runtime: ExecuTorch (executorch.runtime), ONNX Runtime (the
cache fed back as inputs, as `export.onnx.verify_onnx` does), llama.cpp (llama-cpp-python). These
are the very runtimes `bench` times, on this host. A phone's runner reports timings, not logits,
so on an ADB or Core ML device both commands say so and what to run instead.

Perplexity: the held-out tokens (`corpus.split_documents`: the documents `train` never trains
on) are cut into windows of the artifact's KV cache; in each window every token after the first is
scored given the ones before it (a prefill of one token, then one decode step per token, exactly
as a phone decodes), and perplexity = exp(mean negative log-likelihood). Windows restart at
position 0: a static cache is overwritten from the start, and positions past the current one are
masked. `--tokens` caps the tokens scored, so the cost is known beforehand.

The tokenizer: `--tokenizer PATH`, else a tokenizer.json beside the artifact (`export
--checkpoint` copies the one beside the checkpoint, as `import` and `train` leave it), else the
byte tokenizer for a card of vocabulary 256; a tokenizer with more ids than the card's vocabulary
is refused (its ids would index past the embedding).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merino_mobile.errors import UserError
from merino_mobile.tokenizer import Tokenizer

DEFAULT_NEW_TOKENS = 32
DEFAULT_EVAL_TOKENS = 2048


class Stepper:
    """One runtime's decode loop over an artifact: `step(ids, start)` returns the logits of the
    last id (float32 numpy, [vocab]); `reset()` starts a new sequence at position 0."""

    cache_len: int
    runtime: str

    def step(self, ids: list[int], start: int) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class TorchStepper(Stepper):
    """The eager fp32 torch decoder of a card and checkpoint: the reference an export's
    perplexity is compared with."""

    runtime = "torch (eager fp32)"

    def __init__(self, card: Any, checkpoint: Path | None, cache_len: int) -> None:
        from merino_mobile.model import build_decoder

        self.model = build_decoder(card, cache_len=cache_len, checkpoint=checkpoint)
        self.cache_len = cache_len

    def reset(self) -> None:
        self.model.reset_cache()

    def step(self, ids: list[int], start: int) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([ids], dtype=torch.long), torch.tensor([start]))
        return out.reshape(-1).float().numpy()


class ExecuTorchStepper(Stepper):
    runtime = "executorch"

    def __init__(self, artifact: Path, cache_len: int) -> None:
        import contextlib

        from merino_mobile.export.executorch import filtered_native_log, load_method

        self.method, self.cache_len = load_method(artifact), cache_len
        # the kernels' per-call log lines, held back until close() (`filtered_native_log`)
        self._log = contextlib.ExitStack()
        self._log.enter_context(filtered_native_log())

    def step(self, ids: list[int], start: int) -> np.ndarray:
        import torch

        out = self.method.execute([torch.tensor([ids], dtype=torch.long),
                                   torch.tensor([start], dtype=torch.long)])[0]
        return out.reshape(-1).float().numpy()

    def close(self) -> None:
        self._log.close()


class OnnxStepper(Stepper):
    runtime = "onnxruntime"

    def __init__(self, artifact: Path, cache_len: int) -> None:
        from merino_mobile.export.onnx import PAST, onnx_session

        self.session, self.cache_len = onnx_session(artifact), cache_len
        self.past = [i for i in self.session.get_inputs() if i.name.startswith(PAST)]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.reset()

    def reset(self) -> None:
        self.cache = {i.name: np.zeros(i.shape, dtype=np.float32) for i in self.past}

    def step(self, ids: list[int], start: int) -> np.ndarray:
        from merino_mobile.export.onnx import PAST, PRESENT

        feeds = {"tokens": np.array([ids], dtype=np.int64),
                 "start": np.array([start], dtype=np.int64), **self.cache}
        values = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        for name in self.cache:
            self.cache[name] = values[PRESENT + name[len(PAST):]]
        return np.asarray(values["logits"], dtype=np.float32).reshape(-1)


class LlamaCppStepper(Stepper):
    runtime = "llamacpp"

    def __init__(self, artifact: Path, cache_len: int, threads: int) -> None:
        from merino_mobile.export.gguf import load_llama

        self.llm = load_llama(artifact, threads=threads, n_ctx=cache_len)
        self.cache_len = cache_len

    def reset(self) -> None:
        self.llm.reset()

    def step(self, ids: list[int], start: int) -> np.ndarray:
        # llama.cpp keeps its own position: a step must continue where the last one ended
        assert start == self.llm.n_tokens, (start, self.llm.n_tokens)
        import llama_cpp

        self.llm.eval(ids)
        # the last token's logits, read from the context: without logits_all (a row per cache
        # position, vocab wide: hundreds of MB for a 50k vocabulary) llama-cpp-python keeps none
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float32)

    def close(self) -> None:
        self.llm.close()


def _host_only(ws: Any, device: str | None, what: str) -> int:
    """The device must be this host (its threads); a phone or a Mac is a clear refusal."""
    from merino_mobile.device.profiles import load_profile

    prof = load_profile(ws, device or "host")
    if prof.transport != "local":
        raise UserError(f"{what} runs the artifact on this host: device {prof.name!r} is reached "
                        f"over {prof.transport}, and its runner reports timings, not logits; run "
                        f"`merino-mobile {what} ARTIFACT --device host` here (the same runtime and "
                        f"quantization), and `merino-mobile bench ARTIFACT --device {prof.name}` "
                        f"for its speed there")
    return max(1, int(prof.threads or 1))


def open_stepper(artifact: Path, threads: int) -> tuple[Stepper, Any]:
    """The stepper of an exported artifact and its card (from the export folder)."""
    from merino_mobile.deploy.bench import artifact_runtime

    artifact = Path(artifact)
    runtime = artifact_runtime(artifact)
    meta = meta_with_card(artifact)
    card = meta["card"]
    cache_len = int((meta.get("export") or {}).get("cache_len") or card.context)
    if runtime == "executorch":
        return ExecuTorchStepper(artifact, cache_len), card
    if runtime == "onnxruntime":
        return OnnxStepper(artifact, cache_len), card
    if runtime == "llamacpp":
        return LlamaCppStepper(artifact, cache_len, threads), card
    raise UserError(f"{artifact}: {runtime} runs only on its own platform (Core ML needs macOS); "
                    f"export the card as executorch, onnx or gguf to read its text here")


def resolve_tokenizer(artifact: Path, card: Any, path: Path | None) -> Tokenizer:
    """`path`, else tokenizer.json beside the artifact, else bytes for a 256-id card."""
    beside = Path(artifact).parent / "tokenizer.json"
    if path is None and beside.is_file():
        path = beside
    if path is None:
        if card.vocab != 256:
            raise UserError(f"{card.name} has a vocabulary of {card.vocab} and no tokenizer.json "
                            f"lies beside {artifact}: give --tokenizer PATH (export --checkpoint "
                            f"copies the one beside its checkpoint)")
        return Tokenizer()
    tok = Tokenizer(path)
    if tok.vocab > card.vocab:
        raise UserError(f"the tokenizer {path} has {tok.vocab} ids, more than {card.name}'s "
                        f"vocabulary of {card.vocab}: it is not this model's tokenizer; give the "
                        f"one it was trained or imported with (--tokenizer)")
    return tok


@dataclass
class Generated:
    """What `generate` produced and how fast."""

    artifact: str
    runtime: str
    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    ttft_ms: float
    decode_tokens_per_s: float | None
    tokens: list[int]
    runner_stats: dict[str, Any] | None = None  # ExecuTorch's LLM runner's own, when it ran

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate_with_llm_runner(artifact: Path, prompt: str, new_tokens: int,
                             tokenizer: Path | None, threads: int) -> Generated:
    """Greedy generation by ExecuTorch's own LLM runner (`TextLLMRunner`, the C++ runner its
    `llama_main` and Android demo app use), from the .pte's metadata (`llm_metadata`) and a
    tokenizer.json (`--tokenizer`, else the one beside the artifact). Timings are the runner's
    (its Stats, in whole milliseconds), kept whole in `runner_stats`."""
    import json

    from merino_mobile.deploy.bench import artifact_meta, artifact_runtime
    from merino_mobile.export.executorch import filtered_native_log, load_llm_kernels

    artifact = Path(artifact)
    if artifact_runtime(artifact) != "executorch":
        raise UserError(f"--llm-runner runs ExecuTorch programs (.pte); {artifact.name} is not "
                        f"one: leave the flag out")
    meta = artifact_meta(artifact)
    card = meta.get("card")
    path = tokenizer or artifact.parent / "tokenizer.json"
    if not Path(path).is_file():
        raise UserError(f"ExecuTorch's LLM runner needs a tokenizer file and none lies beside "
                        f"{artifact}: give --tokenizer PATH (exports of this version write one)")
    tok = resolve_tokenizer(artifact, card, Path(path)) if card is not None else Tokenizer(path)
    cache_len = (meta.get("export") or {}).get("cache_len") or (card.context if card else None)
    wanted = len(tok.encode(prompt)) + new_tokens
    if not prompt:
        raise UserError("the prompt is empty; give --prompt some text")
    if cache_len and wanted > cache_len:
        raise UserError(f"the prompt and --tokens {new_tokens} do not fit the artifact's KV "
                        f"cache of {cache_len} positions; shorten them or export with "
                        f"--cache-len {wanted}")
    load_llm_kernels()
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from executorch.extension.pybindings import _C

    _C._unsafe_reset_threadpool(threads)
    try:
        runner = TextLLMRunner(str(artifact), str(path))
    except RuntimeError as e:
        raise UserError(f"ExecuTorch's LLM runner cannot load {artifact}: {e}; an export of an "
                        f"older version lacks its metadata: export it again") from None
    pieces: list[str] = []
    stats: list[Any] = []
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, echo=False)
    with filtered_native_log():
        runner.generate(prompt, config, token_callback=pieces.append,
                        stats_callback=stats.append)
    s = json.loads(stats[-1].to_json_string()) if stats else {}
    text = "".join(pieces)
    ttft = s.get("first_token_ms", 0) - s.get("inference_start_ms", 0)
    decode_ms = s.get("inference_end_ms", 0) - s.get("first_token_ms", 0)
    decoded = int(s.get("generated_tokens", 0))  # the runner's count: after the first token
    rate = decoded * 1000 / decode_ms if decoded and decode_ms > 0 else None
    ids = tok.encode(text)
    return Generated(str(artifact), "executorch (TextLLMRunner)", prompt, text,
                     int(s.get("prompt_tokens", len(tok.encode(prompt)))), len(ids), float(ttft),
                     rate, ids, s)


def llm_runner_stats(ws: Any, artifact: Path, prompt_tokens: int, new_tokens: int
                     ) -> dict[str, Any]:
    """ExecuTorch's LLM runner's own numbers for a prompt of about `prompt_tokens` tokens and
    `new_tokens` generated (`bench --llm-runner`): a prompt of one repeated token, as bench's
    prefill is; the runner tokenizes the text itself, so its count is the one reported."""
    tok = resolve_tokenizer(artifact, meta_with_card(artifact)["card"], None)
    one = tok.encode(" a")[-1:] or [0]
    g = generate_with_llm_runner(artifact, tok.decode(one * prompt_tokens), new_tokens, None,
                                 _host_only(ws, "host", "bench --llm-runner"))
    return {"prompt_tokens": g.prompt_tokens, "new_tokens": g.new_tokens, "ttft_ms": g.ttft_ms,
            "decode_tokens_per_s": g.decode_tokens_per_s, "stats": g.runner_stats}


def meta_with_card(artifact: Path) -> dict[str, Any]:
    """An artifact's export-folder metadata (`bench.artifact_meta`), which must hold its card."""
    from merino_mobile.deploy.bench import artifact_meta

    meta = artifact_meta(Path(artifact))
    if meta.get("card") is None:
        raise UserError(f"{Path(artifact).parent} has no card.json: give an artifact "
                        f"`merino-mobile export` (or deploy) wrote, with its folder")
    return meta


def _pick(logits: np.ndarray, top_k: int | None, rng: np.random.Generator) -> int:
    if top_k is None:
        return int(np.argmax(logits))
    k = min(top_k, logits.size)
    ids = np.argpartition(-logits, k - 1)[:k]
    z = logits[ids] - logits[ids].max()
    p = np.exp(z) / np.exp(z).sum()
    return int(ids[rng.choice(k, p=p)])


def generate_text(ws: Any, artifact: Path, prompt: str, *, device: str | None = None,
                  new_tokens: int = DEFAULT_NEW_TOKENS, tokenizer: Path | None = None,
                  top_k: int | None = None, seed: int = 0, llm_runner: bool = False
                  ) -> Generated:
    """Prefill the prompt's tokens with the artifact's runtime, decode `new_tokens` (greedy, or
    sampled from the top_k), and decode the ids back to text. `llm_runner`: let ExecuTorch's
    own LLM runner do it (`generate_with_llm_runner`)."""
    if new_tokens < 1:
        raise UserError(f"--tokens must be at least 1 (got {new_tokens})")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be at least 1 (got {top_k})")
    threads = _host_only(ws, device, "generate")
    if llm_runner:
        if top_k is not None:
            raise UserError("--llm-runner generates greedily; leave out --top-k")
        return generate_with_llm_runner(artifact, prompt, new_tokens, tokenizer, threads)
    stepper, card = open_stepper(artifact, threads)
    try:
        tok = resolve_tokenizer(artifact, card, tokenizer)
        ids = tok.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty; give --prompt some text")
        if len(ids) + new_tokens > stepper.cache_len:
            raise UserError(f"the prompt ({len(ids)} tokens) and --tokens {new_tokens} do not "
                            f"fit the artifact's KV cache of {stepper.cache_len} positions; "
                            f"shorten them or export with --cache-len {len(ids) + new_tokens}")
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        logits = stepper.step(ids, 0)
        ttft = (time.perf_counter() - t0) * 1e3
        out = [_pick(logits, top_k, rng)]
        t1 = time.perf_counter()
        for i in range(new_tokens - 1):
            logits = stepper.step([out[-1]], len(ids) + i)
            out.append(_pick(logits, top_k, rng))
        dt = time.perf_counter() - t1
    finally:
        stepper.close()
    rate = (new_tokens - 1) / dt if new_tokens > 1 and dt > 0 else None
    return Generated(str(artifact), stepper.runtime, prompt, tok.decode(out), len(ids),
                     new_tokens, round(ttft, 3), rate, out)


@dataclass
class Evaluated:
    """Perplexity of an artifact on a corpus's held-out tokens."""

    artifact: str
    runtime: str
    quant: str | None
    corpus: str
    tokens_scored: int
    windows: int
    nll_per_token: float
    perplexity: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax_at(logits: np.ndarray, target: int) -> float:
    z = logits.astype(np.float64)
    m = z.max()
    return float(z[target] - m - math.log(np.exp(z - m).sum()))


def evaluate_text(ws: Any, artifact: Path, corpus: str | Path, *, device: str | None = None,
                  max_tokens: int = DEFAULT_EVAL_TOKENS, tokenizer: Path | None = None
                  ) -> Evaluated:
    """Perplexity of the artifact on the held-out split of `corpus` (module docstring)."""
    from merino_mobile.corpus import split_documents
    from merino_mobile.deploy.bench import artifact_meta

    if max_tokens < 1:
        raise UserError(f"--tokens must be at least 1 (got {max_tokens})")
    threads = _host_only(ws, device, "eval")
    _, held = split_documents(corpus)
    stepper, card = open_stepper(artifact, threads)
    try:
        tok = resolve_tokenizer(artifact, card, tokenizer)
        ids = held_out_ids(corpus, held, tok)
        t0 = time.perf_counter()
        nll, scored, windows = mean_nll(stepper, ids, max_tokens)
        seconds = time.perf_counter() - t0
    finally:
        stepper.close()
    quant = (artifact_meta(artifact).get("export") or {}).get("quant")
    return Evaluated(str(artifact), stepper.runtime, quant, str(corpus), scored, windows,
                     nll, math.exp(nll), round(seconds, 3))


def held_out_ids(corpus: str | Path, held: list[str], tok: Tokenizer) -> list[int]:
    """The held-out texts' token ids; too few to score is a UserError."""
    from merino_mobile.corpus import encode

    ids = encode(tok, held).tolist()
    if len(ids) < 2:
        raise UserError(f"the held-out split of {corpus} has {len(ids)} token(s); give a "
                        f"larger corpus")
    return ids


def mean_nll(stepper: Stepper, ids: list[int], max_tokens: int) -> tuple[float, int, int]:
    """Mean negative log-likelihood (nats/token) of `ids` by windows of the stepper's cache
    (module docstring); the tokens scored and the windows."""
    window = stepper.cache_len
    nll, scored, windows = 0.0, 0, 0
    for w0 in range(0, len(ids) - 1, window):
        chunk = ids[w0:w0 + window]
        if len(chunk) < 2 or scored >= max_tokens:
            break
        stepper.reset()
        windows += 1
        logits = stepper.step([chunk[0]], 0)
        for pos in range(1, len(chunk)):
            nll -= _log_softmax_at(logits, chunk[pos])
            scored += 1
            if scored >= max_tokens or pos == len(chunk) - 1:
                break
            logits = stepper.step([chunk[pos]], pos)
    return nll / scored, scored, windows


def quantization_cost(artifact: Path, card: Any, checkpoint: Path, corpus: str | Path, *,
                      threads: int = 1, max_tokens: int = DEFAULT_EVAL_TOKENS,
                      tokenizer: Path | None = None) -> dict[str, Any]:
    """Perplexity of an export and of the eager fp32 model of the same checkpoint on the same
    held-out tokens (this host): what the export's quantization costs (`deploy --corpus`)."""
    from merino_mobile.corpus import split_documents

    _, held = split_documents(corpus)
    stepper, _ = open_stepper(artifact, threads)
    try:
        tok = resolve_tokenizer(artifact, card, tokenizer)
        ids = held_out_ids(corpus, held, tok)
        got, scored, windows = mean_nll(stepper, ids, max_tokens)
    finally:
        stepper.close()
    ref, _, _ = mean_nll(TorchStepper(card, checkpoint, stepper.cache_len), ids, max_tokens)
    return {"corpus": str(corpus), "tokens_scored": scored, "windows": windows,
            "runtime": stepper.runtime, "nll_per_token": got, "perplexity": math.exp(got),
            "fp32_nll_per_token": ref, "fp32_perplexity": math.exp(ref),
            "perplexity_increase_pct": 100 * (math.exp(got - ref) - 1),
            "evaluated_on": "this host (the artifact's runtime), against the eager fp32 model"}

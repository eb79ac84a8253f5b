"""GGUF export: a Llama-style card as llama.cpp's `llama` architecture, run by llama.cpp.

The decoder's weights are written with the `gguf` package's GGUFWriter under llama.cpp's tensor
names (`token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output` when the head is untied) and the
`llama.*` metadata keys (context, width, layers, FFN hidden size, heads, K/V heads, rotary
dimension and base, RMSNorm eps). Two things differ from the torch layout:
- rotary layout: the decoder turns q and k in the half-split (GPT-NeoX) layout, llama.cpp's
  `llama` graph in interleaved pairs, so the rows of every head of q and k (weights and biases)
  are permuted from one layout to the other, as llama.cpp's own converter does for Llama
  checkpoints;
- the KV cache: llama.cpp owns it (f16, `n_ctx` cells); the file records the export's cache
  length (`merino.cache_len`), which `bench` gives llama.cpp as `n_ctx`.

Quantization (llama.cpp's file types):
- fp16: F16 matrices, written directly (norms and biases stay F32, as in every GGUF);
- int8: Q8_0 (8-bit weights, one fp16 scale per block of 32);
- int4: Q4_0 (4-bit weights, one fp16 scale per block of 32);
- q4_k_m: Q4_K_M, llama.cpp's mix of 4- and 6-bit K-quants (super-blocks of 256 weights).
The quantized files come from llama.cpp's own quantizer (`llama_model_quantize` of
llama-cpp-python) run on an F32 GGUF, so a matrix gets what llama-quantize would give it: the head
(or a tied embedding) at higher precision, and a matrix whose rows do not fit the blocks at a
fallback type (a K-quant needs rows that are a multiple of 256 wide: a 64-wide model's q4_k_m is
Q5_0/Q8_0). Without llama-cpp-python, int8 and int4 are quantized by the `gguf` package's own
quantizer (Q8_0; Q4_0 with the head matrix at Q8_0), and q4_k_m is refused. The verification
lists the tensor types the file holds.

Tokenizer: the file carries a byte-level vocabulary of the card's size (llama.cpp's SPM tokenizer
with byte fallback): ids 0-255 are the bytes `<0x00>`..`<0xFF>` (the project's byte tokenizer),
256 and 257 are `<s>` and `</s>` when the vocabulary has room, the rest `<unusedN>`. So llama.cpp
loads any card's file and turns text into the byte ids a byte-tokenized model was trained on; a
card trained with another tokenizer (an imported checkpoint's tokenizer.json) runs token ids
correctly, but text tokenized by llama.cpp would not be that tokenizer's ids.

Only what llama.cpp's `llama` graph computes can be written: rotary positions, RMSNorm, SwiGLU
FFNs, one layer shape for every layer, no weight sharing, no projection, a final norm, a vocabulary
of at least the 256 bytes. `gguf_problems` names every other case with the nearest supported card.
Biases of q, k, v, o and the FFN, GQA/MQA and a tied or untied head are all supported.

The file also records which card it is (`merino.card`, `merino.card_sha256` over the card's
architecture, its JSON in `merino.card_json`) and the versions that wrote it, so `bench` can
refuse a GGUF beside another card's card.json (`check_artifact`) and name both versions when
this llama.cpp cannot load a file another one wrote (`load_llama`).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merino_mobile.card import Card
from merino_mobile.errors import UserError
from merino_mobile.formats import check_pair
from merino_mobile.toolchain import package_versions

if TYPE_CHECKING:
    from merino_mobile.model import Decoder

ARCH = "llama"
INSTALL = "pip install llama-cpp-python (it compiles llama.cpp from source: several minutes)"
LLAMA_CPP_PACKAGE = "llama-cpp-python"
# the llama.cpp file type of each quantization (LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {"fp16": "F16", "int8": "Q8_0", "int4": "Q4_0", "q4_k_m": "Q4_K_M"}
# the verification criterion of each quantization (merino_mobile.export.verify.THRESHOLDS)
CRITERION = {"fp16": "fp16", "int8": "int8", "int4": "int4", "q4_k_m": "int4"}
BYTES = 256  # the byte tokens every GGUF of this exporter starts its vocabulary with
META = "merino."  # the prefix of this exporter's own metadata keys
BLOCK = 32  # Q8_0 / Q4_0 block length: a row must be a multiple of it to be quantized


# -- what llama.cpp can represent ------------------------------------------------------------------

def gguf_problems(card: Card) -> list[str]:
    """Every reason llama.cpp's `llama` graph cannot compute `card`, each with the nearest card it
    can (empty when the card can be written)."""
    out = []
    if card.positions != "rope":
        out.append(f"learned positions (a table of {card.context + card.pos_offset} rows): the "
                   "llama graph has rotary positions only; nearest supported: \"positions\": "
                   "\"rope\" (schema_version 2)")
    if card.norm != "rmsnorm":
        out.append(f"norm {card.norm!r}: the llama graph normalizes with RMSNorm (no centering, "
                   "no bias); nearest supported: \"norm\": \"rmsnorm\"")
    kinds = sorted({b.ffn for b in card.blocks} - {"swiglu"})
    if kinds:
        out.append(f"FFN {', '.join(kinds)} (OPT/GPT-2 style): the llama graph's FFN is gated "
                   "SwiGLU; nearest supported: \"ffn\": \"swiglu\" (an ffn_hidden of 2/3 of the "
                   "ungated one keeps the parameters)")
    for i, b in enumerate(card.blocks):
        if b.shared and b.depth > 1:
            out.append(f"block {i} shares one layer's weights across its {b.depth} layers: GGUF "
                       "stores every layer's weights; nearest supported: \"shared\": false (the "
                       f"same computation with {b.depth} copies of the layer)")
    shapes = {(b.width, b.heads, b.n_kv_heads, b.ffn_hidden) for b in card.blocks}
    if len(shapes) > 1:
        widths = "/".join(str(b.width) for b in card.blocks)
        wide = max(card.blocks, key=lambda b: (b.width, b.ffn_hidden))
        out.append(f"blocks of different shapes (widths {widths}, heads, kv_heads or ffn_hidden "
                   "differ; adaptive widths are joined by projections): the llama graph has one "
                   f"layer shape and no projection; nearest supported: one block of width "
                   f"{wide.width}, {wide.heads} heads, {wide.n_kv_heads} kv_heads, ffn_hidden "
                   f"{wide.ffn_hidden} and depth {card.depth}")
    if card.embedding_width != card.blocks[0].width or \
            card.embedding_width != card.blocks[-1].width:
        ends = sorted({card.blocks[0].width, card.blocks[-1].width})
        out.append(f"embed_width {card.embedding_width} is projected to the blocks' width"
                   f"{'s' if len(ends) > 1 else ''} {' and '.join(map(str, ends))}: the llama "
                   "graph has no projection in or out; nearest supported: \"embed_width\": null "
                   "(the embedding at the blocks' width)")
    if not card.final_norm:
        out.append("no final norm: the llama graph always normalizes before the head; nearest "
                   "supported: \"final_norm\": true")
    if card.vocab < BYTES:
        out.append(f"vocab {card.vocab}: the GGUF carries a byte-level vocabulary ({BYTES} byte "
                   "tokens) so that llama.cpp can tokenize any text; nearest supported: "
                   f"\"vocab\": {BYTES}")
    return out


def check_card(card: Card) -> None:
    """Refuse a card llama.cpp cannot represent, in one line naming why and what would do."""
    problems = gguf_problems(card)
    if problems:
        raise UserError(f"card {card.name!r} cannot be exported as GGUF for llama.cpp: "
                        + "; ".join(problems))


def card_sha256(card: Card) -> str:
    """A card's identity in a GGUF: sha256 of its JSON without the free-form meta."""
    arch = {k: v for k, v in card.to_json().items() if k != "meta"}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()


# -- llama.cpp through llama-cpp-python ------------------------------------------------------------

LOG: collections.deque[str] = collections.deque(maxlen=200)  # llama.cpp's latest log lines
_LOG_CALLBACK: Any = None  # the ctypes callback, kept alive while llama.cpp may call it


def llama_cpp_version() -> str | None:
    """Installed llama-cpp-python version, None when it is not installed."""
    version = package_versions((LLAMA_CPP_PACKAGE,))[LLAMA_CPP_PACKAGE]
    return None if version == "none" else version


def llama_cpp() -> Any:
    """The llama_cpp module with its log captured in LOG instead of printed (the CLI prints JSON
    on stdout, and a load failure's reason is in the log); a UserError naming the install
    command when it is not installed."""
    global _LOG_CALLBACK
    try:
        import llama_cpp as module
    except ImportError:
        raise UserError(f"llama.cpp is not installed: {INSTALL}") from None
    except OSError as e:  # the package is there, its compiled library is not loadable
        raise UserError(f"llama-cpp-python is installed but its llama.cpp library does not load "
                        f"({e}); reinstall it: pip install --force-reinstall llama-cpp-python (it "
                        f"compiles llama.cpp from source: several minutes)") from None
    if _LOG_CALLBACK is None:
        @module.llama_log_callback
        def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            LOG.append(text.decode("utf-8", errors="replace"))

        _LOG_CALLBACK = keep
        module.llama_log_set(keep, ctypes.c_void_p(0))
    return module


def _last_error() -> str:
    """llama.cpp's latest error-looking log line (its loader says why it gave up there)."""
    lines = [line.strip() for line in LOG if line.strip()]
    # the loader's "error loading model: <why>" comes before its closing "failed to load model"
    for words in (("error",), ("failed", "unknown", "invalid", "missing")):
        for line in reversed(lines):
            if any(w in line.lower() for w in words):
                return line
    return lines[-1] if lines else ""


# llama.cpp's AMX kernels (an "extra buffer type" for Q4_0 and Q8_0 weights, compiled in when
# the machine that built llama-cpp-python has AMX) die of a general protection fault on their
# first `ldtilecfg` on some virtual machines that advertise AMX and grant its permission (seen on
# this project's 2-core reference hosts). Whether they run is probed once, in a child process
# where a fault costs nothing; where they do not, weights load without extra buffer types (no
# AMX and no repacking: slower, never wrong).
EXTRA_BUFFERS_PROBE = """
import sys
from pathlib import Path
from merino_mobile.card import Block, Card
from merino_mobile.export.gguf import export_gguf, llama_cpp
from merino_mobile.model import build_decoder
card = Card("probe", vocab=256, context=16, head_dim=16, positions="rope", norm="rmsnorm",
            bias=False, blocks=(Block(64, 2.0, 4, 1, ffn="swiglu", kv_heads=2),))
path = export_gguf(build_decoder(card), "int8", Path(sys.argv[1]) / "probe.gguf", prompt_len=4)
llm = llama_cpp().Llama(str(path), n_ctx=16, n_threads=1, verbose=False)
llm.eval([1, 2, 3])
print("ok")
"""


def _cpu_has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def extra_buffers_work() -> bool:
    """Whether llama.cpp's extra buffer types (AMX, repacked weights) run on this machine:
    true without AMX; with it, what a child process that runs a tiny Q8_0 model says (cached
    for this llama.cpp build and CPU in the temporary directory)."""
    if not _cpu_has_amx():
        return True
    import subprocess
    import sys

    import llama_cpp as module

    lib = Path(module.__file__).parent / "lib"
    stamp = hashlib.sha256(json.dumps(
        [sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in lib.glob("*.so*")),
         llama_cpp_version(), Path("/proc/cpuinfo").read_text().split("\n\n")[0]]
    ).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"merino-mobile-llamacpp-extra-buffers-{stamp}.json"
    try:
        return bool(json.loads(cache.read_text())["work"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with tempfile.TemporaryDirectory() as tmp:
        try:
            child = subprocess.run([sys.executable, "-c", EXTRA_BUFFERS_PROBE, tmp],
                                   capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return True  # not a fault: let the real load say what is wrong
    if child.returncode == 0:
        work = True
    elif child.returncode < 0:  # killed by a signal: the fault this probe is for
        work = False
    else:  # any other failure is not about AMX; the real load will report it
        return True
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"work": work, "llama_cpp_python": llama_cpp_version()}))
    return work


@contextlib.contextmanager
def _model_params(**fields: Any) -> Iterator[None]:
    """llama_cpp.Llama with `fields` set on its llama_model_params (it exposes no argument for
    them): its default-params function is wrapped for the duration."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original


def load_llama(artifact: Path, *, threads: int, n_ctx: int | None = None,
               logits_all: bool = False) -> Any:
    """A `llama_cpp.Llama` of `artifact` with `threads` threads and `n_ctx` KV cells (default:
    the export's cache length), batches as long as the cache (a prefill is one llama_decode).
    A file this llama.cpp cannot load is a UserError with llama.cpp's reason and, when another
    llama-cpp-python wrote it, both versions."""
    module = llama_cpp()
    artifact = Path(artifact)
    header = read_header(artifact)
    if n_ctx is None:
        n_ctx = int(header.get(META + "cache_len") or header.get(f"{ARCH}.context_length") or 512)
    params = {} if extra_buffers_work() else {"use_extra_bufts": False}
    LOG.clear()
    try:
        with _model_params(**params):
            return module.Llama(str(artifact), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                n_threads=threads, n_threads_batch=threads,
                                logits_all=logits_all, verbose=False)
    except (ValueError, RuntimeError) as e:
        here = llama_cpp_version()
        wrote = header.get(META + "llama_cpp_python")
        versions = (f"; it was written with llama-cpp-python {wrote} and this is {here}: install "
                    f"llama-cpp-python=={wrote} or export again with this one"
                    if wrote and wrote not in (here, "none") else
                    "; export it again with `merino-mobile export --format gguf`")
        raise UserError(f"{artifact}: llama.cpp (llama-cpp-python {here}) cannot load it: "
                        f"{_last_error() or e or 'no reason given'}{versions}") from None


# -- reading a GGUF --------------------------------------------------------------------------------

def _reader(artifact: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(artifact))
    except FileNotFoundError:
        raise UserError(f"{artifact}: no such file") from None
    except Exception as e:  # the reader raises ValueError/struct errors for anything not GGUF
        raise UserError(f"{artifact} is not a GGUF file this gguf package "
                        f"({package_versions(('gguf',))['gguf']}) can read: {e}") from None


def read_header(artifact: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF (arrays such as the token list left out)."""
    reader = _reader(artifact)
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key != "tokenizer.ggml.model":
            continue
        try:
            value = f.contents()
        except Exception:  # a value type this gguf package does not decode: not one we read
            continue
        if not isinstance(value, list):
            out[key] = value
    return out


def tensor_types(artifact: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds (F32, F16, Q8_0, ...)."""
    counts = collections.Counter(t.tensor_type.name for t in _reader(artifact).tensors)
    return dict(sorted(counts.items()))


def check_artifact(artifact: Path, card: Card | None = None) -> dict[str, Any]:
    """The header of a GGUF that holds `card` (default: the card.json beside it, when there is
    one); a UserError when it is not a llama GGUF or holds another card."""
    artifact = Path(artifact)
    header = read_header(artifact)
    arch = header.get("general.architecture")
    if arch != ARCH:
        raise UserError(f"{artifact} is a GGUF of architecture {arch!r}; merino-mobile writes and "
                        f"benches {ARCH!r} GGUFs (`merino-mobile export --format gguf`)")
    beside = artifact.parent / "card.json"
    if card is None and beside.is_file():
        try:
            card = Card.from_json(json.loads(beside.read_text()), str(beside))
        except ValueError as e:
            raise UserError(f"{beside} is not valid JSON: {e}") from None
    if card is None:
        return header
    source = str(beside) if beside.is_file() else f"card {card.name!r}"
    if META + "card_sha256" in header:
        if header[META + "card_sha256"] != card_sha256(card):
            raise UserError(f"{artifact} holds card {header.get(META + 'card')!r}, not the card "
                            f"{card.name!r} of {source} (another card's architecture): bench the "
                            f"folder its export wrote, or export this card again with "
                            f"`merino-mobile export {card.name} --format gguf`")
        return header
    # a GGUF written elsewhere: at least its shape must be the card's
    b = card.blocks[0]
    want = {f"{ARCH}.embedding_length": b.width, f"{ARCH}.block_count": card.depth,
            f"{ARCH}.feed_forward_length": b.ffn_hidden, f"{ARCH}.attention.head_count": b.heads,
            f"{ARCH}.attention.head_count_kv": b.n_kv_heads}
    differ = [f"{k} {header.get(k)} (card: {v})" for k, v in want.items() if header.get(k) != v]
    if differ:
        raise UserError(f"{artifact} does not hold the card {card.name!r} of {source}: "
                        f"{'; '.join(differ)}; bench it without that card.json, or export the "
                        f"card with `merino-mobile export {card.name} --format gguf`")
    return header


# -- writing ---------------------------------------------------------------------------------------

def rope_rows(w: Any, heads: int) -> Any:
    """q or k rows (or biases) of `heads` heads from the half-split rotary layout to llama.cpp's
    interleaved one: per head, rows (i, i + d/2) become rows (2i, 2i + 1)."""
    shape = w.shape
    return (w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2)
            .reshape(shape))


def byte_vocabulary(vocab: int) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens, their types and the special ids of the byte-level vocabulary (module docstring)."""
    from gguf import TokenType

    tokens = [f"<0x{i:02X}>" for i in range(BYTES)]
    types = [int(TokenType.BYTE)] * BYTES
    special: dict[str, int] = {}
    if vocab >= BYTES + 2:
        tokens += ["<s>", "</s>"]
        types += [int(TokenType.CONTROL)] * 2
        special = {"bos": BYTES, "eos": BYTES + 1}
    tokens += [f"<unused{i}>" for i in range(len(tokens), vocab)]
    types += [int(TokenType.UNUSED)] * (vocab - len(types))
    return tokens, types, special


def gguf_tensors(model: Decoder) -> list[tuple[str, Any, str]]:
    """(GGUF name, fp32 numpy array in torch's [out, in] layout, role) of every weight; role is
    "head" for the matrix that computes the logits, "matrix" for other 2-D weights, "vector"
    for norms and biases."""
    card = model.card
    block = card.blocks[0]
    out: list[tuple[str, Any, str]] = []

    def add(name: str, tensor: Any, role: str = "") -> None:
        a = tensor.detach().float().cpu().numpy()
        out.append((name, a, role or ("matrix" if a.ndim == 2 else "vector")))

    add("token_embd.weight", model.embed.weight, "head" if model.head is None else "matrix")
    layers = [layer for b in model.blocks for layer in b.layers]
    for i, layer in enumerate(layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", layer.ln1.weight)
        attn = layer.attn
        for src, dst, heads in ((attn.q, "attn_q", block.heads), (attn.k, "attn_k",
                                                                  block.n_kv_heads),
                                (attn.v, "attn_v", None), (attn.o, "attn_output", None)):
            for kind in ("weight", "bias"):
                t = getattr(src, kind)
                if t is None:
                    continue
                a = t.detach().float().cpu().numpy()
                if heads is not None:
                    a = rope_rows(a, heads)
                out.append((f"{p}{dst}.{kind}", a, "matrix" if a.ndim == 2 else "vector"))
        add(p + "ffn_norm.weight", layer.ln2.weight)
        for name in ("gate", "up", "down"):
            lin = getattr(layer.ffn, name)
            add(f"{p}ffn_{name}.weight", lin.weight)
            if lin.bias is not None:
                add(f"{p}ffn_{name}.bias", lin.bias)
    add("output_norm.weight", model.norm.weight)
    if model.head is not None:
        add("output.weight", model.head.weight, "head")
    return out


def _fallback_type(role: str, cols: int, quant: str) -> Any:
    """The ggml type the gguf package's quantizer gives a tensor, without llama.cpp."""
    from gguf import GGMLQuantizationType as T

    if role == "vector" or quant == "fp32":
        return T.F32
    if quant == "fp16" or cols % BLOCK:
        return T.F16
    if quant == "int4" and role != "head":
        return T.Q4_0
    return T.Q8_0


def write_gguf(model: Decoder, path: Path, quant: str, *, quantizer: str) -> Path:
    """The decoder as a GGUF at `path`: fp32 (the quantizer's input), fp16, or, with `quantizer`
    "gguf", int8/int4 quantized by the gguf package."""
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType
    from gguf.quants import quantize

    card, block = model.card, model.card.blocks[0]
    w = GGUFWriter(str(path), ARCH)
    w.add_name(card.name)
    w.add_context_length(card.context)
    w.add_embedding_length(block.width)
    w.add_block_count(card.depth)
    w.add_feed_forward_length(block.ffn_hidden)
    w.add_head_count(block.heads)
    w.add_head_count_kv(block.n_kv_heads)
    w.add_rope_dimension_count(card.head_dim)
    w.add_rope_freq_base(card.rope_theta)
    w.add_layer_norm_rms_eps(card.norm_eps)
    w.add_vocab_size(card.vocab)
    file_type = {"fp32": LlamaFileType.ALL_F32, "fp16": LlamaFileType.MOSTLY_F16,
                 "int8": LlamaFileType.MOSTLY_Q8_0, "int4": LlamaFileType.MOSTLY_Q4_0}[quant]
    w.add_file_type(file_type)
    tokens, types, special = byte_vocabulary(card.vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(types)
    w.add_add_space_prefix(False)  # byte ids: "hello" is the five bytes, no "▁" before it
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if special:
        w.add_bos_token_id(special["bos"])
        w.add_eos_token_id(special["eos"])
    versions = package_versions(("torch", "gguf", LLAMA_CPP_PACKAGE))
    for key, value in (("card", card.name), ("card_sha256", card_sha256(card)),
                       ("card_json", json.dumps(card.to_json())),
                       ("cache_len", str(model.cache_len)), ("tokenizer", "bytes"),
                       ("quantizer", quantizer), ("llama_cpp_python", versions[LLAMA_CPP_PACKAGE]),
                       ("gguf", versions["gguf"]), ("torch", versions["torch"])):
        w.add_string(META + key, value)
    for name, array, role in gguf_tensors(model):
        kind = _fallback_type(role, array.shape[-1], quant)
        if kind.name == "F32":
            w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
        elif kind.name == "F16":
            w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16))
        else:
            w.add_tensor(name, quantize(np.ascontiguousarray(array), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python imports here."""
    try:
        llama_cpp()
    except UserError:
        return False
    return True


def _has_llama_quantizer() -> bool:
    return llama_cpp_available() and hasattr(llama_cpp(), "llama_model_quantize")


def export_gguf(model: Decoder, quant: str, path: Path, *, prompt_len: int) -> Path:
    """Write the decoder as a GGUF at `path` (see the module docstring); `prompt_len` is not
    needed (llama.cpp takes any batch length)."""
    check_pair("gguf", quant)
    check_card(model.card)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if quant == "fp16":
        return write_gguf(model, path, quant, quantizer="none")
    use_llama = _has_llama_quantizer()
    if not use_llama:
        if quant == "q4_k_m":
            raise UserError(f"q4_k_m needs llama.cpp's quantizer (the gguf package cannot write "
                            f"K-quant mixes): {INSTALL}; or export --quant int4 (Q4_0)")
        gguf_version = package_versions(("gguf",))["gguf"]
        return write_gguf(model, path, quant, quantizer=f"gguf {gguf_version}")
    module = llama_cpp()
    version = llama_cpp_version()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source = write_gguf(model, Path(tmp) / "f32.gguf", "fp32",
                            quantizer=f"llama.cpp (llama-cpp-python {version})")
        params = module.llama_model_quantize_default_params()
        params.ftype = getattr(module, f"LLAMA_FTYPE_MOSTLY_{FILE_TYPES[quant]}")
        params.nthread = os.cpu_count() or 1
        LOG.clear()
        rc = module.llama_model_quantize(str(source).encode(), str(path).encode(),
                                         ctypes.byref(params))
    if rc != 0:
        raise UserError(f"llama.cpp's quantizer (llama-cpp-python {version}) failed to write "
                        f"{FILE_TYPES[quant]} (code {rc}): {_last_error()}")
    return path


# -- verifying -------------------------------------------------------------------------------------

def structure_problems(model: Decoder, artifact: Path, quant: str) -> tuple[list[str], dict]:
    """What the file declares against what `model` and `quant` need: (problems, tensor types)."""
    header = check_artifact(artifact, model.card)
    types = tensor_types(artifact)
    problems = []
    if header.get(META + "cache_len") != str(model.cache_len):
        problems.append(f"cache length {header.get(META + 'cache_len')} != {model.cache_len}")
    expected = {"fp16": {"F16"}, "int8": {"Q8_0"}, "int4": {"Q4_0"},
                "q4_k_m": {"Q4_K", "Q5_0", "Q5_1", "Q6_K", "Q8_0"}}[quant]
    if not set(types) & expected:
        problems.append(f"tensor types {types} hold none of {sorted(expected)}: not {quant}")
    return problems, types


def verify_gguf(model: Decoder, artifact: Path, quant: str) -> dict[str, Any]:
    """Run the GGUF with llama.cpp here (the same tokens as the eager fp32 model, one llama_decode
    per step) and compare the logits; without llama.cpp, check its structure and say that the
    parity was skipped."""
    import numpy as np
    import torch

    from merino_mobile.export.verify import compare, fit_prompt, reference_run, run_steps

    problems, types = structure_problems(model, artifact, quant)
    result: dict[str, Any] = {"quant": quant, "tensor_types": types, "problems": problems}
    if not llama_cpp_available():
        return result | {"checked": "structure", "passed": not problems,
                         "prediction_parity": f"skipped: llama.cpp is not installed: {INSTALL}"}
    llm = load_llama(artifact, threads=min(4, os.cpu_count() or 1), n_ctx=model.cache_len,
                     logits_all=True)

    def step(tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        if int(start) != llm.n_tokens:
            raise RuntimeError(f"llama.cpp is at position {llm.n_tokens}, the step at {int(start)}")
        llm.eval(tokens.reshape(-1).tolist())
        return torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))

    try:
        prompt, steps = fit_prompt(model)
        ref = reference_run(model, prompt, steps)
        llm.reset()
        parity = compare(ref["logits"], run_steps(step, prompt, ref["tokens"]), CRITERION[quant])
    finally:
        llm.close()
    return parity | result | {
        "checked": "structure and prediction", "passed": bool(parity["passed"] and not problems),
        "runtime": f"llama.cpp (llama-cpp-python {llama_cpp_version()})"}

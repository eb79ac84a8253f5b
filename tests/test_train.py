"""Training harness: loss goes down, checkpoints load, resume is exact, refusals, smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from merino_mobile.card import Block, Card, save_card
from merino_mobile.cli import app
from merino_mobile.corpus import load_split, prose_documents
from merino_mobile.errors import UserError
from merino_mobile.model import build_decoder
from merino_mobile.tokenizer import Tokenizer
from merino_mobile.train import OPTIMIZER, WEIGHTS, TrainConfig, evaluate, train

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog. A small model learns to repeat it.\n"


def tiny(**kw) -> Card:
    fields = dict(name="tiny", vocab=256, context=64, head_dim=16, blocks=(Block(64, 4.0, 4, 1),))
    return Card(**(fields | kw))


def config(**kw) -> TrainConfig:
    fields = dict(tokens=30 * 4 * 32, seq=32, batch=4, lr=1e-2, checkpoint_every=10,
                  eval_tokens=512)
    return TrainConfig(**(fields | kw))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared 2-core machine OpenMP spinning made 2 threads ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def repeated(tmp_path) -> Path:
    path = tmp_path / "repeated.txt"
    path.write_text(TEXT * 60)
    return path


def test_training_lowers_the_loss_on_repeated_text(repeated):
    data = load_split(repeated, Tokenizer())
    card = tiny()
    before = evaluate(build_decoder(card), data.val, 32, 512)
    result = train(card, data, config())
    assert before > 5.0  # about log(256) for random weights
    assert result.val_loss < before - 2.0
    assert result.steps == 30 and result.tokens_trained == 30 * 4 * 32
    first, last = result.history[0][1], result.history[-1][1]
    assert last < first


def test_checkpoint_round_trips_into_build_decoder(repeated, tmp_path):
    data = load_split(repeated, Tokenizer())
    card = tiny(blocks=(Block(64, 2.0, 4, 2, shared=True),), positions="rope")
    result = train(card, data, config(tokens=12 * 4 * 32), tmp_path / "run")
    assert result.checkpoint == str(tmp_path / "run" / WEIGHTS)
    loaded = build_decoder(card, checkpoint=Path(result.checkpoint))
    assert evaluate(loaded, data.val, 32, 512) == pytest.approx(result.val_loss, rel=1e-6)
    from safetensors.torch import load_file

    names = set(load_file(result.checkpoint))
    assert names == set(build_decoder(card).state_dict())
    assert not any("cache" in n or "rope" in n for n in names)  # not weights


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(repeated,
                                                                                 tmp_path):
    data = load_split(repeated, Tokenizer())
    card = tiny()
    full = train(card, data, config(tokens=20 * 4 * 32), tmp_path / "full")

    def interrupt(step, steps, loss, rate):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(card, data, config(tokens=20 * 4 * 32), tmp_path / "cut", interrupt)
    resumed = train(card, data, config(tokens=20 * 4 * 32), tmp_path / "cut")
    assert resumed.start_step == 10  # the last checkpoint before the interruption at 13
    assert resumed.tokens_trained == 10 * 4 * 32
    a = build_decoder(card, checkpoint=tmp_path / "full" / WEIGHTS).state_dict()
    b = build_decoder(card, checkpoint=tmp_path / "cut" / WEIGHTS).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert resumed.val_loss == pytest.approx(full.val_loss, rel=1e-5)


def test_refuses_a_checkpoint_of_another_card(repeated, tmp_path):
    data = load_split(repeated, Tokenizer())
    train(tiny(), data, config(tokens=2 * 4 * 32), tmp_path / "run")
    other = tiny(name="wider", blocks=(Block(128, 4.0, 8, 1),))
    with pytest.raises(UserError, match="differs from card 'wider'"):
        train(other, data, config(tokens=4 * 4 * 32), tmp_path / "run")
    with pytest.raises(UserError, match="--batch 4, not 2"):
        train(tiny(), data, config(tokens=4 * 2 * 32, batch=2), tmp_path / "run")


def test_refuses_a_missing_stale_optimizer_file(repeated, tmp_path):
    data = load_split(repeated, Tokenizer())
    train(tiny(), data, config(tokens=2 * 4 * 32), tmp_path / "run")
    (tmp_path / "run" / OPTIMIZER).unlink()
    with pytest.raises(UserError, match="missing or from another step"):
        train(tiny(), data, config(tokens=4 * 4 * 32), tmp_path / "run")


def test_refuses_bad_corpora(tmp_path):
    with pytest.raises(UserError, match="no corpus at"):
        load_split(tmp_path / "nope.txt", Tokenizer())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="is empty"):
        load_split(tmp_path / "empty.txt", Tokenizer())
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="has no"):
        load_split(tmp_path / "folder", Tokenizer())
    (tmp_path / "small.txt").write_text(TEXT)
    data = load_split(tmp_path / "small.txt", Tokenizer())
    with pytest.raises(UserError, match="fewer than one batch"):
        train(tiny(), data, config())
    with pytest.raises(UserError, match="exceeds the context"):
        train(tiny(), data, config(seq=128))


def test_split_is_deterministic_and_disjoint_by_document(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(f"document {i} " * 20)
    a, b = load_split(folder, Tokenizer()), load_split(folder, Tokenizer())
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    val_text = bytes(a.val.tolist()).decode()
    train_text = bytes(a.train.tolist()).decode()
    held = {i for i in range(40) if f"document {i} " in val_text}
    assert held and len(held) < 40
    assert not any(f"document {i} " in train_text for i in held)


def test_prose_corpus_is_real_english_available_offline():
    docs = prose_documents()
    text = " ".join(d.text for d in docs)
    assert len(text) > 300_000
    assert text.count(" the ") > 1000


def test_cli_trains_resumes_and_refuses(repeated, tmp_path):
    card_path = save_card(tiny(name="cli-tiny"), tmp_path / "cli-tiny.json")
    runner = CliRunner()
    args = ["train", str(card_path), "--corpus", str(repeated), "--seq", "32", "--batch", "4",
            "--lr", "0.01", "--out", str(tmp_path / "run"), "--workspace", str(tmp_path)]
    r = runner.invoke(app, args + ["--tokens", str(6 * 128), "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)
    assert first["schema_version"] == 1 and first["steps"] == 6 and first["start_step"] == 0
    r = runner.invoke(app, args + ["--tokens", str(10 * 128), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["start_step"] == 6
    # bad input ends as one line with exit code 2 through the console script's main()
    for extra, message in ((["--tokenizer", "bytes"], "vocabulary of 1000"),
                           ([], "no corpus at")):
        card = tiny(name="big-vocab", vocab=1000) if extra else tiny(name="x")
        path = save_card(card, tmp_path / f"{card.name}.json", force=True)
        corpus = str(repeated) if extra else str(tmp_path / "missing.txt")
        p = subprocess.run([sys.executable, "-m", "merino_mobile", "train", str(path), "--corpus",
                            corpus, "--seq", "32", "--workspace", str(tmp_path)] + extra,
                           capture_output=True, text=True, timeout=120, env=ONE_THREAD)
        assert p.returncode == 2, p.stderr
        assert message in p.stderr and "Traceback" not in p.stderr


def test_cli_trains_a_bpe_tokenizer_of_the_card_vocab(tmp_path):
    card_path = save_card(tiny(name="bpe-tiny", vocab=320), tmp_path / "bpe-tiny.json")
    run = tmp_path / "run"
    args = ["train", str(card_path), "--corpus", "prose", "--tokenizer", "bpe", "--seq", "32",
            "--batch", "4", "--out", str(run), "--json", "--workspace", str(tmp_path)]
    r = CliRunner().invoke(app, args + ["--tokens", str(4 * 128)])
    assert r.exit_code == 0, r.output
    tok = Tokenizer(run / "tokenizer.json")
    assert tok.vocab == 320
    assert tok.decode(tok.encode("the quick brown fox")) == "the quick brown fox"
    assert json.loads(r.stdout)["corpus"]["train_tokens"] < 700_000  # fewer ids than bytes
    r = CliRunner().invoke(app, args + ["--tokens", str(6 * 128)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["start_step"] == 4  # resumed with the same tokenizer


@pytest.mark.slow
def test_reduced_entropy_experiment_runs_as_a_smoke_test(tmp_path):
    out = tmp_path / "result.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "entropy_vs_loss.py"),
                        "--reduced", "--out", str(out)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=ONE_THREAD)
    assert p.returncode == 0, p.stderr[-3000:]
    assert time.perf_counter() - t0 < 60
    result = json.loads(out.read_text())
    assert result["schema_version"] == 1 and result["mode"] == "reduced"
    assert len(result["architectures"]) == 2
    assert all(r["val_loss"] > 0 for r in result["architectures"])
    assert {"mp_optimal", "baseline"} <= set(result["comparison"])
    assert out.with_suffix(".png").stat().st_size > 1000


def test_the_training_device_is_checked_with_the_fix():
    from merino_mobile.train import train_device

    assert train_device("cpu").type == "cpu"
    for bad in ("tpu", "nonsense"):
        with pytest.raises(UserError, match="unknown training device"):
            train_device(bad)
    if not torch.cuda.is_available():  # pip's CPU build, as this project installs it
        with pytest.raises(UserError, match="has no usable CUDA; on a GPU machine install"):
            train_device("cuda")

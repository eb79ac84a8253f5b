"""Strict reading of the files a user writes: architecture cards (JSON), search spaces and device
profiles (TOML).

Every bad file must end as one UserError that names the file and the field, through the API and
through the CLI (exit code 2, one stderr line starting with "error:", no traceback), and never as
a hang or a value quietly turned into another. What is accepted must be read exactly as written.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run  # tests/cli_runner.py (pytest puts tests/ on sys.path)
from hypothesis import given, settings
from hypothesis import strategies as st

from merino_mobile.card import MAX_DEPTH, Block, Card, load_card, save_card
from merino_mobile.device.profiles import read_profile
from merino_mobile.errors import UserError
from merino_mobile.space import Space, load_space
from merino_mobile.workspace import Workspace

CARD: dict[str, Any] = {
    "schema_version": 1, "name": "tiny", "vocab": 256, "context": 64, "head_dim": 16,
    "blocks": [{"width": 64, "ffn_ratio": 2.0, "heads": 4, "depth": 2, "shared": False}],
    "positions": "learned", "pos_offset": 0, "embed_width": None, "tied_head": True,
    "final_norm": True, "bias": True, "meta": {"source": "test"},
}
SPACE: dict[str, Any] = {
    "schema_version": 1, "name": "tiny", "vocab": 256, "context": 128, "head_dim": 16,
    "positions": "learned", "tied_head": True, "embed_width": 0, "max_blocks": 3,
    "widths": [32, 48, 64, 96], "ffn_ratios": [1.0, 2.0, 4.0], "depth": [0, 3],
    "sharing": True, "order": "non-decreasing",
}
PROFILE: dict[str, Any] = {
    "schema_version": 1, "name": "bad", "description": "a test profile", "transport": "adb",
    "runtimes": ["executorch"], "threads": 2, "cpus": [6, 7],
    "adb": {"serial": "X", "thermal_zones": ["BIG"], "expect_model": ["Pixel 7"]},
    "cooldown": {"max_temp_c": 42.0, "wait_s": 1.0, "max_wait_s": 10.0, "pause_s": 0.0},
    "sentinel": {"every": 16, "threshold": 0.1},
    "measure": {"warmup": 1, "min_repeats": 3, "max_repeats": 6, "target_spread": 1.15,
                "max_seconds": 1.0, "timeout_s": 60.0, "passes": 1},
}
# what an error message must never show: Python's own words
PYTHON = ("Traceback", "not supported between", "NoneType", "object has no attribute",
          "unhashable", "<class", "invalid literal", "could not convert")


# -- writing files -------------------------------------------------------------------------------

def toml_value(v: Any) -> str:
    """One TOML value (scalars, lists, inline tables), written the way a person would type it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (or invalid TOML, which must be refused)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table (bare keys only)
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_doc(d: dict[str, Any]) -> str:
    """A TOML document: top-level keys, then one [table] per dict value."""
    lines = [f"{k} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for name, table in d.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `base` with keys replaced; "table.key" reaches into a table, "block.key"
    into the card's first block, and the value DROP removes the key."""
    d = json.loads(json.dumps(base))
    for key, value in changes.items():
        where, _, k = key.rpartition(".")
        target = d["blocks"][0] if where == "block" else d[where] if where else d
        if value is DROP:
            del target[k]
        else:
            target[k] = value
    return d


DROP = object()


def junk(seed: int, n: int = 300) -> bytes:
    """Random bytes that are surely not UTF-8 (a lone continuation byte leads)."""
    return b"\x80" + random.Random(seed).randbytes(n)


# -- the cases -----------------------------------------------------------------------------------
# (id, file content: a dict to serialize, raw text, or bytes; a fragment the message must hold)

CARD_CASES: list[tuple[str, Any, str]] = [
    ("random-bytes", junk(1), "not UTF-8 text"),
    ("binary", b"\x00\x01\x02\xfe\xff\x00", "not UTF-8 text"),
    ("not-json", "{ nope", "not valid JSON (line 1"),
    ("top-level-list", "[1, 2]", "the top level must be an object"),
    ("nested-too-deep", "[" * 100_000, "not valid JSON"),
    ("duplicate-key", '{"schema_version": 1, "schema_version": 1}', "appears twice"),
    ("vocab-1e308", changed(CARD, vocab=1e308), "vocab must be a whole number, got 1e+308"),
    ("vocab-huge", changed(CARD, vocab=10**30), "vocab must be from 1 to 2097152"),
    ("vocab-400-digits", json.dumps(CARD).replace('"vocab": 256', '"vocab": ' + "9" * 400),
     "vocab must be a whole number, got a number of 400 digits"),
    ("vocab-1.5", changed(CARD, vocab=1.5), "vocab must be a whole number, got 1.5"),
    ("vocab-string", changed(CARD, vocab="x"), 'vocab must be a whole number, got the string "x"'),
    ("ffn-nan", json.dumps(changed(CARD, **{"block.ffn_ratio": math.nan})),
     "blocks[0].ffn_ratio must be a finite number, got NaN"),
    ("ffn-infinity", json.dumps(changed(CARD, **{"block.ffn_ratio": math.inf})),
     "blocks[0].ffn_ratio must be a finite number, got Infinity"),
    ("ffn--infinity", json.dumps(changed(CARD, **{"block.ffn_ratio": -math.inf})),
     "got -Infinity"),
    ("ffn-string", changed(CARD, **{"block.ffn_ratio": "2.0"}), "without quotes"),
    ("ffn-too-big", changed(CARD, **{"block.ffn_ratio": 1e9}), "ffn_ratio 1000000000.0 is outside"),
    ("depth-10**12", changed(CARD, **{"block.depth": 10**12}),
     "block 0 has depth 1000000000000; the most is 1024"),
    ("depth-2.7", changed(CARD, **{"block.depth": 2.7}),
     "blocks[0].depth must be a whole number, got 2.7"),
    ("depth-true", changed(CARD, **{"block.depth": True}),
     "blocks[0].depth must be a whole number, got true"),
    ("total-depth", changed(CARD, blocks=[CARD["blocks"][0] | {"depth": 600}] * 2),
     "1200 layers in all; the most is 1024"),
    ("width-string", changed(CARD, **{"block.width": "64"}),
     'blocks[0].width must be a whole number, got the string "64"'),
    ("width-64.0", changed(CARD, **{"block.width": 64.0}), "write 64, without a decimal point"),
    ("width-false", changed(CARD, **{"block.width": False}), "got false"),
    ("width-huge", changed(CARD, **{"block.width": 1 << 20, "block.heads": 1 << 16}),
     "width 1048576 is outside 1..65536"),
    ("context-huge", changed(CARD, context=1 << 40), "context must be from 1 to 1048576"),
    ("kv-heads-in-block", changed(CARD, **{"block.kv_heads": 2}),
     "blocks[0] has unknown keys ['kv_heads']; known: ['depth', 'ffn_ratio', 'heads', 'shared',"),
    ("unknown-top-key", changed(CARD, layers=12), "unknown keys ['layers']; known:"),
    ("tied-head-no", changed(CARD, tied_head="no"),
     'tied_head must be true or false, got the string "no"'),
    ("tied-head-1", changed(CARD, tied_head=1), "tied_head must be true or false, got 1"),
    ("bias-string-true", changed(CARD, bias="true"), "bias must be true or false"),
    ("shared-0", changed(CARD, **{"block.shared": 0}), "blocks[0].shared must be true or false"),
    ("blocks-object", changed(CARD, blocks={}), "blocks must be a list of objects"),
    ("blocks-of-numbers", changed(CARD, blocks=[3]), "blocks[0] must be an object"),
    ("blocks-empty", changed(CARD, blocks=[]), "no blocks"),
    ("blocks-missing", changed(CARD, blocks=DROP), "missing field 'blocks'"),
    ("width-missing", changed(CARD, **{"block.width": DROP}), "blocks[0] is missing field 'width'"),
    ("meta-3", changed(CARD, meta=3), "meta must be an object"),
    ("meta-nan", json.dumps(changed(CARD, meta={"loss": [1.0, math.nan]})),
     "meta.loss[1] must be a finite number, got NaN"),
    ("positions-3", changed(CARD, positions=3), 'positions must be one of "learned", "rope"'),
    ("positions-alibi", changed(CARD, positions="alibi"), 'got the string "alibi"'),
    ("embed-width-string", changed(CARD, embed_width="32"), "embed_width must be a whole number"),
    ("heads-mismatch", changed(CARD, **{"block.heads": 3}), "has 3 heads but width 64"),
    ("name-number", changed(CARD, name=7), "name must be a string, got 7"),
    ("name-lone-surrogate", json.dumps(CARD).replace('"tiny"', '"\\ud800"'), "not valid Unicode"),
    ("schema-true", changed(CARD, schema_version=True), "schema_version must be the integer 1"),
    ("schema-string", changed(CARD, schema_version="1"), "schema_version must be the integer 1"),
    ("schema-3", changed(CARD, schema_version=3), "schema_version 3 is not supported"),
    ("schema-missing", changed(CARD, schema_version=DROP), "missing field 'schema_version'"),
]

SPACE_CASES: list[tuple[str, Any, str]] = [
    ("random-bytes", junk(2), "not UTF-8 text"),
    ("binary", b"\xff\xfe\x00\x00", "not UTF-8 text"),
    ("not-toml", "widths = [1, 2\n", "not valid TOML"),
    ("integer-5000-digits", toml_doc(SPACE) + "x = " + "9" * 5000 + "\n", "not valid TOML"),
    ("vocab-1e308", changed(SPACE, vocab=1e308), "vocab must be a whole number, got 1e+308"),
    ("vocab-float", changed(SPACE, vocab=256.0), "write 256, without a decimal point"),
    ("vocab-string", changed(SPACE, vocab="256"), 'got the string "256"'),
    ("vocab-huge", changed(SPACE, vocab=2**62), "vocab must be from 1 to 2097152"),
    ("ffn-nan", changed(SPACE, ffn_ratios=[math.nan]), "ffn_ratios[0] must be a finite number"),
    ("ffn-inf", changed(SPACE, ffn_ratios=[1.0, math.inf]), "ffn_ratios[1] must be a finite"),
    ("ffn-string", changed(SPACE, ffn_ratios=["2.0"]), "without quotes"),
    ("depth-10**12", changed(SPACE, depth=[0, 10**12]), "over 1024 layers"),
    ("depth-2.5", changed(SPACE, depth=[0, 2.5]), "depth[1] must be a whole number, got 2.5"),
    ("depth-scalar", changed(SPACE, depth=3), "depth must be a list of 2 whole numbers, got 3"),
    ("depth-three", changed(SPACE, depth=[0, 1, 2]), "a list of 2 whole numbers, got a list of 3"),
    ("max-blocks-huge", changed(SPACE, max_blocks=10**12), "max_blocks must be from 1 to 64"),
    ("max-blocks-true", changed(SPACE, max_blocks=True), "max_blocks must be a whole number"),
    ("sharing-1", changed(SPACE, sharing=1), "sharing must be true or false, got 1"),
    ("sharing-no", changed(SPACE, sharing="no"), 'got the string "no"'),
    ("unknown-key", changed(SPACE, kv_groups=2), "unknown keys ['kv_groups']; known: ['context',"),
    ("v2-key-in-v1", changed(SPACE, kv_heads=2),
     "kv_heads is a version 2 key: set schema_version = 2"),
    ("order-up", changed(SPACE, order="up"), 'order must be one of "non-decreasing", "any"'),
    ("widths-nested", changed(SPACE, widths=[[32]]), "widths[0] must be a whole number"),
    ("widths-scalar", changed(SPACE, widths=64), "widths must be a list of whole numbers"),
    ("widths-many", changed(SPACE, head_dim=1, widths=list(range(1, 200))), "the most is 64"),
    ("embed-width-negative", changed(SPACE, embed_width=-1), "embed_width must be a whole number"),
    ("schema-string", changed(SPACE, schema_version="1"), "schema_version must be the integer 1"),
    ("schema-missing", changed(SPACE, schema_version=DROP), "missing field 'schema_version'"),
]

PROFILE_CASES: list[tuple[str, Any, str]] = [
    ("random-bytes", junk(3), "not UTF-8 text"),
    ("binary", b"\x00\xc0\xc1", "not UTF-8 text"),
    ("not-toml", "transport = 'local'\nthreads = [\n", "not valid TOML"),
    ("wait-inf", changed(PROFILE, **{"cooldown.wait_s": math.inf}),
     "[cooldown].wait_s must be a finite number from 0 to 3600, got inf"),
    ("max-wait-nan", changed(PROFILE, **{"cooldown.max_wait_s": math.nan}), "got nan"),
    ("temp-string", changed(PROFILE, **{"cooldown.max_temp_c": "42"}), "without quotes"),
    ("warmup-2.5", changed(PROFILE, **{"measure.warmup": 2.5}),
     "[measure].warmup must be a whole number from 0 to 100000, got 2.5"),
    ("warmup-true", changed(PROFILE, **{"measure.warmup": True}), "got true"),
    ("repeats-negative", changed(PROFILE, **{"measure.min_repeats": -1}), "min_repeats must be"),
    ("repeats-crossed", changed(PROFILE, **{"measure.max_repeats": 2}),
     "max_repeats must be at least min_repeats (3)"),
    ("timeout-zero", changed(PROFILE, **{"measure.timeout_s": 0.0}), "above 0"),
    ("sentinel-every-0", changed(PROFILE, **{"sentinel.every": 0}), "[sentinel].every must be"),
    ("threads-string", changed(PROFILE, threads="2"), "threads must be a whole number"),
    ("threads-float", changed(PROFILE, threads=2.0), "write 2, without a decimal point"),
    ("cpus-bool", changed(PROFILE, cpus=[True]), "cpus[0] must be a whole number"),
    ("cpus-string", changed(PROFILE, cpus="6,7"), "cpus must be a list of whole numbers"),
    ("runtimes-string", changed(PROFILE, runtimes="executorch"), "runtimes must be a list"),
    ("runtimes-unknown", changed(PROFILE, runtimes=["tflite"]), "runtimes[0] must be one of"),
    ("unknown-measure-key", changed(PROFILE, **{"measure.warmpu": 3}),
     "[measure] has unknown keys ['warmpu']"),
    ("unknown-top-key", changed(PROFILE, thread=2), "unknown keys ['thread']"),
    ("cooldown-not-table", changed(PROFILE, cooldown=3), "[cooldown] must be a table, got 3"),
    ("serial-number", changed(PROFILE, **{"adb.serial": 3}), "[adb].serial must be a string"),
    ("zones-string", changed(PROFILE, **{"adb.thermal_zones": "BIG"}),
     "[adb].thermal_zones must be a list of strings"),
    ("auth-timeout-nan", changed(PROFILE, **{"adb.auth_timeout_s": math.nan}),
     "[adb].auth_timeout_s must be a finite number"),
    ("adb-extra-inf", changed(PROFILE, **{"adb.my_setting": math.inf}),
     "[adb].my_setting must be a finite number"),
    ("name-number", changed(PROFILE, name=7), "name must be a string, got 7"),
    ("cache-inf", changed(PROFILE, cache_mb=math.inf), "cache_mb must be a positive number"),
    ("transport-missing", changed(PROFILE, transport=DROP), "missing field 'transport'"),
    ("transport-unknown", changed(PROFILE, transport="pigeon"), "transport must be one of"),
    ("schema-2", changed(PROFILE, schema_version=2), "schema_version 2 is not supported"),
]


def write(path: Path, content: Any, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content) if fmt == "json" else toml_doc(content),
                        encoding="utf-8")
    return path


def check_message(message: str, path: Path, fragment: str) -> None:
    """One line that names the file and holds `fragment`, in the user's words."""
    assert "\n" not in message, message
    assert str(path) in message, message
    assert fragment in message, message
    assert not any(p in message for p in PYTHON), message


def cli_fails(monkeypatch, capsys, fragment: str, *args: str) -> str:
    """Run the CLI: exit code 2, stderr one line "error: ..." holding `fragment`."""
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2, (code, out, err)
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in err and "Traceback" not in err + out, err
    return err


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: raise TimeoutError after `seconds` (the main thread's alarm)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def ids(cases: list[tuple[str, Any, str]]) -> list[str]:
    return [c[0] for c in cases]


# -- cards ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,fragment", CARD_CASES, ids=ids(CARD_CASES))
def test_bad_card_is_one_clear_error(tmp_path, monkeypatch, capsys, name, content, fragment):
    path = write(tmp_path / "card.json", content, "json")
    with deadline(20), pytest.raises(UserError) as e:
        load_card(path)
    check_message(str(e.value), path, fragment)
    with deadline(20):
        cli_fails(monkeypatch, capsys, fragment, "info", str(path), "--workspace", str(tmp_path))


def test_a_card_is_read_exactly_as_written(tmp_path):
    d = changed(CARD, name="modèle", embed_width=32, tied_head=False,
                meta={"steps": [1, 2], "nested": {"ok": None, "loss": 2.5}})
    d["blocks"] = [d["blocks"][0] | {"ffn_ratio": 4}, d["blocks"][0] | {"shared": True}]
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(d).encode())  # a byte-order mark is fine
    card = load_card(path)
    assert card.name == "modèle" and card.embed_width == 32 and card.tied_head is False
    ratio = card.blocks[0].ffn_ratio
    assert ratio == 4.0 and type(ratio) is float  # a JSON integer is a fine real number
    assert card.blocks[1].shared is True and card.meta == d["meta"]
    assert card.to_json() == d


def test_shipped_cards_load_and_save_atomically(tmp_path):
    root = Path(__file__).parents[1]
    paths = sorted((root / "models").glob("*.json")) + sorted(
        (root / "merino_mobile" / "data" / "models").glob("*.json"))
    assert len(paths) >= 8
    for i, p in enumerate(paths):
        card = load_card(p)
        again = load_card(save_card(card, tmp_path / str(i) / p.name))
        assert again == card and again.meta == card.meta
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".json"]
    assert leftovers == []  # save_card writes through a temporary file and a rename


def test_cards_built_in_python_are_bounded_too():
    block = Block(width=64, ffn_ratio=2.0, heads=4, depth=MAX_DEPTH + 1)
    with pytest.raises(UserError, match="the most is 1024"):
        Card(name="deep", vocab=256, context=64, head_dim=16, blocks=(block,))
    with pytest.raises(UserError, match=r"ffn_ratio nan is outside"):
        Card(name="nan", vocab=256, context=64, head_dim=16,
             blocks=(Block(width=64, ffn_ratio=math.nan, heads=4, depth=1),))
    deepest = Card(name="ok", vocab=256, context=64, head_dim=16,
                   blocks=(Block(64, 2.0, 4, MAX_DEPTH // 2),) * 2)
    assert deepest.depth == MAX_DEPTH


def test_the_deepest_card_is_counted_quickly(tmp_path, monkeypatch, capsys):
    """At the depth limit, `info` still answers at once (accounting walks every layer)."""
    d = changed(CARD, **{"block.depth": MAX_DEPTH})
    path = write(tmp_path / "deep.json", d, "json")
    with deadline(20):
        code, out, err = run(monkeypatch, capsys, "info", str(path), "--json",
                             "--workspace", str(tmp_path))
    assert code == 0, err
    assert json.loads(out)["depth"] == MAX_DEPTH


# values a JSON file can hold, including the ones Python's reader lets through (NaN, Infinity)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)
CARD_FIELDS = [k for k in CARD if k != "blocks"] + [f"block.{k}" for k in CARD["blocks"][0]]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(CARD_FIELDS), value=json_values)
def test_any_card_field_value_is_refused_or_kept_exactly(tmp_path_factory, key, value):
    path = write(tmp_path_factory.mktemp("card") / "c.json", changed(CARD, **{key: value}), "json")
    try:
        card = load_card(path)
    except UserError as e:
        check_message(str(e), path, "")
        return
    where, _, k = key.rpartition(".")
    got = card.to_json()["blocks"][0][k] if where else card.to_json()[k]
    want = CARD["blocks"][0][k] if where else CARD[k]
    if k in ("ffn_ratio",):
        assert type(got) is float and got == value and math.isfinite(got)
    elif k == "meta":
        assert got == value
    elif k == "embed_width":
        assert got == value and (got is None or type(got) is int)
    else:  # the same value, of the same type as the shipped value's
        assert got == value and type(got) is type(want)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_any_bytes_as_a_card_space_or_profile_are_read_or_refused(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("bytes")
    for name, load in (("c.json", load_card), ("s.toml", load_space), ("p.toml", read_profile)):
        path = write(folder / name, data, "")
        try:
            load(path)
        except UserError as e:
            check_message(str(e), path, "")


def test_folders_and_pipes_are_not_files(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    for load in (load_card, load_space, read_profile):
        with pytest.raises(UserError, match="is a folder"):
            load(folder)
    cli_fails(monkeypatch, capsys, "is a folder, not a card file", "info", str(folder),
              "--workspace", str(tmp_path))
    cli_fails(monkeypatch, capsys, "is a folder, not a search space file", "design", "--params",
              "1M", "--space", str(folder), "--workspace", str(tmp_path))
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(UserError, match="not a regular file"):
        load_card(fifo)
    # a folder named like a profile is not one: it is not listed
    (tmp_path / "devices" / "odd.toml").mkdir(parents=True)
    assert "odd" not in Workspace.resolve(tmp_path).names("devices", ".toml")


# -- search spaces -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,fragment", SPACE_CASES, ids=ids(SPACE_CASES))
def test_bad_space_is_one_clear_error(tmp_path, monkeypatch, capsys, name, content, fragment):
    path = write(tmp_path / "search" / "bad.toml", content, "toml")
    with deadline(20), pytest.raises(UserError) as e:
        load_space(path)
    check_message(str(e.value), path, fragment)
    with deadline(20):
        cli_fails(monkeypatch, capsys, fragment, "design", "--params", "1M", "--space",
                  str(path), "--workspace", str(tmp_path))


def test_a_space_is_read_exactly_as_written(tmp_path):
    path = write(tmp_path / "s.toml", changed(SPACE, ffn_ratios=[1, 2.5], embed_width=32), "toml")
    space = load_space(path)
    assert space.ffn_ratios == (1.0, 2.5) and all(type(r) is float for r in space.ffn_ratios)
    assert space.widths == (32, 48, 64, 96) and space.embed_width == 32
    assert (space.min_depth, space.max_depth, space.sharing) == (0, 3, True)


def typed_space(space: Space) -> None:
    for name in ("vocab", "context", "head_dim", "max_blocks", "min_depth", "max_depth"):
        assert type(getattr(space, name)) is int, name
    assert all(type(w) is int for w in space.widths)
    assert all(type(r) is float and math.isfinite(r) for r in space.ffn_ratios)
    assert type(space.sharing) is bool and type(space.tied_head) is bool
    assert type(space.name) is str and space.order in ("any", "non-decreasing")
    assert space.max_blocks * space.max_depth <= MAX_DEPTH


toml_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10))
toml_values = toml_scalars | st.lists(toml_scalars, max_size=4)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(list(SPACE)), value=toml_values)
def test_any_space_value_is_refused_or_typed(tmp_path_factory, key, value):
    path = write(tmp_path_factory.mktemp("space") / "s.toml", changed(SPACE, **{key: value}),
                 "toml")
    try:
        space = load_space(path)
    except UserError as e:
        check_message(str(e), path, "")
        return
    typed_space(space)


def test_shipped_spaces_load():
    root = Path(__file__).parents[1]
    for p in [root / "search" / "default.toml",
              root / "merino_mobile" / "data" / "search" / "default.toml"]:
        typed_space(load_space(p))


# -- device profiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,fragment", PROFILE_CASES, ids=ids(PROFILE_CASES))
def test_bad_profile_is_one_clear_error(tmp_path, monkeypatch, capsys, name, content, fragment):
    path = write(tmp_path / "devices" / "bad.toml", content, "toml")
    with deadline(20), pytest.raises(UserError) as e:
        read_profile(path)
    check_message(str(e.value), path, fragment)
    with deadline(20):
        cli_fails(monkeypatch, capsys, fragment, "profile", "--device", "bad", "--workspace",
                  str(tmp_path))
    # `devices` lists the broken profile with the same reason, beside the others
    code, out, err = run(monkeypatch, capsys, "devices", "--workspace", str(tmp_path), "--json")
    rows = json.loads(out)["devices"]
    assert code == 0 and any(r["name"] is None and fragment in r["error"] for r in rows), out
    assert any(r["name"] == "host" for r in rows)


def test_a_profile_is_read_exactly_as_written(tmp_path):
    d = changed(PROFILE, **{"adb.expect_model": "Pixel 7", "adb.auth_timeout_s": 5,
                            "cooldown.wait_s": 2, "adb.custom": {"k": [1, "two"]}})
    prof = read_profile(write(tmp_path / "p.toml", d, "toml"))
    assert prof.adb is not None and prof.adb.extra == {
        "thermal_zones": ["BIG"], "expect_model": "Pixel 7", "auth_timeout_s": 5.0,
        "custom": {"k": [1, "two"]}}
    assert prof.cooldown.wait_s == 2.0 and type(prof.cooldown.wait_s) is float
    assert prof.cpus == (6, 7) and prof.runtimes == ("executorch",)


def typed_profile(prof: Any) -> None:
    assert type(prof.name) is str and type(prof.description) is str
    assert type(prof.threads) is int and prof.threads >= 1
    assert all(type(c) is int and c >= 0 for c in prof.cpus)
    for table in (prof.cooldown, prof.sentinel, prof.measure):
        for k, v in vars(table).items():
            assert v is None or type(v) in (int, float), k
            assert v is None or math.isfinite(v), k
    assert type(prof.measure.warmup) is int and type(prof.sentinel.every) is int
    assert prof.measure.min_repeats <= prof.measure.max_repeats


PROFILE_FIELDS = [k for k, v in PROFILE.items() if not isinstance(v, dict)] + [
    f"{t}.{k}" for t, v in PROFILE.items() if isinstance(v, dict) for k in v]


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(PROFILE_FIELDS), value=toml_values)
def test_any_profile_value_is_refused_or_typed(tmp_path_factory, key, value):
    path = write(tmp_path_factory.mktemp("profile") / "p.toml",
                 changed(PROFILE, **{key: value}), "toml")
    try:
        prof = read_profile(path)
    except UserError as e:
        check_message(str(e), path, "")
        return
    typed_profile(prof)


def test_shipped_profiles_load():
    root = Path(__file__).parents[1]
    paths = sorted((root / "devices").glob("*.toml")) + sorted(
        (root / "merino_mobile" / "data" / "devices").glob("*.toml"))
    assert len(paths) >= 10
    for p in paths:
        typed_profile(read_profile(p))

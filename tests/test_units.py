import pytest

from merino_mobile.errors import UserError
from merino_mobile.units import Range, parse_bytes, parse_count, parse_latency_ms, parse_range


@pytest.mark.parametrize("text,ms", [("50ms", 50), ("0.05s", 50), ("800us", 0.8), ("1.5 s", 1500)])
def test_latency_units(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text,n", [("60M", 60e6), ("2G", 2e9), ("350k", 350e3),
                                    ("60000000", 60e6)])
def test_counts(text, n):
    assert parse_count(text) == pytest.approx(n)


@pytest.mark.parametrize("text,n", [("200MB", 200e6), ("1.5GiB", 1.5 * 2**30), ("512KiB", 2**19)])
def test_bytes(text, n):
    assert parse_bytes(text) == pytest.approx(n)


@pytest.mark.parametrize("parse,text,fragment", [
    (parse_latency_ms, "50", "has no unit: write 50ms or 50s"),
    (parse_latency_ms, "50 parsecs", "unknown time unit"),
    (parse_latency_ms, "-5ms", "cannot read"),
    (parse_latency_ms, "0ms", "must be positive"),
    (parse_count, "60", "missing a unit"),
    (parse_count, "60Q", "unknown unit"),
    (parse_bytes, "200", "has no unit"),
    (parse_bytes, "200mb", "unknown size unit"),
])
def test_bad_budgets_name_an_accepted_form(parse, text, fragment):
    with pytest.raises(UserError) as e:
        parse(text)
    assert fragment in str(e.value)
    assert "for example" in str(e.value) or "accepted" in str(e.value)


def test_range():
    r = parse_range("10ms:30ms:10ms", parse_latency_ms, "--latency")
    assert isinstance(r, Range) and r.values() == [10, 20, 30]
    assert parse_range("20M", parse_count, "--params") == 20e6
    with pytest.raises(UserError, match="start:stop:step"):
        parse_range("10ms:30ms", parse_latency_ms, "--latency")

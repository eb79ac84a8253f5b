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


@pytest.mark.parametrize("parse,text,fragment", [
    (parse_count, "1e999", "too large to be a number"),
    (parse_count, "1e999M", "too large to be a number"),
    (parse_count, "1e308G", "too large"),  # finite, but not once scaled to parameters
    (parse_latency_ms, "inf", "not a finite number"),
    (parse_latency_ms, "infms", "not a finite number"),
    (parse_latency_ms, "-Infinity s", "not a finite number"),
    (parse_latency_ms, "1e999ms", "too large to be a number"),
    (parse_latency_ms, "1e-322us", "too small to be positive"),
    (parse_latency_ms, "1e-400ms", "must be positive"),
    (parse_bytes, "nan", "not a finite number"),
    (parse_bytes, "NaNMB", "not a finite number"),
    (parse_bytes, "1e999GiB", "too large to be a number"),
    (parse_bytes, "0B", "must be positive"),
])
def test_budgets_that_are_not_finite_positive_numbers_are_refused(parse, text, fragment):
    with pytest.raises(UserError) as e:
        parse(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert "for example" in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    ("1M:1e999:1M", "too large to be a number"),
    ("1M:inf:1M", "not a finite number"),
    ("nan:2M:1M", "not a finite number"),
    ("1M:2M:0M", "must be positive"),
    ("2M:1M:1M", "ends before it starts"),
    ("1M:2M:1M:1M", "start:stop:step"),
])
def test_bad_ranges_are_refused(text, fragment):
    with pytest.raises(UserError, match=fragment):
        parse_range(text, parse_count, "--params")


def test_range_counts_exactly_however_small_the_step():
    assert 10**299 < Range(1.0, 2.0, 1e-300).count() < 10**301
    assert Range(0.1, 0.3, 0.1).count() == 3  # decimal steps reach the stop
    assert Range(5.0, 5.0, 1.0).values() == [5.0]
    with pytest.raises(UserError, match="finite positive"):
        Range(1.0, float("inf"), 1.0)

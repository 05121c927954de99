
import pytest
import typer

from fewstep.core import checks


def test_counts_and_reals_refuse_what_is_out_of_range():
    n = checks.count(1, 100)
    assert n.parse("5") == 5 and n.parse("1_000".replace("1_000", "100")) == 100
    for bad in ("0", "-1", "101", "nan", "1.5", "abc", "1e3"):
        with pytest.raises(ValueError, match="must be an integer >= 1 and <= 100"):
            n.parse(bad)
    r = checks.real(0, 10, lo_open=True)
    assert r.parse("2.5") == 2.5
    for bad in ("0", "-1", "nan", "inf", "-inf", "1e308", "11"):
        with pytest.raises(ValueError, match="finite number > 0"):
            r.parse(bad)
    with pytest.raises(typer.BadParameter):
        r("nan")
    assert checks.count(1, 10, sentinel=0, meaning="the model's own").parse("0") == 0


def test_int_lists_and_save_every():
    assert checks.int_list(1, 50).parse("5, 10,20") == (5, 10, 20)
    with pytest.raises(ValueError, match="'a' is not an integer"):
        checks.int_list().parse("5,a")
    assert checks.parse_save_every("2m") == checks.SaveEvery(seconds=120.0)
    assert checks.parse_save_every("250it").fields() == {"save_every": 250, "save_every_seconds": None}
    for bad in ("5", "0s", "0it", "1.5it", "2 weeks"):
        with pytest.raises(ValueError):
            checks.parse_save_every(bad)


def test_check_fits_refuses_before_allocating():
    checks.check_fits(1024, "a buffer", "lower --n")
    with pytest.raises(ValueError, match="needs .* GiB but only .* free; lower --n"):
        checks.check_fits(1 << 60, "a buffer", "lower --n")

"""Every numeric option of every fewstep CLI is checked at the boundary: 0, negative, NaN, inf and
absurd sizes are refused while the command line is parsed (before any work) with a message naming
the option, or accepted because the option documents that value."""

import pytest
from typer.testing import CliRunner

from fewstep.core import checks

from .harness import PROBES, accepted, numeric_options, package_clis

OPTIONS = numeric_options()
IDS = [f"{cli}-{cmd}-{opt}" for cli, cmd, opt, _ in OPTIONS]


def test_the_harness_sees_every_package_cli():
    assert {"fewstep", "fewstep-image", "fewstep-ts"} <= set(package_clis())
    assert len(OPTIONS) > 40


@pytest.mark.parametrize("cli, command, option, parser", OPTIONS, ids=IDS)
def test_every_numeric_option_declares_its_range(cli, command, option, parser):
    assert isinstance(parser, (checks.Number, checks.IntList)), (
        f"{cli} {command} {option} takes a number without a fewstep.core.checks parser: give it "
        f"parser=checks.count(...) / checks.real(...) / checks.seed() so bad values stop before any work"
    )


@pytest.mark.parametrize("cli, command, option, parser", OPTIONS, ids=IDS)
def test_out_of_range_numbers_are_refused_before_any_work(cli, command, option, parser):
    app = package_clis()[cli]
    for probe in PROBES:
        if accepted(parser, probe):
            assert probe not in ("nan", "inf", "-inf", "1e308", "1000000000000000", "abc"), (cli, command, option, probe)
            continue
        r = CliRunner().invoke(app, [command, option, probe], env={"COLUMNS": "300"})
        assert r.exit_code == 2, (cli, command, option, probe, r.output)
        assert f"Invalid value for '{option}'" in r.output and "must be" in r.output, r.output
        assert "Traceback" not in r.output


@pytest.mark.parametrize("text", ["0s", "5", "abc", "-2m", "1.5it", "0it", "30d"])
def test_save_every_needs_a_unit_and_a_sane_value(text):
    app = package_clis()["fewstep-image"]
    r = CliRunner().invoke(app, ["train-teacher", "digits", "--out", "x", "--save-every", text], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "Invalid value for '--save-every'" in r.output, r.output


@pytest.mark.parametrize("text", ["a,b", "5,,x", "0,5", ""])
def test_int_lists_name_the_option(text):
    app = package_clis()["fewstep-image"]
    r = CliRunner().invoke(app, ["demo", "--nfe", text], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "Invalid value for '--nfe'" in r.output, r.output

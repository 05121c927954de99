"""The reliability scenarios over ``fewstep-ts``: training TSDiff on a built-in dataset."""

from fewstep.timeseries.model import load_tsdiff

from .harness import Writer, scenario_tests


def _tsdiff(out):
    den = load_tsdiff(out)
    assert den.card.provenance["tsdiff"]["prediction_length"] > 0


WRITERS = [
    Writer("ts-train", lambda out: ["fewstep.timeseries.cli", "train", "--dataset", "seasonal", "--iterations", "3", "--hidden", "16",
                                    "--layers", "1", "--save-every", "1it", "--out", str(out)], _tsdiff,
           work=lambda out: out.with_name(out.name + ".run"), changed=("--seed", "5"), key="train.seed: 0 -> 5"),
]

globals().update(scenario_tests(WRITERS))

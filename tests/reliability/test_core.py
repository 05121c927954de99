"""The reliability scenarios over the core CLI (``fewstep``): prune writes a checkpoint."""

from fewstep.core.checkpoints import load_denoiser

from .harness import Writer, scenario_tests


def _pruned(out):
    den = load_denoiser(out)
    assert den.card.provenance["pruned_from"] == "digits-teacher"


WRITERS = [
    Writer("fewstep-prune", lambda out: ["fewstep.core.cli", "prune", "digits-teacher", "--iterations", "1", "--batch", "1",
                                         "--num-steps", "2", "--out", str(out)], _pruned),
]

globals().update(scenario_tests(WRITERS))

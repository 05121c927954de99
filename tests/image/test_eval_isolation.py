"""No method is ever handed the evaluation network: rewards and searches use the reward classifier
(the other half of the train split, another seed), and a method trains and a grid search runs with
the evaluation classifier made unloadable."""

from pathlib import Path

import pytest

from fewstep.core.distill import DistillConfig, distill, make_objective
from fewstep.core.io import read_card
from fewstep.core.train import TrainConfig
from fewstep.core.tuning import SearchConfig
from fewstep.image import classifier as clf
from fewstep.image import quality, rewards
from fewstep.image.data import load_dataset
from fewstep.image.grid_search import search_grid
from fewstep.image.registry import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_reward_and_evaluation_classifiers_differ_in_data_seed_and_weights(dataset):
    ev, rw = read_card(clf.classifier_path(dataset)), read_card(clf.classifier_path(dataset, "reward"))
    assert rw["role"] == "reward" and rw["train_rows"].startswith("half 1 of the train split")
    assert rw["made"]["seed"] != ev["made"]["seed"]
    assert rewards._tensors_hash(clf.classifier_path(dataset)) != rewards._tensors_hash(clf.classifier_path(dataset, "reward"))
    assert rw["test_accuracy"] > 0.9  # a reward worth optimising: it still recognises the classes


def test_methods_train_and_search_without_the_evaluation_classifier(monkeypatch, tmp_path):
    real_load = clf.load_classifier
    loaded = []

    def guarded(path):
        loaded.append(Path(path).name)
        if Path(path).name.endswith("-classifier") and "-reward-" not in Path(path).name:
            raise AssertionError(f"a method loaded the evaluation classifier {path}")
        return real_load(path)

    for module in (rewards, quality):
        monkeypatch.setattr(module, "load_classifier", guarded)
    for fn in (quality.shipped_classifier, quality._test_features, quality._reward_net, quality._reward_train_features):
        fn.cache_clear()
    teacher = load_model("digits-teacher")
    reward = rewards.classifier_reward("digits")
    x, y = load_dataset("digits", "train")
    cfg = DistillConfig(student_steps=1, train=TrainConfig(iterations=2, batch_size=8, lr=1e-5, warmup_iterations=1, progress=False))
    res = distill(teacher, make_objective("flash-dmd", reward_weight=0.02), cfg, None, data=(x[:64], y[:64]),
                  work_dir=tmp_path / "w", progress=False, reward=reward)
    assert res.student.card.student_steps == 1
    r = search_grid(teacher, SearchConfig(num_steps=2, population=4, iterations=1, topk=2), n=40, progress=False)
    assert r.grid.numel() == 3
    assert loaded and all("-reward-" in name for name in loaded)
    for fn in (quality.shipped_classifier, quality._test_features, quality._reward_net, quality._reward_train_features):
        fn.cache_clear()


def test_searching_on_the_evaluation_itself_is_refused():
    with pytest.raises(ValueError, match="tune the grid on the evaluation itself"):
        search_grid(load_model("digits-teacher"), SearchConfig(num_steps=2), metric="dfd")

"""The project's copy of MedRegA's training mixture, and the option lists read from it."""

from __future__ import annotations

import json

import pytest

from model.training import TRAINING_TASKS_PATH, TrainingSetError, training_set, training_sets

from tests.model.conftest import SHARED


def test_training_tasks_copy_equals_the_reference() -> None:
    reference = SHARED / "medrega-reference" / "training-tasks.json"
    if not reference.is_file():
        pytest.fail(f"{reference} is missing: the project's copy is checked against it")
    assert json.loads(TRAINING_TASKS_PATH.read_text(encoding="utf-8")) == json.loads(reference.read_text(encoding="utf-8"))
    assert len(training_sets()) == 32 and training_set("mimiccxr_train_rg").samples == 354569


def test_options_are_read_from_the_trained_instruction() -> None:
    assert training_set("oct2017_train_cls").options == ("normal", "drusen", "diabetic macular edema", "choroidal neovascularization")
    assert training_set("mura_train_cls").options == ("normal", "abnormal")
    chexpert = training_set("chexpert_train_cls").options
    assert chexpert[0] == "Enlarged Cardiomediastinum" and chexpert[-1] == "No Finding" and len(chexpert) == 14
    assert not any("means" in o for o in chexpert)  # the explanation sentence is no option
    assert len(training_set("vindrcxr_train_cls").options) == 28
    assert training_set("text2region").options == ()
    with pytest.raises(TrainingSetError):
        training_set("no_such_set")

"""Loading from the wrong folder says what the folder is and where the model is."""

from __future__ import annotations

from pathlib import Path

import pytest

import pal_adapters.config  # noqa: F401  (first: pal_adapters.io first meets an import cycle in adapters/)
from pal_adapters.cli import main
from pal_adapters.io import AdapterLoadError
from pal_adapters.save_format import read_model


def run_folder(root: Path) -> Path:
    """What training leaves: best/, last/ and checkpoint/ (its model in checkpoint/model)."""
    for model in ("best", "last", "checkpoint/model"):
        (root / model).mkdir(parents=True)
        (root / model / "pal_config.json").write_text("{}")
    (root / "checkpoint" / "trainer_state.json").write_text("{}")
    return root


def test_a_checkpoint_folder_points_to_its_model(tmp_path):
    run = run_folder(tmp_path / "run")
    with pytest.raises(AdapterLoadError) as err:
        read_model(run / "checkpoint")
    assert str(err.value) == f"{run / 'checkpoint'} is a training checkpoint, not a saved model: " \
                             f"its model is {run / 'checkpoint' / 'model'}"


def test_a_run_folder_lists_the_models_below_it(tmp_path):
    run = run_folder(tmp_path / "run")
    with pytest.raises(AdapterLoadError) as err:
        read_model(run)
    assert str(err.value) == f"{run} holds no pal_config.json; the folders below it that do: " \
                             f"{run / 'best'}, {run / 'last'}"


def test_a_missing_folder_is_reported_as_a_missing_folder(tmp_path):
    with pytest.raises(AdapterLoadError, match=r"^folder \S+nope does not exist$"):
        read_model(tmp_path / "nope")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(AdapterLoadError, match=r"a_file is a file, not a folder$"):
        read_model(tmp_path / "a_file")


def test_predict_on_a_checkpoint_prints_one_line_naming_its_model(tmp_path, capsys):
    run = run_folder(tmp_path / "run")
    assert main(["predict", str(run / "checkpoint"), "a sentence"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run / 'checkpoint'} is a training checkpoint, not a saved model: " \
                  f"its model is {run / 'checkpoint' / 'model'}\n"

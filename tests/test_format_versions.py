"""Format version 3: a task's kind options, max_length and input form are saved; version-2 saves
(which had none of them) still load, with the defaults they get named in a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from helpers import randomize_adapters, tiny_batch, tiny_model

from pal_adapters import MultiTaskModel, TaskConfig, add_pal
from pal_adapters.io import VERSION, file_sha256
from pal_adapters.save_format import CONFIG_FILE, TASK_FIELDS_V3, TASK_FILE, sealed


def _downgrade_to_version_2(folder: Path) -> None:
    """Rewrite a version-3 save as version 2 wrote it: no TASK_FIELDS_V3 in any task, resealed."""
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    for name in config["task_order"]:
        path = folder / "tasks" / name / TASK_FILE
        data = json.loads(path.read_text())
        for field in TASK_FIELDS_V3:
            data["task"].pop(field)
            config["tasks"][name].pop(field)
        data["version"] = 2
        path.write_text(json.dumps(sealed(data)))  # (sealed hashes all but the old content_sha256)
        config["sha256"][f"tasks/{name}/{TASK_FILE}"] = file_sha256(path)
    config["version"] = 2
    config_path.write_text(json.dumps(sealed(config)))


@pytest.fixture
def saved(tmp_path) -> Path:
    model = add_pal(tiny_model("bert"), tasks={
        "qa": TaskConfig(type="extractive_qa", options={"doc_stride": 7}, max_length=64),
        "pair": TaskConfig(num_labels=3, inputs="pair", max_length=32)}, adapter="pal")
    randomize_adapters(model, seed=4)
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_a_saved_task_keeps_its_options_length_and_input_form(saved):
    assert json.loads((saved / CONFIG_FILE).read_text())["version"] == VERSION == 3
    loaded = MultiTaskModel.from_pretrained(saved, backbone=tiny_model("bert"))
    assert loaded.tasks["qa"].options == {"doc_stride": 7} and loaded.tasks["qa"].max_length == 64
    assert loaded.heads["qa"].kind.options["doc_stride"] == 7 and loaded.tasks["qa"].inputs == "question_context"
    assert loaded.tasks["pair"].inputs == "pair" and loaded.tasks["pair"].max_length == 32


def test_a_version_2_save_loads_with_a_warning_that_names_the_defaults_it_gets(saved):
    before = MultiTaskModel.from_pretrained(saved, backbone=tiny_model("bert")).eval()
    _downgrade_to_version_2(saved)
    with pytest.warns(UserWarning) as caught:
        old = MultiTaskModel.from_pretrained(saved, backbone=tiny_model("bert")).eval()
    text = " ".join(str(w.message) for w in caught)
    assert "version-2 save" in text and "['inputs', 'max_length', 'options']" in text
    assert "'doc_stride': 128" in text and "'max_length': 128" in text  # the defaults it now gets, by name
    assert old.tasks["qa"].options == {} and old.heads["qa"].kind.options["doc_stride"] == 128
    assert old.tasks["pair"].inputs is None and old.tasks["pair"].max_length == 128
    batch = tiny_batch()
    with torch.no_grad():  # the weights are the save's, only the reading options are defaults
        assert torch.equal(old(**batch, task="pair").logits, before(**batch, task="pair").logits)


def test_saving_a_version_2_model_again_records_the_fields(saved, tmp_path):
    _downgrade_to_version_2(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = MultiTaskModel.from_pretrained(saved, backbone=tiny_model("bert"))
    old.save_pretrained(tmp_path / "again")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a version-3 save loads without a warning
        again = MultiTaskModel.from_pretrained(tmp_path / "again", backbone=tiny_model("bert"))
    assert json.loads((tmp_path / "again" / CONFIG_FILE).read_text())["tasks"]["qa"]["max_length"] == 128
    assert again.tasks == old.tasks

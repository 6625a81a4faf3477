"""The core imports only what a forward needs, and the command answers --help without torch.

Each check runs in a fresh interpreter (``sys.modules`` of this test process is full of everything).
The list of modules is asserted, not a time: figures are in the README, measured with
``python -X importtime``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TRAINING_ONLY = ("datasets", "sklearn", "scipy", "seqeval", "matplotlib", "pandas", "pyarrow")
HERE = Path(__file__).resolve().parent

FORWARD = """
import json, sys, tempfile
sys.path.insert(0, {here!r})
from helpers import tiny_batch, tiny_model
tiny_model("bert")(**tiny_batch())  # what transformers itself imports for a forward
bare = set(sys.modules)
import torch
from pal_adapters import MultiTaskModel, TaskConfig, add_pal
model = add_pal(tiny_model("bert"), tasks={{"a": 2, "b": TaskConfig(type="token_classification", num_labels=3)}})
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    loaded = MultiTaskModel.from_pretrained(d, backbone=tiny_model("bert"))
with torch.no_grad():
    loaded(**tiny_batch(), task="a"); loaded(**tiny_batch(), task_ids=["a", "b", "a"])
print(json.dumps({{"new": sorted(m.split(".")[0] for m in set(sys.modules) - bare)}}))
"""


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_add_pal_save_load_and_a_forward_import_no_training_library():
    new = set(json.loads(_python(FORWARD.format(here=str(HERE))).splitlines()[-1])["new"])
    assert "pal_adapters" in new  # the check saw the package's own imports
    assert not new & set(TRAINING_ONLY), f"the core imported {sorted(new & set(TRAINING_ONLY))}"


def test_help_version_and_argument_errors_import_no_torch():
    code = """
import sys
from pal_adapters.cli import main
for argv in (["--help"], ["--version"], ["predict", "--help"], ["inspect", "--help"], ["predict"], ["nonsense"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "transformers", "safetensors", "datasets") if m in sys.modules))
"""
    assert _python(code).splitlines()[-1] == "[]"


def test_the_package_api_is_there_and_lists_every_name():
    code = """
import pal_adapters, sys
assert "torch" not in sys.modules
print(all(getattr(pal_adapters, n) is not None for n in pal_adapters.__all__))
print(pal_adapters.add_pal.__module__, pal_adapters.predict_rows.__module__)
"""
    assert _python(code).split() == ["True", "pal_adapters.model", "pal_adapters.predict"]

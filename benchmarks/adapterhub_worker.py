"""AdapterHub side of multitask_inference.py: ``Parallel`` vs a loop of per-adapter forwards.

Runs inside the venv made by benchmarks/adapterhub_env.sh (``adapters`` 1.3.0, transformers 4.x),
started by multitask_inference.py with one JSON argument; prints one JSON object on its last line.
Adapters are SEQUENTIAL bottlenecks (``SeqBnConfig``, after each layer's feed-forward block):
``Parallel`` crashes with parallel bottleneck adapters (``ParBnConfig``) in adapters 1.3.0.
The batch is built by common.padded_inputs with the same seed as ours, so ids and padding match.

    .venv-adapterhub/bin/python benchmarks/adapterhub_worker.py '{"tasks": [1, 2, 4, 8, 16], ...}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    configure_device,
    machine_info,
    padded_inputs,
    pair_ratios,
    paired_timings,
    randomize_,
    summary,
    torch_dtype,
)


def build(spec: dict, num_adapters: int, top_half: bool):
    import adapters
    from adapters import SeqBnConfig
    from transformers import AutoConfig, AutoModel

    if spec.get("path"):
        model = AutoModel.from_pretrained(spec["path"])
    else:
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.for_model("bert", **spec["shape"]))
    adapters.init(model)
    layers = model.config.num_hidden_layers
    leave_out = list(range(layers // 2)) if top_half else []
    config = SeqBnConfig(reduction_factor=spec["reduction_factor"], leave_out=leave_out)
    names = [f"task{i}" for i in range(num_adapters)]
    for name in names:
        model.add_adapter(name, config=config)
    randomize_(model, "adapters.")  # non-zero up-projections, as on our side
    params = sum(p.numel() for n, p in model.named_parameters() if "adapters.task0." in n)
    return model.to(device=spec["device"], dtype=torch_dtype(spec["dtype"])).eval(), names, params


def measure(spec: dict, top_half: bool) -> dict:
    from adapters.composition import Parallel

    model, names, params = build(spec, max(spec["tasks"]), top_half)
    x = padded_inputs(spec["batch"], spec["length"], spec["device"])
    out = {"params_per_task": params}
    for t in spec["tasks"]:
        chosen = names[:t]

        def loop(chosen=chosen):
            for name in chosen:
                model.set_active_adapters(name)
                model(**x)

        def parallel(chosen=chosen):
            model.set_active_adapters(Parallel(*chosen) if len(chosen) > 1 else chosen[0])
            model(**x)

        pairs = paired_timings((loop, None), {"parallel": (parallel, None)}, rounds=spec["rounds"],
                               progress=False)["parallel"]
        out[f"T={t}"] = {"loop_s": summary(pairs["reference"]), "parallel_s": summary(pairs["case"]),
                         "speedup": summary([1 / r for r in pair_ratios(pairs)])}
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    configure_device(spec["device"], spec["threads"], spec.get("clock", "wall"))
    import adapters
    import transformers

    result = {"adapters": adapters.__version__, "transformers": transformers.__version__,
              "machine": machine_info(), "adapter_config": f"SeqBnConfig(reduction_factor={spec['reduction_factor']})"}
    with torch.inference_mode():
        for layers in spec["layers"]:
            result[layers] = measure(spec, top_half=layers == "top_half")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

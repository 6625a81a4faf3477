"""The PEFT plugin (pal_adapters.peft): the ``pal`` method through PEFT's own API.

Runs against the pinned PEFT and fails (never skips) if registration stops working. Every
comparison uses non-trivial adapter weights unless it tests identity at initialisation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ARCHS, hidden, randomize_adapters, tiny_batch, tiny_config, tiny_model
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from transformers import AutoModelForSequenceClassification

import pal_adapters.peft as pal_peft
from pal_adapters import AdapterConfig, add_pal
from pal_adapters.peft import PalPeftConfig, PalPeftModel, from_pal_task, to_pal_task

# PEFT 0.21 itself reads transformers' deprecated `is_gradient_checkpointing`.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

KINDS = {
    "pal": dict(kind="pal", num_heads=2, hidden_size=8, output_activation="gelu"),
    "pal_ffn": dict(kind="pal_ffn", hidden_size=8, ffn_layers=2),
    "low_rank": dict(kind="low_rank", hidden_size=4),
    "lhuc": dict(kind="lhuc"),
}


def peft_of(arch: str, kind: str = "pal", name: str = "default", seed: int = 0, **extra) -> PeftModel:
    return get_peft_model(tiny_model(arch, seed=seed), PalPeftConfig(**KINDS[kind], **extra), adapter_name=name)


def bank(model: PeftModel):
    return model.base_model.bank


def randomize(model: PeftModel, seed: int) -> None:
    randomize_adapters(model, std=0.3, seed=seed)


# ---- registration -------------------------------------------------------------------------------
def test_registration_dispatches_through_peft():
    assert PEFT_TYPE_TO_TUNER_MAPPING["PAL"] is PalPeftModel
    assert PEFT_TYPE_TO_CONFIG_MAPPING["PAL"] is PalPeftConfig
    pal_peft.register()  # idempotent
    config = PeftConfig.from_peft_type(peft_type="PAL", kind="low_rank", layers=[1])
    assert isinstance(config, PalPeftConfig) and config.layers == (1,)
    assert config.adapter_config == AdapterConfig(kind="low_rank", layers=(1,))


def test_bad_field_names_the_valid_ones():
    with pytest.raises(ValueError, match="kind.*pal"):
        PalPeftConfig(kind="lora")


# ---- identity and equality with add_pal ----------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_identity_at_init_every_family(arch):
    batch = tiny_batch()
    expected = hidden(tiny_model(arch), batch)
    model = get_peft_model(tiny_model(arch), PalPeftConfig(**KINDS["pal"], lhuc=True))
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_equal_add_pal_with_same_weights(arch):
    """PEFT and add_pal run the same core: the same weights give the same hidden states."""
    batch = tiny_batch()
    config = AdapterConfig(**KINDS["pal"], lhuc=True)
    multi = add_pal(tiny_model(arch), {"rte": 2}, adapter=config)
    randomize_adapters(multi, seed=3)
    model = get_peft_model(tiny_model(arch), PalPeftConfig.from_adapter_config(config), adapter_name="rte")
    bank(model)["rte"].load_state_dict(multi.bank["rte"].state_dict())
    with multi.use_task("rte"):
        expected = hidden(multi.backbone, batch)
    bare = hidden(tiny_model(arch), batch)
    assert (expected - bare).abs().max() > 1e-2  # the weights matter
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=1e-6)


# ---- several adapters -------------------------------------------------------------------------
def two_task_model(arch: str = "bert"):
    model = peft_of(arch, "pal", name="sst2")
    model.add_adapter("mnli", PalPeftConfig(**KINDS["low_rank"]))
    randomize(model, seed=5)
    return model


def test_switching_gives_each_task_its_own_outputs():
    batch = tiny_batch()
    model = two_task_model()
    multi = add_pal(tiny_model("bert"), {"sst2": {"adapter": AdapterConfig(**KINDS["pal"])},
                                          "mnli": {"adapter": AdapterConfig(**KINDS["low_rank"])}})
    for name in ("sst2", "mnli"):
        multi.bank[name].load_state_dict(bank(model)[name].state_dict())
    outputs = {}
    for name in ("sst2", "mnli", "sst2"):
        model.set_adapter(name)
        outputs[name] = hidden(model, batch)
        with multi.use_task(name):
            torch.testing.assert_close(outputs[name], hidden(multi.backbone, batch), rtol=0, atol=1e-6)
    assert (outputs["sst2"] - outputs["mnli"]).abs().max() > 1e-2
    with model.disable_adapter():
        torch.testing.assert_close(hidden(model, batch), hidden(tiny_model("bert"), batch), rtol=0, atol=0)
    torch.testing.assert_close(hidden(model, batch), outputs["sst2"], rtol=0, atol=0)  # enabled again


def test_set_adapter_trains_only_the_active_one_and_delete_adapter():
    model = two_task_model()
    model.set_adapter("mnli")
    grads = {n.split("pal_adapters.")[1].split(".")[0]: p.requires_grad
             for n, p in model.named_parameters() if "pal_adapters." in n}
    assert grads == {"sst2": False, "mnli": True}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "pal_adapters." not in n)
    model.delete_adapter("mnli")
    assert list(model.peft_config) == ["sst2"] and model.active_adapter == "sst2"
    assert sorted(bank(model).keys()) == ["sst2"]
    with pytest.raises(ValueError, match="cannot be combined"):
        model.base_model.set_adapter(["sst2", "qqp"])


def test_mixed_batch_adapter_names_equal_per_task_forwards():
    batch = tiny_batch(batch=4, pad_rows=(1, 2))
    model = two_task_model()
    names = ["mnli", "sst2", "sst2", "mnli"]
    mixed = hidden(model, {**batch, "adapter_names": names})
    for i, name in enumerate(names):
        model.set_adapter(name)
        row = {k: v[i:i + 1] for k, v in batch.items()}
        torch.testing.assert_close(mixed[i:i + 1], hidden(model, row), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="non-existing adapter.*zzz"):
        model(**batch, adapter_names=["sst2", "sst2", "sst2", "zzz"])


def test_base_rows_in_adapter_names_run_the_bare_backbone():
    batch = tiny_batch(batch=4, pad_rows=(1, 2))
    model = two_task_model()
    names = ["__base__", "sst2", "__base__", "mnli"]
    mixed = hidden(model, {**batch, "adapter_names": names})
    bare = hidden(tiny_model("bert"), batch)  # an independent model without adapters
    for i, name in enumerate(names):
        if name == "__base__":
            torch.testing.assert_close(mixed[i:i + 1], bare[i:i + 1], rtol=0, atol=1e-5)
        else:
            model.set_adapter(name)
            row = {k: v[i:i + 1] for k, v in batch.items()}
            torch.testing.assert_close(mixed[i:i + 1], hidden(model, row), rtol=0, atol=1e-5)
            assert (mixed[i] - bare[i]).abs().max() > 1e-3  # the adapter did act on its rows
    all_base = hidden(model, {**batch, "adapter_names": ["__base__"] * 4})
    torch.testing.assert_close(all_base, bare, rtol=0, atol=1e-5)


# ---- save / load -------------------------------------------------------------------------------
def classifier(seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=3)).eval()


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_pretrained_round_trip_with_classifier(kind, tmp_path):
    batch = tiny_batch()
    model = get_peft_model(classifier(), PalPeftConfig(**KINDS[kind], task_type="SEQ_CLS"), adapter_name="qnli")
    model.add_adapter("cola", PalPeftConfig(**KINDS["pal"], task_type="SEQ_CLS"))
    randomize(model, seed=7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.normal_(std=0.5)
    expected = {}
    for name in ("qnli", "cola"):
        model.set_adapter(name)
        expected[name] = model(**batch).logits
    model.save_pretrained(str(tmp_path))  # adapters other than "default" go in a folder each
    loaded = PeftModel.from_pretrained(classifier(), str(tmp_path / "qnli"), adapter_name="qnli")
    loaded.load_adapter(str(tmp_path / "cola"), adapter_name="cola")
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference by default
    assert (expected["qnli"] - classifier()(**batch).logits).abs().max() > 1e-3
    for name in ("qnli", "cola"):
        loaded.set_adapter(name)
        torch.testing.assert_close(loaded(**batch).logits, expected[name], rtol=0, atol=1e-6)
    trainable = PeftModel.from_pretrained(classifier(), str(tmp_path / "qnli"), is_trainable=True)
    assert {n.split(".")[2] for n, p in trainable.named_parameters() if p.requires_grad} == {"classifier",
                                                                                              "pal_adapters"}


def test_gradient_checkpointing_gives_the_same_adapter_gradients():
    batch = tiny_batch()
    grads = []
    for checkpointing in (False, True):
        model = peft_of("bert", "pal", name="sst2", dropout=0.0)
        randomize(model, seed=13)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        hidden(model, batch).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 8
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_loading_a_file_that_does_not_fit_raises(tmp_path):
    model = peft_of("bert", "pal")
    model.save_pretrained(str(tmp_path))
    config = tmp_path / "adapter_config.json"
    config.write_text(config.read_text().replace('"layers": "all"', '"layers": [0]'))  # now one inner module too many
    with pytest.raises(ValueError, match=r"unexpected \['pal_adapters.default.ts.inner.1"):
        PeftModel.from_pretrained(tiny_model("bert"), str(tmp_path))


def test_trainer_steps_lower_the_loss(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(classifier(), PalPeftConfig(**KINDS["pal"], task_type="SEQ_CLS", dropout=0.0))
    batch = tiny_batch(batch=16, length=8, seed=4, pad_rows=())
    labels = (batch["input_ids"][:, 1] < 66).long()  # learnable from one token
    rows = [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i], "labels": labels[i]}
            for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=20,
                             learning_rate=5e-2, report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < before - 0.05


# ---- merging ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "distilbert", "electra"])
def test_merge_and_unload_lhuc_keeps_outputs(arch):
    batch = tiny_batch()
    model = peft_of(arch, "lhuc")
    randomize(model, seed=9)
    expected = hidden(model, batch)
    merged = model.merge_and_unload()
    assert not any("pal_adapters" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(hidden(merged, batch), expected, rtol=0, atol=1e-5)
    assert (expected - hidden(tiny_model(arch), batch)).abs().max() > 1e-2


@pytest.mark.parametrize(("arch", "kind", "message"), [
    ("bert", "pal", "kind='pal'.*cannot be merged"),
    ("bert", "low_rank", "kind='low_rank'.*cannot be merged"),
    ("modernbert", "lhuc", "pre-LN"),
])
def test_merge_and_unload_refuses_with_a_message(arch, kind, message):
    model = peft_of(arch, kind)
    with pytest.raises(ValueError, match=message):
        model.merge_and_unload()
    assert "pal_adapters" in dict(model.named_modules())["base_model.model"]._modules  # left as it was


def test_unload_restores_the_bare_model():
    batch = tiny_batch()
    model = two_task_model()
    bare = model.unload()
    torch.testing.assert_close(hidden(bare, batch), hidden(tiny_model("bert"), batch), rtol=0, atol=0)


# ---- pal_adapters <-> PEFT ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "albert", "modernbert"])
def test_pal_task_to_peft_and_back_identical_outputs(arch, tmp_path):
    batch = tiny_batch()
    multi = add_pal(tiny_model(arch), {"sst": 2}, adapter=AdapterConfig(**KINDS["pal"], lhuc=True))
    randomize_adapters(multi, seed=11)
    with multi.use_task("sst"):
        expected = hidden(multi.backbone, batch)
    multi.save_task(tmp_path / "sst", "sst")

    model = from_pal_task(tiny_model(arch), tmp_path / "sst")
    assert model.active_adapter == "sst"
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=0)

    to_pal_task(model, tmp_path / "back")
    again = add_pal(tiny_model(arch), {})
    assert again.load_task(tmp_path / "back") == "sst"
    with again.use_task("sst"):
        torch.testing.assert_close(hidden(again.backbone, batch), expected, rtol=0, atol=0)
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=0)  # to_pal_task left it as it was


def test_from_pal_task_checks_the_base_model(tmp_path):
    multi = add_pal(tiny_model("bert"), {"rte": 2}, adapter="lhuc")
    multi.save_task(tmp_path / "rte", "rte")
    other = tiny_model("bert", seed=1)
    with pytest.raises(ValueError, match="other backbone weights"):
        from_pal_task(copy.deepcopy(other), tmp_path / "rte")
    assert not hasattr(other, "pal_adapters")
    with pytest.raises(ValueError, match="another base model"):
        from_pal_task(tiny_model("roberta"), tmp_path / "rte")

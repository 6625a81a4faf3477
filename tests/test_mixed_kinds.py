"""Sequence-level, token-level and span tasks on one backbone: mixed batches equal per-task forwards,
predictions of each task's kind for one input, and one run file training all three through the CLI."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import yaml
from helpers import WORDS, randomize_adapters, toy_backbone, toy_tokenizer

from pal_adapters import TaskConfig, add_pal
from pal_adapters.cli import main
from pal_adapters.predict import predict_rows
from pal_adapters.tasks import kind_of
from pal_adapters.training.data import DynamicPaddingCollator, tokenize
from pal_adapters.training.streams import TaskStream, collate, collate_mixed

TAGS = ["O", "B-ADJ", "I-ADJ"]
TASKS = {"cls": TaskConfig(num_labels=2, dropout=0.0),
         "reg": TaskConfig(type="regression", dropout=0.0),
         "ner": TaskConfig(type="token_classification", num_labels=3, labels=TAGS, dropout=0.0),
         "qa": TaskConfig(type="extractive_qa", dropout=0.0)}


def columns(task: str, n: int = 6) -> dict[str, list]:
    """Standard columns of each kind, sentences of increasing length so padding differs per task."""
    sentences = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + 2 * i)) for i in range(n)]
    if task == "cls":
        return {"text_a": sentences, "label": [i % 2 for i in range(n)]}
    if task == "ner":
        tokens = [s.split()[: 2 + i] for i, s in enumerate(sentences)]
        adjectives = ("good", "bad", "fine", "awful")
        return {"tokens": tokens, "tags": [[int(w in adjectives) for w in t] for t in tokens]}
    contexts = [s + " the cat sat" for s in sentences]
    answers = [{"text": ["the cat"], "answer_start": [c.index("the cat")]} for c in contexts]
    return {"id": [str(i) for i in range(n)], "question": ["who sat"] * n, "context": contexts, "answers": answers}


@pytest.fixture(scope="module")
def setup():
    tokenizer = toy_tokenizer()
    model = add_pal(toy_backbone(), {t: TASKS[t] for t in ("cls", "ner", "qa")}, adapter="pal").eval()
    randomize_adapters(model)
    streams = {}
    for task in ("cls", "ner", "qa"):
        kind = kind_of(TASKS[task])
        ds = tokenize(datasets.Dataset.from_dict(columns(task)), tokenizer, 24, kind=kind)
        streams[task] = TaskStream(task, ds, 4, seed=0, kind=kind)
    return model, tokenizer, streams


def test_mixed_batch_of_token_span_and_sequence_rows_equals_per_task_forwards(setup) -> None:
    model, tokenizer, streams = setup
    collator = DynamicPaddingCollator(tokenizer)
    parts = [(t, collate(s, [0, 3, 5] if t != "qa" else [1, 4], collator)) for t, s in streams.items()]
    kinds = {t: s.kind for t, s in streams.items()}
    mixed = collate_mixed(parts, tokenizer.pad_token_id, kinds)
    length = mixed["input_ids"].shape[1]
    assert mixed["labels"]["ner"].shape == (3, length)  # re-padded with -100 to the joint length
    assert mixed["labels"]["qa"].shape == (2, 2) and mixed["labels"]["cls"].shape == (3,)
    mixed.pop("example_index")
    with torch.no_grad():
        out = model(**mixed)
        rows = {t: [i for i, name in enumerate(mixed["task_ids"]) if name == t] for t in streams}
        for task, part in parts:
            r = torch.tensor(rows[task])
            alone = model(input_ids=mixed["input_ids"][r], attention_mask=mixed["attention_mask"][r],
                          token_type_ids=mixed["token_type_ids"][r], labels=mixed["labels"][task], task=task)
            torch.testing.assert_close(out.logits[task], alone.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.task_losses[task], alone.loss, atol=1e-5, rtol=1e-5)
            own = model(**{k: v for k, v in part.items() if k != "example_index"}, task=task)
            n = part["input_ids"].shape[1]
            torch.testing.assert_close(out.logits[task][:, :n] if kinds[task].token_level else out.logits[task],
                                       own.logits, atol=1e-5, rtol=1e-5)
        # Token labels padded with -100 add nothing: the loss equals the task's own, shorter, batch.
        ner_part = dict(parts)["ner"]
        own = model(**{k: v for k, v in ner_part.items() if k != "example_index"}, task="ner").loss
        torch.testing.assert_close(out.task_losses["ner"], own, atol=1e-5, rtol=1e-5)


def test_predict_rows_gives_each_tasks_kind_of_output_for_one_input() -> None:
    tokenizer = toy_tokenizer()
    model = add_pal(toy_backbone(), TASKS, adapter="pal").eval()
    randomize_adapters(model)
    text = [{"text": "the cat sat"}]
    out, skipped = predict_rows(model, tokenizer, text)
    assert set(out[0]) == {"cls", "reg", "ner"} and set(skipped) == {"qa"}
    assert set(out[0]["cls"]) == {"label", "probabilities"} and isinstance(out[0]["reg"]["score"], float)
    for entity in out[0]["ner"]["entities"]:
        assert text[0]["text"][entity["start"]:entity["end"]] == entity["text"]
    enc = tokenizer(["the cat sat"], return_tensors="pt")
    with torch.no_grad():
        alone = model(**enc, task="cls").logits
    assert out[0]["cls"] == model.heads["cls"].kind.describe(alone, None)[0]
    question = [{"question": "who sat", "context": "the dog sat"}]
    out, skipped = predict_rows(model, tokenizer, question)
    assert set(out[0]) == {"qa"} and set(skipped) == {"cls", "reg", "ner"}
    answer = out[0]["qa"]
    assert question[0]["context"][answer["start"]:answer["end"]] == answer["answer"]
    with pytest.raises(ValueError, match="task 'qa' cannot read these inputs"):
        predict_rows(model, tokenizer, text, ["cls", "qa"])


def write_run(root) -> None:
    """A classification JSONL task, a CoNLL NER task and a SQuAD-JSON QA task in one run file."""
    (root / "cls").mkdir(parents=True)
    for split, n in (("train", 12), ("dev", 6)):
        cols = columns("cls", n)
        lines = [json.dumps({"text": t, "label": y}) for t, y in zip(cols["text_a"], cols["label"], strict=True)]
        (root / "cls" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        cols = columns("ner", n)
        (root / f"{split}.txt").write_text("\n\n".join(
            "\n".join(f"{w} {TAGS[t]}" for w, t in zip(words, tags, strict=True))
            for words, tags in zip(cols["tokens"], cols["tags"], strict=True)) + "\n")
    cols = columns("qa", 12)
    articles = [{"title": f"A{a}", "paragraphs": [{"context": cols["context"][i], "qas": [
        {"id": cols["id"][i], "question": cols["question"][i],
         "answers": [{"text": "the cat", "answer_start": cols["answers"][i]["answer_start"][0]}]}]}]}
        for a, i in enumerate(range(12))]
    (root / "squad.json").write_text(json.dumps({"data": articles, "version": "1.1"}))
    toy_backbone().save_pretrained(root / "base")
    toy_tokenizer().save_pretrained(root / "base")
    tasks = {
        "cls": {"type": "classification", "data": {"kind": "jsonl", "path": "cls", "text_columns": ["text"]}},
        "ner": {"type": "token_classification", "num_labels": 3, "labels": TAGS,
                "data": {"kind": "conll", "path": "."}},
        "qa": {"type": "extractive_qa", "options": {"doc_stride": 4},
               "data": {"kind": "squad_json", "path": ".", "train": "squad.json[0:8]", "dev": "squad.json[8:]"}},
    }
    (root / "run.yaml").write_text(yaml.safe_dump({
        "model": str(root / "base"), "adapter": {"kind": "pal", "hidden_size": 8, "num_heads": 2},
        "max_length": 16, "tasks": tasks,
        "training": {"batch_size": 6, "lr": 1e-3, "max_steps": 3, "eval_every": 3, "sampling": "annealed",
                     "epochs": 2, "output_dir": str(root / "out")}}))


@pytest.mark.parametrize("mixed", ["false", "true"])
def test_one_run_file_trains_sequence_token_and_span_tasks_through_the_cli(tmp_path, capsys, mixed) -> None:
    write_run(tmp_path)
    assert main(["train", str(tmp_path / "run.yaml"), "--set", f"mixed_batches={mixed}"]) == 0
    printed = capsys.readouterr().out
    table = printed[printed.rindex("task"):]
    for task, metric in (("cls", "accuracy"), ("ner", "f1"), ("qa", "exact_match")):
        assert metric in table and any(line.startswith(task) for line in table.splitlines())
    assert (tmp_path / "out" / "last" / "tasks" / "ner").is_dir()

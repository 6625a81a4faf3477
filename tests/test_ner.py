"""Token classification (NER): CoNLL reading, sub-token alignment, seqeval metrics, entity spans, save/load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_adapters, tiny_model, train_tiny_run
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2
from transformers import BertTokenizer

from pal_adapters import TaskConfig, add_pal
from pal_adapters.model import MultiTaskModel
from pal_adapters.tasks import IGNORE_INDEX, kind_of
from pal_adapters.tasks.token_classification import TokenClassificationKind, align_labels, word_predictions
from pal_adapters.training.conll import convert_tags, map_token_columns, read_conll, read_conll_dataset

CONLL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conll2003"
TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
ID = {t: i for i, t in enumerate(TAGS)}
# WordPiece vocabulary in which "unbelievable" is exactly three sub-tokens: un ##believ ##able.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "john", "smith", "lives", "in", "new", "york", "paris",
         "un", "##believ", "##able", ".", ","]


@pytest.fixture(scope="module")
def tokenizer():
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    assert tok.is_fast
    return tok


def ner_task(**kw) -> TaskConfig:
    return TaskConfig(type="token_classification", num_labels=len(TAGS), labels=TAGS, **kw)


# ---- reading ---------------------------------------------------------------------------------------
CONLL_TEXT = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
BRUSSELS\tNNP\tB-NP\tB-LOC
1996-08-22 CD I-NP O"""  # two blank lines, a DOCSTART without a blank line, tabs, no final newline


@pytest.mark.parametrize(("tag_column", "expected"), [
    (-1, [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC", "O"]]),
    (3, [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC", "O"]]),
    (1, [["NNP", "VBZ", "JJ"], ["NNP", "NNP"], ["NNP", "CD"]]),
])
def test_read_conll_skips_docstart_and_blank_lines(tmp_path, tag_column, expected):
    path = tmp_path / "train.txt"
    path.write_text(CONLL_TEXT)
    columns = read_conll(path, tag_column=tag_column)
    assert columns["tokens"] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS", "1996-08-22"]]
    assert columns["tags"] == expected
    assert read_conll_dataset(path, tag_column).column_names == ["tokens", "tags"]


def test_read_conll_names_the_line_with_too_few_fields(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ValueError, match="line 2"):
        read_conll(path)
    path.write_text("EU\n")
    with pytest.raises(ValueError, match="line 1: 1 field"):
        read_conll(path)


def test_hub_class_label_tags_become_names_and_ints_become_strings():
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(TAGS)))})
    ds = datasets.Dataset.from_dict({"tokens": [["EU", "rejects"]], "ner_tags": [[3, 0]]}, features=features)
    assert map_token_columns(ds, "tokens", "ner_tags")[0] == {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}
    plain = datasets.Dataset.from_dict({"tokens": [["EU", "rejects"]], "tags": [[3, 0]]})
    assert map_token_columns(plain)["tags"] == [["3", "0"]]
    bad = datasets.Dataset.from_dict({"tokens": [["EU", "rejects"]], "tags": [["B-ORG"]]})
    with pytest.raises(ValueError, match="row 0"):
        map_token_columns(bad)


def test_label_converter_maps_names_and_ids():
    convert = kind_of(ner_task()).label_converter({t: i for i, t in enumerate(TAGS)})
    assert convert(["B-PER", "O", "3"]) == [1, 0, 3]
    with pytest.raises(ValueError, match="B-FOO"):
        convert(["B-FOO"])
    with pytest.raises(ValueError, match="needs labels="):  # before training, not at the first evaluation
        kind_of(TaskConfig(type="token_classification", num_labels=9)).label_converter({})
    ds = datasets.Dataset.from_dict({"tokens": [["EU"], ["Peter", "B"]], "tags": [["B-ORG"], ["B-PER", "B-FOO"]]})
    assert convert_tags(ds.select([0]), convert)["tags"] == [[3]]
    with pytest.raises(ValueError, match="sentence 1: .*B-FOO"):
        convert_tags(ds, convert)


# ---- alignment -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("label_all", "expected"), [
    (False, [IGNORE_INDEX, ID["B-PER"], ID["B-MISC"], IGNORE_INDEX, IGNORE_INDEX, ID["B-LOC"], IGNORE_INDEX]),
    (True, [IGNORE_INDEX, ID["B-PER"], ID["B-MISC"], ID["I-MISC"], ID["I-MISC"], ID["B-LOC"], IGNORE_INDEX]),
])
def test_word_split_into_three_subtokens_gets_one_label(tokenizer, label_all, expected):
    kind = kind_of(dataclasses.replace(ner_task(), options={"label_all_subtokens": label_all}))
    batch = {"tokens": [["John", "unbelievable", "Paris"]], "tags": [[ID["B-PER"], ID["B-MISC"], ID["B-LOC"]]]}
    enc = kind.encode(batch, tokenizer, max_length=32)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "john", "un", "##believ", "##able", "paris", "[SEP]"]
    assert enc["labels"] == [expected]
    assert enc["word_ids"] == [[-1, 0, 1, 1, 1, 2, -1]]
    assert enc["word_labels"] == batch["tags"] and enc["length"] == [7]


def test_align_labels_without_tag_names_copies_the_word_label():
    assert align_labels([None, 0, 0, 1, None], [4, 2], label_all_subtokens=True) == [-100, 4, 4, 2, -100]


def test_collate_pads_with_ignore_index():
    kind = kind_of(ner_task())
    labels = kind.collate_labels([[-100, 1, -100], [-100, 2, 0, 3, -100]], 6)
    assert labels.tolist() == [[-100, 1, -100, -100, -100, -100], [-100, 2, 0, 3, -100, -100]]
    assert kind.pad_labels(labels, 7).shape == (2, 7) and kind.pad_labels(labels, 7)[:, -1].eq(-100).all()


# ---- loss ------------------------------------------------------------------------------------------
def test_loss_is_cross_entropy_over_kept_tokens_and_validates_labels():
    kind = kind_of(ner_task())
    logits = torch.randn(2, 4, len(TAGS), generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    kept = labels != -100
    assert torch.allclose(kind.loss(logits, labels), F.cross_entropy(logits[kept], labels[kept]))
    all_skipped = kind.loss(logits, torch.full((2, 4), -100))
    all_skipped.backward()
    assert all_skipped.item() == 0.0 and logits.grad.abs().sum() == 0
    with pytest.raises(ValueError, match=r"\[9\]"):
        kind.loss(logits, torch.tensor([[-100, 9, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="shape"):
        kind.loss(logits, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="dtype"):
        kind.loss(logits, labels.float())


# ---- metrics ---------------------------------------------------------------------------------------
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"], ["B-MISC", "I-MISC", "O"]]
PRED = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"], ["I-MISC", "I-MISC", "O"]]
# Gold entities: PER(0-1), LOC(3), ORG(0), MISC(0-1) = 4. Predicted (conlleval reads a leading I- as a
# start): PER, ORG, MISC(0-1) = 3, all correct. P = 3/3, R = 3/4, F1 = 6/7; words right: 7 of 9.
# Strict IOB2 drops the I-MISC entity that has no B-: P = 2/2, R = 2/4, F1 = 2/3.
HAND = {"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "accuracy": 7 / 9, "f1_strict": 2 / 3}


@pytest.mark.parametrize("name", sorted(HAND))
def test_metrics_match_hand_computed_values_and_seqeval(name):
    kind = kind_of(ner_task())
    direct = {"precision": precision_score(GOLD, PRED), "recall": recall_score(GOLD, PRED),
              "f1": f1_score(GOLD, PRED), "accuracy": accuracy_score(GOLD, PRED),
              "f1_strict": f1_score(GOLD, PRED, mode="strict", scheme=IOB2)}
    value = kind.score([name], PRED, GOLD)[name]
    assert value == pytest.approx(HAND[name]) and value == pytest.approx(direct[name])


def test_unknown_metric_lists_the_kinds_metrics():
    with pytest.raises(ValueError, match="f1_strict"):
        kind_of(ner_task()).score(["mcc"], PRED, GOLD)


def _one_hot_logits(rows: list[list[int]], length: int) -> torch.Tensor:
    """(n, length, C) logits whose argmax is ``rows`` (padded with O)."""
    ids = torch.tensor([r + [0] * (length - len(r)) for r in rows])
    return F.one_hot(ids, len(TAGS)).float() * 5


def test_evaluation_is_word_level_first_subtoken_with_cut_words_predicted_o():
    kind = kind_of(dataclasses.replace(ner_task(), options={"label_all_subtokens": True}))
    # Row 0: John unbelievable Paris; the 2nd and 3rd sub-tokens of "unbelievable" disagree (ignored).
    # Row 1: three words, the last cut off by max_length: predicted O, but its gold B-LOC still counts.
    logits = _one_hot_logits([[0, 1, 7, 0, 5, 5, 0], [0, 3, 4, 0]], 7)
    batch = {"word_ids": [[-1, 0, 1, 1, 1, 2, -1], [-1, 0, 1, -1]],
             "word_labels": [[1, 7, 5], [3, 4, 5]]}
    predictions, gold = kind.finish([kind.batch_outputs(logits, batch)])
    assert predictions == [["B-PER", "B-MISC", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    assert gold == [["B-PER", "B-MISC", "B-LOC"], ["B-ORG", "I-ORG", "B-LOC"]]
    scores = kind.score(["precision", "recall"], predictions, gold)
    assert scores == {"precision": 1.0, "recall": 0.8}


def test_word_predictions_take_the_first_subtoken():
    assert word_predictions([9, 1, 2, 3, 4, 9], [-1, 0, 0, 1, 1, -1], 3, fill=0) == [1, 3, 0]


# ---- predict: entity character spans ---------------------------------------------------------------
TEXT = "John Smith lives in New York, unbelievable Paris."


def _predict(kind: TokenClassificationKind, tokenizer, word_tags: list[str]):
    """describe() on logits whose first sub-token of word i predicts ``word_tags[i]``; later sub-tokens
    predict something else, which must be ignored."""
    inputs, context = kind.encode_for_predict([{"text": TEXT}], tokenizer, max_length=64)
    word_ids = context[0]["word_ids"]
    rows, seen = [], set()
    for w in word_ids:
        rows.append(0 if w is None else ID[word_tags[w]] if w not in seen else ID["B-ORG"])
        seen.add(w)
    return kind.describe(_one_hot_logits([rows], len(rows)), context)


def test_entities_map_back_to_exact_character_spans(tokenizer):
    kind = kind_of(ner_task())
    # words (the tokenizer's): John Smith lives in New York , unbelievable Paris .
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "B-MISC", "B-LOC", "O"]
    [out] = _predict(kind, tokenizer, tags)
    expected = [("John Smith", "PER", 0, 10), ("New York", "LOC", 20, 28), ("unbelievable", "MISC", 30, 42),
                ("Paris", "LOC", 43, 48)]
    assert [tuple(e.values()) for e in out["entities"]] == expected
    for e in out["entities"]:
        assert TEXT[e["start"]:e["end"]] == e["text"]
    json.dumps(out)  # predict prints JSON lines
    with pytest.raises(ValueError, match="text_b"):  # predict then skips this task for pairs
        kind.encode_for_predict([{"text": TEXT, "text_b": TEXT}], tokenizer, 64)


# ---- save / load -----------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_logits(tmp_path, tokenizer):
    model = add_pal(tiny_model("bert", vocab_size=len(VOCAB)), {"ner": ner_task()}, adapter="pal")
    randomize_adapters(model)
    with torch.no_grad():
        model.heads["ner"].out.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    model.eval()
    inputs, context = kind_of(ner_task()).encode_for_predict([{"text": TEXT}, {"text": "John in Paris"}],
                                                             tokenizer, 64)
    with torch.no_grad():
        before = model(**inputs, task="ner").logits
    model.save_pretrained(tmp_path / "whole")
    model.save_task(tmp_path / "task", "ner")
    loaded = MultiTaskModel.from_pretrained(tmp_path / "whole", backbone=tiny_model("bert", vocab_size=len(VOCAB)))
    other = add_pal(tiny_model("bert", vocab_size=len(VOCAB)), {}, adapter="pal").eval()
    other.load_task(tmp_path / "task")
    with torch.no_grad():
        for m in (loaded.eval(), other):
            assert torch.equal(m(**inputs, task="ner").logits, before)
    assert loaded.tasks["ner"] == model.tasks["ner"]
    kind = kind_of(loaded.tasks["ner"])
    assert kind.describe(before, context) == kind.describe(loaded(**inputs, task="ner").logits.detach(), context)


# ---- the real data ---------------------------------------------------------------------------------
@pytest.mark.skipif(not CONLL_DIR.is_dir(), reason=f"CoNLL-2003 not found at {CONLL_DIR}")
@pytest.mark.parametrize(("split", "sentences", "tokens"), [
    ("train", 14041, 203621), ("dev", 3250, 51362), ("test", 3453, 46435)])
def test_conll2003_official_counts(split, sentences, tokens):
    from pal_adapters.training.readers import load_split
    from pal_adapters.training.taskdefs import load_task_defs

    columns = read_conll(CONLL_DIR / f"{split}.txt")
    assert len(columns["tokens"]) == sentences
    assert sum(map(len, columns["tokens"])) == tokens == sum(map(len, columns["tags"]))
    assert set(tag for tags in columns["tags"] for tag in tags) == set(TAGS)
    task = conll_task(CONLL_DIR, train=None, dev=split)  # the run-file path: class ids in the hub's order
    ds = load_split(load_task_defs({"tasks": {"conll": task}})["conll"], "dev")
    assert ds.num_rows == sentences and ds[0]["tags"] == [ID[t] for t in columns["tags"][0]]


# ---- from a run file: conll and JSONL sources, train, eval, predict -------------------------------
SENTENCES = [(["John", "Smith", "lives", "in", "Paris", "."], ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]),
             (["unbelievable", "New", "York", ","], ["B-MISC", "B-LOC", "I-LOC", "O"]),
             (["John", "in", "New", "York"], ["B-PER", "O", "B-LOC", "I-LOC"])]


def write_conll(path: Path, sentences=SENTENCES, repeat: int = 4) -> Path:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences * repeat:
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def conll_task(root: Path, **data) -> dict:
    return {"type": "token_classification", "num_labels": len(TAGS), "labels": list(TAGS), "max_length": 16,
            "data": {"kind": "conll", "path": str(root), **data}}


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("ner_run")
    write_conll(root / "train.txt")
    write_conll(root / "dev.txt", repeat=1)
    task = conll_task(root) | {"options": {"label_all_subtokens": True}}
    return train_tiny_run(root, tokenizer, {"ner": task}, batch_size=4)


def test_conll_and_jsonl_sources_read_the_same_rows(ner_run):
    from pal_adapters.training.readers import load_split
    from pal_adapters.training.taskdefs import load_task_defs

    (ner_run / "jsonl").mkdir(exist_ok=True)
    (ner_run / "jsonl" / "dev.jsonl").write_text("\n".join(
        json.dumps({"words": w, "ner": t}) for w, t in SENTENCES) + "\n")
    jsonl = {"kind": "jsonl", "path": str(ner_run / "jsonl"), "text_columns": ["words"], "label_column": "ner"}
    defs = load_task_defs({"tasks": {"a": conll_task(ner_run), "b": conll_task(ner_run) | {"data": jsonl}}})
    a, b = load_split(defs["a"], "dev"), load_split(defs["b"], "dev")
    assert defs["a"].metrics == ("f1", "precision", "recall", "accuracy") and defs["a"].data.tag_column == -1
    assert a.to_list() == b.to_list() == [{"tokens": w, "tags": [ID[x] for x in t]} for w, t in SENTENCES]


def test_conll_source_needs_a_token_task(tmp_path):
    from pal_adapters.training.readers import load_split
    from pal_adapters.training.taskdefs import load_task_defs

    write_conll(tmp_path / "dev.txt")
    spec = {"type": "classification", "metrics": ["accuracy"], "data": {"kind": "conll", "path": str(tmp_path)}}
    with pytest.raises(ValueError, match="'conll'.*classification"):
        load_split(load_task_defs({"tasks": {"x": spec}})["x"], "dev")
    with pytest.raises(ValueError, match="tag_column"):
        load_task_defs({"tasks": {"x": conll_task(tmp_path) | {"data": {"kind": "jsonl", "path": "x",
                                                                      "tag_column": 2}}}})


def test_train_reports_seqeval_metrics_and_predict_prints_entity_spans(ner_run, capsys):
    from pal_adapters.cli import main
    from pal_adapters.training.report import read_jsonl

    evals = [r for r in read_jsonl(ner_run / "out" / "log.jsonl") if r["kind"] == "eval"]
    metrics = evals[-1]["metrics"]["ner"]
    assert set(metrics) == {"f1", "precision", "recall", "accuracy"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert main(["predict", str(ner_run / "out" / "last"), "--task", "ner", TEXT]) == 0
    got = json.loads(capsys.readouterr().out)["predictions"]["ner"]
    model = MultiTaskModel.from_pretrained(ner_run / "out" / "last",
                                           backbone=tiny_model("bert", vocab_size=len(VOCAB))).eval()
    kind = kind_of(model.tasks["ner"])
    inputs, context = kind.encode_for_predict([{"text": TEXT}], BertTokenizer.from_pretrained(ner_run / "base"), 128)
    with torch.no_grad():
        assert got == kind.describe(model(**inputs, task="ner").logits, context)[0]
    for e in got["entities"]:
        assert TEXT[e["start"]:e["end"]] == e["text"]

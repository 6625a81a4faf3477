"""Extractive QA: SQuAD reading, windows, span post-processing, the official EM/F1, predict, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_adapters, tiny_model, train_tiny_run, word_tokenizer
from transformers import BertTokenizerFast

from pal_adapters import MultiTaskModel, TaskConfig, add_pal
from pal_adapters.tasks.extractive_qa import ExtractiveQAKind
from pal_adapters.tasks.qa_windows import answer_positions, best_spans, make_windows
from pal_adapters.training.squad import (
    exact_match,
    f1,
    normalize_answer,
    parse_article_range,
    read_squad_json,
    split_file_and_articles,
    squad_columns,
    squad_scores,
)

SQUAD_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "dev-v1.1.json"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "who", "what", "is", "where", "."]
CONTEXT = " ".join(WORDS[:12])  # twelve one-token words


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    tokenizer = word_tokenizer(tmp_path_factory.mktemp("vocab"), WORDS)
    assert len(tokenizer) == 5 + len(WORDS)
    return tokenizer


def char_span(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


def qa_batch(question: str, context: str, answer: str | None, qid: str = "q0") -> dict:
    answers = {"text": [answer] if answer else [], "answer_start": [context.index(answer)] if answer else []}
    return {"id": [qid], "question": [question], "context": [context], "answers": [answers]}


# ---- reading ---------------------------------------------------------------------------------------
def write_squad(path: Path, articles: int = 3) -> Path:
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            context = f"article {a} paragraph {p} says alpha bravo"
            qas = [{"id": f"{a}-{p}-{q}", "question": f"q{q}?",
                    "answers": [{"text": "alpha", "answer_start": context.index("alpha")},
                                {"text": "alpha bravo", "answer_start": context.index("alpha")}]} for q in range(a + 1)]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"T{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return path


@pytest.mark.parametrize("articles, ids", [(None, 12), ("0:1", 2), ("1:", 10), ("1:2", 4), (":", 12)])
def test_squad_json_reader_selects_whole_articles(tmp_path, articles, ids):
    ds = read_squad_json(write_squad(tmp_path / "s.json"), articles)
    assert len(ds) == ids
    assert ds.column_names == ["id", "question", "context", "answers", "title"]
    for row in ds:
        start = row["answers"]["answer_start"][0]
        assert row["context"][start:start + len("alpha")] == "alpha"
        assert row["answers"]["text"] == ["alpha", "alpha bravo"]
        assert row["id"].startswith(row["title"][1:] + "-")


def test_article_ranges_and_split_names_parse():
    assert parse_article_range("0:38") == slice(0, 38)
    assert parse_article_range("38:") == slice(38, None)
    assert split_file_and_articles("dev-v1.1.json[0:38]") == ("dev-v1.1.json", "0:38")
    assert split_file_and_articles("dev-v1.1.json") == ("dev-v1.1.json", None)
    with pytest.raises(ValueError, match="'38' is not a range"):
        parse_article_range("38")


def test_flat_rows_with_answer_objects_become_standard_columns():
    import datasets

    ds = datasets.Dataset.from_list([{"question": "q?", "context": "alpha bravo",
                                      "answers": [{"text": "bravo", "answer_start": 6}]}])
    row = squad_columns(ds)[0]
    assert row == {"id": "0", "question": "q?", "context": "alpha bravo",
                   "answers": {"text": ["bravo"], "answer_start": [6]}}
    with pytest.raises(ValueError, match="'context'"):
        squad_columns(ds.remove_columns("context"))


@pytest.mark.skipif(not SQUAD_DEV.is_file(), reason=f"SQuAD dev not found at {SQUAD_DEV}")
def test_official_squad_dev_counts_and_the_38_10_article_split():
    every = read_squad_json(SQUAD_DEV)
    first, last = read_squad_json(SQUAD_DEV, "0:38"), read_squad_json(SQUAD_DEV, "38:")
    assert len(every) == 10_570 and len(set(every["title"])) == 48
    assert len(set(first["title"])) == 38 and len(set(last["title"])) == 10
    assert len(first) + len(last) == 10_570
    assert set(first["id"]) | set(last["id"]) == set(every["id"])
    assert not set(first["title"]) & set(last["title"])


# ---- windows ---------------------------------------------------------------------------------------
def test_answer_crossing_a_window_edge_is_cls_there_and_exact_where_it_fits(tokenizer):
    # [CLS] who [SEP] + 5 context tokens + [SEP] = 9; consecutive windows share 2 tokens:
    # context tokens 0-4, 3-7, 6-10, 9-11. "echo foxtrot" = tokens 4-5 crosses the first window's edge.
    w = make_windows(qa_batch("who", CONTEXT, "echo foxtrot"), tokenizer, max_length=9, doc_stride=2)
    assert len(w["input_ids"]) == 4 and set(w["example_id"]) == {"q0"}
    assert w["labels"] == [[0, 0], [4, 5], [0, 0], [0, 0]]
    a, b = char_span(CONTEXT, "echo foxtrot")
    offsets = w["offset_mapping"][1]
    assert offsets[4][0] == a and offsets[5][1] == b
    assert offsets[:3] == [None, None, None] and offsets[-1] is None  # CLS, question, SEP, last SEP
    assert w["context"] == [CONTEXT] * 4 and w["answers"] == [["echo foxtrot"]] * 4


@pytest.mark.parametrize("answer, labels", [  # windows of context tokens 0-6, 4-10, 8-11
    ("alpha", [[3, 3], [0, 0], [0, 0]]), ("golf hotel", [[0, 0], [5, 6], [0, 0]]),
    ("delta echo", [[6, 7], [0, 0], [0, 0]]), ("juliet kilo", [[0, 0], [8, 9], [4, 5]])])
def test_labels_point_at_the_answer_tokens(tokenizer, answer, labels):
    w = make_windows(qa_batch("who", CONTEXT, answer), tokenizer, max_length=11, doc_stride=3)
    assert w["labels"] == labels
    for (s, e), offsets in zip(labels, w["offset_mapping"], strict=True):
        if s:
            assert CONTEXT[offsets[s][0]:offsets[e][1]] == answer


def test_no_answer_and_partial_token_answers(tokenizer):
    assert make_windows(qa_batch("who", CONTEXT, None), tokenizer, 32, 8)["labels"] == [[0, 0]]
    offsets = [None, (0, 5), (6, 11)]  # "alpha bravo": an answer inside a token takes the whole token
    assert answer_positions(offsets, {"text": ["lph"], "answer_start": [1]}) == (1, 1)


# ---- post-processing -------------------------------------------------------------------------------
def window_logits(windows, hot: dict[int, tuple[int, int, float]]):
    """Zero logits except, for window i, start/end peaks at positions hot[i] = (start, end, height)."""
    starts, ends = [], []
    for i, n in enumerate(windows["length"]):
        s, e = np.zeros(n + 2), np.zeros(n + 2)  # + padding, which must be ignored
        if i in hot:
            s[hot[i][0]], e[hot[i][1]] = hot[i][2], hot[i][2]
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_best_span_over_windows_is_an_exact_character_span(tokenizer):
    w = make_windows(qa_batch("who", CONTEXT, None), tokenizer, max_length=9, doc_stride=2)
    # window 1 covers context tokens 3-7 at positions 3-7: "golf hotel" = tokens 6-7 = positions 6-7.
    # window 0 points at "bravo charlie" with a lower score; window 1's must win.
    starts, ends = window_logits(w, {0: (4, 5, 4.0), 1: (6, 7, 5.0)})
    span = best_spans({"q0": CONTEXT}, w["example_id"], w["offset_mapping"], starts, ends)["q0"]
    assert (span.text, span.start, span.end) == ("golf hotel", *char_span(CONTEXT, "golf hotel"))
    assert span.score == pytest.approx(10.0)


def test_spans_never_use_question_tokens_reversed_or_too_long_pairs(tokenizer):
    w = make_windows(qa_batch("who", CONTEXT, None), tokenizer, max_length=32, doc_stride=8)
    n = w["length"][0]
    start, end = np.full(n, -100.0), np.full(n, -100.0)
    start[[0, 1]] = 50.0  # CLS and the question: never an answer
    start[9], end[4] = 20.0, 20.0  # end before start
    start[5], end[5] = 3.0, 3.0  # "charlie" (context token 2 at position 5): the best valid pair
    ids, offs = w["example_id"], w["offset_mapping"]
    span = best_spans({"q0": CONTEXT}, ids, offs, [start], [end])["q0"]
    assert span.text == "charlie"
    start[[5, 9]], end[[4, 5]] = -100.0, -100.0
    start[3], end[12] = 9.0, 9.0  # context tokens 0..9: 10 tokens
    assert best_spans({"q0": CONTEXT}, ids, offs, [start], [end], max_answer_length=5)["q0"].text != \
        CONTEXT[offs[0][3][0]:offs[0][12][1]]
    assert best_spans({"q0": CONTEXT}, ids, offs, [start], [end], max_answer_length=10)["q0"].text == \
        CONTEXT[offs[0][3][0]:offs[0][12][1]]


def test_an_example_without_windows_gets_the_empty_answer():
    span = best_spans({"lost": "alpha"}, [], [], [], [])["lost"]
    assert (span.text, span.start, span.end, span.score) == ("", 0, 0, None)


# ---- the official metric ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, normal", [("The  Denver Broncos!", "denver broncos"), ("an apple a day", "apple day"),
                                          ("U.S.", "us"), ("banana theatre", "banana theatre"),
                                          ("  A\tcat,  the end.", "cat end")])
def test_normalisation(text, normal):
    assert normalize_answer(text) == normal


@pytest.mark.parametrize("pred, gold, em, f", [
    ("the Broncos", "Broncos.", 1.0, 1.0),
    ("Denver Broncos team", "the Denver Broncos", 0.0, 0.8),  # P 2/3, R 1
    ("the the cat cat", "a cat", 0.0, 2 / 3),  # [cat, cat] vs [cat]: P 1/2, R 1
    ("blue sky", "red", 0.0, 0.0),
])
def test_exact_match_and_f1_by_hand(pred, gold, em, f):
    assert exact_match(pred, gold) == em
    assert f1(pred, gold) == pytest.approx(f)


def test_scores_take_the_best_gold_and_average_over_every_question():
    preds = {"q1": "Denver", "q2": "blue sky", "extra": "x"}
    golds = {"q1": ["Denver Broncos", "denver"], "q2": ["the red sky"], "q3": ["anything"]}
    # q1: EM 1, F1 1; q2: [blue, sky] vs [red, sky] -> EM 0, F1 1/2; q3: no prediction -> 0, 0
    assert squad_scores(preds, golds) == pytest.approx({"exact_match": 100 / 3, "f1": 50.0})


# ---- the kind on a tiny model ----------------------------------------------------------------------
def qa_model(tokenizer, seed: int = 0):
    backbone = tiny_model("bert", seed=seed, vocab_size=len(tokenizer))
    model = add_pal(backbone, {"qa": TaskConfig(type="extractive_qa")}, adapter="pal")
    randomize_adapters(model, seed=seed + 1)
    torch.manual_seed(seed + 2)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_predict_returns_the_answer_and_its_span_over_all_windows(tokenizer):
    kind = ExtractiveQAKind(TaskConfig(type="extractive_qa", options={"doc_stride": 2, "max_answer_length": 4}))
    model = qa_model(tokenizer)
    rows = [{"question": "who", "context": CONTEXT}, {"question": "what is", "context": "india juliet kilo"}]
    inputs, context = kind.encode_for_predict(rows, tokenizer, max_length=9)
    assert inputs["input_ids"].shape[0] == 5  # four windows for the first row, one for the second
    with torch.no_grad():
        logits = model(**inputs, task="qa").logits
    out = kind.describe(logits, context)
    assert len(out) == 2
    for row, pred in zip(rows, out, strict=True):
        assert row["context"][pred["start"]:pred["end"]] == pred["answer"] != ""
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(1).tolist()
    starts = [logits[i, :n, 0].numpy() for i, n in enumerate(lengths)]
    ends = [logits[i, :n, 1].numpy() for i, n in enumerate(lengths)]
    spans = best_spans({"0": rows[0]["context"], "1": rows[1]["context"]}, context["example_id"],
                       context["offset_mapping"], starts, ends, max_answer_length=4)
    assert [s.to_dict() for s in spans.values()] == out


def test_finish_scores_questions_not_windows(tokenizer):
    kind = ExtractiveQAKind(TaskConfig(type="extractive_qa", options={"doc_stride": 2}))
    batch = {k: v + v2 for (k, v), v2 in zip(qa_batch("who", CONTEXT, "golf hotel", "a").items(),
                                            qa_batch("who", "kilo lima", "lima", "b").values(), strict=True)}
    w = kind.encode(batch, tokenizer, max_length=9)
    starts, ends = window_logits(w, {1: (6, 7, 5.0), 4: (3, 3, 5.0)})  # a: "golf hotel"; b: "kilo"
    logits = torch.tensor(np.stack([np.pad(np.stack([s, e], -1), ((0, 12 - len(s)), (0, 0)))
                                    for s, e in zip(starts, ends, strict=True)]), dtype=torch.float32)
    half = 2  # two dev batches, split inside question "a"'s windows
    outputs = [kind.batch_outputs(logits[sl], {k: w[k][sl] for k in w}) for sl in (slice(0, half), slice(half, None))]
    preds, golds = kind.finish(outputs)
    assert preds == {"a": "golf hotel", "b": "kilo"} and golds == {"a": ["golf hotel"], "b": ["lima"]}
    assert kind.score(["exact_match", "f1"], preds, golds) == {"exact_match": 0.5, "f1": 0.5}  # fractions


def test_loss_is_mean_start_end_cross_entropy_and_checks_labels():
    kind = ExtractiveQAKind(TaskConfig(type="extractive_qa"))
    logits = torch.randn(3, 7, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2], [0, 0], [6, 6]])
    expected = (torch.nn.functional.cross_entropy(logits[..., 0], labels[:, 0])
                + torch.nn.functional.cross_entropy(logits[..., 1], labels[:, 1])) / 2
    assert torch.allclose(kind.loss(logits, labels), expected)
    with pytest.raises(ValueError, match=r"positions \[7\]"):
        kind.loss(logits, torch.tensor([[1, 7], [0, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        kind.loss(logits, labels[:2])
    with pytest.raises(ValueError, match="doc_stride=0"):
        ExtractiveQAKind(TaskConfig(type="extractive_qa", options={"doc_stride": 0}))


def test_saved_qa_task_loads_with_identical_logits(tokenizer, tmp_path):
    model = qa_model(tokenizer)
    inputs, _ = ExtractiveQAKind(TaskConfig(type="extractive_qa")).encode_for_predict(
        [{"question": "who", "context": CONTEXT}], tokenizer, max_length=32)
    model.save_task(tmp_path / "qa", "qa")
    other = add_pal(tiny_model("bert", seed=0, vocab_size=len(tokenizer)), {"x": 2}, adapter="pal").eval()
    other.load_task(tmp_path / "qa")
    with torch.no_grad():
        want, got = model(**inputs, task="qa").logits, other(**inputs, task="qa").logits
    assert want.shape == (1, inputs["input_ids"].shape[1], 2) and want.abs().max() > 0.1
    assert torch.equal(want, got)


def test_a_long_question_gets_a_smaller_stride_and_a_too_long_one_an_error(tokenizer):
    batch = {k: a + b for (k, a), b in zip(qa_batch("who", CONTEXT, "lima", "short").items(),
                                          qa_batch("who is what is where", CONTEXT, "lima", "long").values(),
                                          strict=True)}
    # room for 8 and 4 context tokens: strides min(5, room // 2) = 4 and 2, windows of tokens 0-7, 4-11
    # and 0-3, 2-5, 4-7, 6-9, 8-11
    w = make_windows(batch, tokenizer, max_length=12, doc_stride=5)
    assert w["example_id"] == ["short"] * 2 + ["long"] * 5
    assert w["labels"] == [[0, 0], [10, 10]] + [[0, 0]] * 4 + [[10, 10]]  # "lima" is the last token
    assert all(len(ids) <= 12 for ids in w["input_ids"])
    with pytest.raises(ValueError, match="leaves 1 of max_length=9"):
        make_windows(qa_batch("who is what is where", CONTEXT, None), tokenizer, max_length=9, doc_stride=2)


# ---- from a run file: squad_json and JSONL sources, train, eval, predict ---------------------------
def write_word_squad(path: Path, articles: int = 4, seed: int = 0) -> Path:
    """Contexts of random words; each question is a word, its answer that word's first occurrence."""
    rng = np.random.default_rng(seed)
    data = []
    for a in range(articles):
        context = " ".join(rng.choice(WORDS[:12], 16))
        qas = [{"id": f"{a}-{q}", "question": f"who {w}",
                "answers": [{"text": w, "answer_start": (" " + context + " ").index(f" {w} ")}]}
               for q, w in enumerate(dict.fromkeys(context.split()))]
        data.append({"title": f"T{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return path


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("qa_run")
    write_word_squad(root / "squad.json")
    task = {"type": "extractive_qa", "max_length": 16, "options": {"doc_stride": 4},
            "data": {"kind": "squad_json", "path": str(root), "train": "squad.json[0:3]", "dev": "squad.json[3:]"}}
    return train_tiny_run(root, tokenizer, {"qa": task}, batch_size=8)


def test_squad_json_and_jsonl_sources_read_the_same_rows(qa_run):
    from pal_adapters.training.readers import load_split
    from pal_adapters.training.taskdefs import load_task_defs

    rows = read_squad_json(qa_run / "squad.json", "3:")
    (qa_run / "jsonl").mkdir(exist_ok=True)
    (qa_run / "jsonl" / "dev.jsonl").write_text("\n".join(
        json.dumps({"qid": r["id"], "q": r["question"], "passage": r["context"],
                    "gold": [{"text": t, "answer_start": s} for t, s in zip(*r["answers"].values(), strict=True)]})
        for r in rows) + "\n")
    defs = load_task_defs({"tasks": {
        "a": {"type": "extractive_qa", "data": {"kind": "squad_json", "path": str(qa_run), "dev": "squad.json[3:]"}},
        "b": {"type": "extractive_qa", "data": {"kind": "jsonl", "path": str(qa_run / "jsonl"),
                                                "text_columns": ["q", "passage"], "label_column": "gold"}}}})
    a, b = load_split(defs["a"], "dev"), load_split(defs["b"], "dev")
    assert defs["a"].metrics == ("exact_match", "f1")
    assert a.select_columns(["question", "context", "answers"]).to_list() == b.remove_columns("id").to_list()


def test_train_reports_exact_match_and_f1_and_predict_prints_the_span(qa_run, capsys):
    from pal_adapters import MultiTaskModel
    from pal_adapters.cli import main
    from pal_adapters.training.report import read_jsonl

    evals = [r for r in read_jsonl(qa_run / "out" / "log.jsonl") if r["kind"] == "eval"]
    assert set(evals[-1]["metrics"]["qa"]) == {"exact_match", "f1"}
    question, context = "who golf", "india golf hotel kilo"
    assert main(["predict", str(qa_run / "out" / "last"), "--task", "qa", "--question", question,
                 "--context", context]) == 0
    line = json.loads(capsys.readouterr().out)
    got = line["predictions"]["qa"]
    assert context[got["start"]:got["end"]] == got["answer"] != ""
    model = MultiTaskModel.from_pretrained(qa_run / "out" / "last",
                                           backbone=tiny_model("bert", vocab_size=len(WORDS) + 5)).eval()
    inputs, windows = model.heads["qa"].kind.encode_for_predict([{"question": question, "context": context}],
                                                                BertTokenizerFast.from_pretrained(qa_run / "base"), 128)
    with torch.no_grad():
        want = model.heads["qa"].kind.describe(model(**inputs, task="qa").logits, windows)[0]
    assert got == pytest.approx(want, abs=1e-5)


def test_qa_rows_of_a_mixed_batch_equal_a_qa_only_forward(tokenizer):
    model = qa_model(tokenizer)
    model.add_task("cls", TaskConfig(num_labels=3))
    randomize_adapters(model, seed=5)
    kind = ExtractiveQAKind(TaskConfig(type="extractive_qa", options={"doc_stride": 2}))
    inputs, _ = kind.encode_for_predict([{"question": "who", "context": CONTEXT}], tokenizer, max_length=9)
    others = tokenizer(["alpha bravo", "kilo lima india"], padding="max_length", max_length=9, return_tensors="pt")
    batch = {k: torch.cat([inputs[k][:2], others[k], inputs[k][2:]]) for k in inputs}  # qa, qa, cls, cls, qa, qa
    task_ids = ["qa", "qa", "cls", "cls", "qa", "qa"]
    with torch.no_grad():
        mixed = model(**batch, task_ids=task_ids)
        alone = model(**inputs, task="qa").logits
        cls = model(**others, task="cls").logits
    assert mixed.task_rows["qa"].tolist() == [0, 1, 4, 5]
    assert torch.allclose(mixed.logits["qa"], alone, atol=1e-5) and torch.allclose(mixed.logits["cls"], cls, atol=1e-5)


def test_padding_is_out_of_play_so_the_loss_does_not_depend_on_it(tokenizer, monkeypatch):
    model = qa_model(tokenizer).eval()
    kind = ExtractiveQAKind(TaskConfig(type="extractive_qa"))
    short, _ = kind.encode_for_predict([{"question": "who", "context": CONTEXT}], tokenizer, max_length=32)
    n, t = short["input_ids"].shape
    padded = {k: torch.cat([v, torch.full((n, 7), tokenizer.pad_token_id if k == "input_ids" else 0,
                                          dtype=v.dtype)], dim=1) for k, v in short.items()}
    labels = torch.tensor([[0, 0]] * n)
    with torch.no_grad():
        a = model(**short, task="qa", labels=labels)
        b = model(**padded, task="qa", labels=labels)
        monkeypatch.setattr(ExtractiveQAKind, "mask_logits", lambda self, logits, mask: logits)
        unmasked = model(**padded, task="qa", labels=labels)  # what masking prevents: padding in the softmax
    # The real positions' logits agree, the padding ones can win nothing, the loss is the same.
    assert torch.allclose(a.logits, b.logits[:, :t], atol=1e-5)
    assert (b.logits[:, t:] == torch.finfo(b.logits.dtype).min).all()
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert torch.allclose(unmasked.logits[:, :t], a.logits, atol=1e-5) and unmasked.loss > a.loss + 1e-4


def test_qa_options_saved_with_the_model_give_the_same_windows_in_training_eval_and_predict(
        tmp_path, tokenizer, monkeypatch, capsys):
    """Trained with doc_stride 4 and max_length 16 (not the defaults 128/128): the saved task records
    them, and training-time evaluation, ``eval`` (given a run file without them) and ``predict`` all
    window with them — and answer alike."""
    import yaml

    import pal_adapters.tasks.extractive_qa as qa_module
    from pal_adapters.cli import main
    from pal_adapters.training.report import read_jsonl

    calls = []
    real = qa_module.make_windows
    monkeypatch.setattr(qa_module, "make_windows", lambda b, tok, n, stride: calls.append((n, stride)) or
                        real(b, tok, n, stride))
    write_word_squad(tmp_path / "squad.json")
    task = {"type": "extractive_qa", "max_length": 16, "options": {"doc_stride": 4},
            "data": {"kind": "squad_json", "path": str(tmp_path), "train": "squad.json[0:3]", "dev": "squad.json[3:]"}}
    train_tiny_run(tmp_path, tokenizer, {"qa": task}, batch_size=8)
    assert calls and set(calls) == {(16, 4)}  # training's train and dev windows
    saved = tmp_path / "out" / "last"
    model = MultiTaskModel.from_pretrained(saved, backbone=tiny_model("bert", vocab_size=len(tokenizer))).eval()
    assert model.tasks["qa"].options == {"doc_stride": 4} and model.tasks["qa"].max_length == 16

    defaults = {k: v for k, v in task.items() if k not in ("max_length", "options")}  # the run file forgot them
    run_file = tmp_path / "defaults.yaml"
    run_file.write_text(yaml.safe_dump({"model": str(tmp_path / "base"), "adapter": "pal", "tasks": {"qa": defaults}}))
    calls.clear()
    capsys.readouterr()  # training's output
    assert main(["eval", str(saved), str(run_file), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["qa"]
    trained = [r for r in read_jsonl(tmp_path / "out" / "log.jsonl") if r["kind"] == "eval"][-1]["metrics"]["qa"]
    assert set(calls) <= {(16, 4)}  # (nothing new to window when the training-time windows are cached)
    assert evaluated == pytest.approx(trained, abs=1e-6)

    row = {"question": "who golf", "context": " ".join(WORDS[:12] * 2)}  # long enough for several windows
    calls.clear()
    assert main(["predict", str(saved), "--task", "qa", "--question", row["question"],
                 "--context", row["context"]]) == 0
    got = json.loads(capsys.readouterr().out)["predictions"]["qa"]
    assert set(calls) == {(16, 4)}
    windows = real({"id": ["0"], **{k: [v] for k, v in row.items()}}, tokenizer, 16, 4)  # independent windows
    assert len(windows["input_ids"]) > 1
    inputs = tokenizer.pad({k: windows[k] for k in ("input_ids", "token_type_ids", "attention_mask")},
                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs, task="qa").logits
    want = model.heads["qa"].kind.describe(logits, windows | {"answers": [[]] * len(windows["input_ids"])})[0]
    assert got == pytest.approx(want, abs=1e-5)

"""Supervised prompt/completion data: loss masks, padding and packing layouts, real files, errors."""

from __future__ import annotations

import json

import pytest
import torch

from lifecycle.data import SupervisedData, load_supervised
from lifecycle.errors import LifecycleError

from conftest import make_tiny_model, shared_data

ROWS = [
    {"prompt": "To be, or not to be:", "completion": "that is the question."},
    {"prompt": "Now is the winter of our discontent", "completion": "made glorious summer."},
    {"prompt": "Friends, Romans, countrymen, lend me your ears;", "completion": "I come to bury Caesar."},
    {"prompt": "All the world's a stage,", "completion": "and all the men and women merely players."},
    {"prompt": "O Romeo, Romeo!", "completion": "wherefore art thou Romeo?"},
    {"prompt": "The quality of mercy", "completion": "is not strained."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "sft.jsonl", ROWS)


def _load(path, tok, max_length=64, **kw) -> SupervisedData:
    kw.setdefault("val_fraction", 0.0)
    return load_supervised(str(path), tok, max_length, **kw)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_loss_mask_is_exactly_the_completion(rows_file, tiny_tokenizer):
    tok = tiny_tokenizer
    data = _load(rows_file, tok)
    assert data.num_train == len(ROWS) and data.num_validation == 0
    batch = data.train_batch(torch.arange(len(ROWS)))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert all(v.dtype == torch.long and v.shape == batch["input_ids"].shape for v in batch.values())
    width = batch["input_ids"].shape[1]
    for r, row in enumerate(ROWS):
        p = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
        c = len(tok(" " + row["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
        ids, labels, mask = batch["input_ids"][r], batch["labels"][r], batch["attention_mask"][r]
        expected_masked = torch.ones(width, dtype=torch.bool)
        expected_masked[p:p + c] = False
        assert torch.equal(labels == -100, expected_masked)
        assert torch.equal(labels[p:p + c], ids[p:p + c])
        assert torch.equal(mask, (torch.arange(width) < p + c).long())
        assert (ids[p + c:] == data.pad_id).all()
        assert tok.decode(ids[labels != -100]) == " " + row["completion"] + tok.eos_token
        assert tok.decode(ids[:p]) == row["prompt"]


def test_padding_to_longest_or_max_length(rows_file, tiny_tokenizer):
    longest = _load(rows_file, tiny_tokenizer)
    lengths = longest.train_examples.lengths
    b = longest.train_batch([0, 1])
    assert b["input_ids"].shape[1] == int(lengths[:2].max())
    assert b["attention_mask"].sum(1).tolist() == lengths[:2].tolist()
    fixed = _load(rows_file, tiny_tokenizer, pad_to="max_length")
    assert fixed.train_batch([0, 1])["input_ids"].shape == (2, 64)
    assert fixed.fingerprint != longest.fingerprint
    # Index forms: a scalar, a list, a slice; the epoch order is a seeded permutation.
    assert longest.train_batch(3)["input_ids"].shape[0] == 1
    assert torch.equal(longest.train_batch(slice(0, 2))["labels"], b["labels"])
    order = longest.epoch_order(0, 0)
    assert sorted(order.tolist()) == list(range(len(ROWS)))
    assert torch.equal(order, longest.epoch_order(0, 0)) and not torch.equal(order, longest.epoch_order(0, 1))


def test_packing_keeps_whole_examples_and_masks_each(rows_file, tiny_tokenizer):
    tok = tiny_tokenizer
    padded = _load(rows_file, tok, max_length=48)
    packed = _load(rows_file, tok, max_length=48, layout="packing")
    blocks = packed.train_batch(torch.arange(packed.num_train))
    assert blocks["input_ids"].shape == (packed.num_train, 48)
    assert packed.num_train < len(ROWS)  # short examples share blocks
    total = int(padded.train_examples.lengths.sum())
    assert int(blocks["attention_mask"].sum()) == total
    # Real tokens of a block are whole examples back to back (each ends in EOS), then padding.
    eos = tok.eos_token_id
    pieces = []
    for ids, labels, mask in zip(blocks["input_ids"], blocks["labels"], blocks["attention_mask"]):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (labels[n:] == -100).all()
        start = 0
        for end in (ids[:n] == eos).nonzero().flatten().tolist():
            pieces.append((tuple(ids[start:end + 1].tolist()), tuple(labels[start:end + 1].tolist())))
            start = end + 1
        assert start == n
    expected = []
    b = padded.train_batch(torch.arange(len(ROWS)))
    for ids, labels, mask in zip(b["input_ids"], b["labels"], b["attention_mask"]):
        n = int(mask.sum())
        expected.append((tuple(ids[:n].tolist()), tuple(labels[:n].tolist())))
    assert sorted(pieces) == sorted(expected)
    assert packed.describe()["train_blocks"] == packed.num_train


def test_truncation_cuts_the_prompt_from_the_left(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = "word " * 200 + "the end:"
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt, "completion": "yes"}])
    data = _load(path, tok, max_length=32)
    b = data.train_batch([0])
    assert b["input_ids"].shape == (1, 32) and b["attention_mask"].all()
    assert tok.decode(b["input_ids"][0][b["labels"][0] != -100]) == " yes" + tok.eos_token
    assert tok.decode(b["input_ids"][0]).endswith("the end: yes" + tok.eos_token)
    assert data.describe()["truncated_prompts"] == 1
    with pytest.raises(LifecycleError, match="no room for the prompt") as exc:
        _load(write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "completion": "w " * 50}]), tok, max_length=16)
    assert "c.jsonl:1" in _one_line(exc)


def test_tiny_llama_loss_is_the_completion_cross_entropy(rows_file, tiny_tokenizer):
    model = make_tiny_model(len(tiny_tokenizer))
    for layout in ("padding", "packing"):
        data = _load(rows_file, tiny_tokenizer, max_length=48, layout=layout)
        batch = data.train_batch(torch.arange(min(4, data.num_train)))
        with torch.no_grad():
            loss = model(**batch).loss
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # By hand: position t predicts token t+1; only completion tokens (and their EOS) count.
        target = batch["input_ids"][:, 1:]
        scored = batch["labels"][:, 1:] != -100
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        manual = nll[scored].mean()
        assert int(scored.sum()) == int((batch["labels"] != -100).sum())  # no completion token sits at position 0
        assert torch.allclose(loss, manual, atol=1e-5), (layout, loss, manual)


def test_validation_split_and_file_and_cache(tmp_path, rows_file, tiny_tokenizer):
    tok = tiny_tokenizer
    split = load_supervised(str(rows_file), tok, 64, val_fraction=0.34)
    assert (split.num_train, split.num_validation) == (4, 2)
    last = split.validation_batch([1])
    assert tok.decode(last["input_ids"][0][last["labels"][0] != -100]) == " " + ROWS[-1]["completion"] + tok.eos_token
    val_file = write_jsonl(tmp_path / "val.jsonl", ROWS[:1])
    given = load_supervised(str(rows_file), tok, 64, validation=val_file)
    assert (given.num_train, given.num_validation) == (len(ROWS), 1)
    again = load_supervised(str(rows_file), tok, 64, validation=val_file)
    assert again.fingerprint == given.fingerprint
    assert torch.equal(again.train_examples.ids, given.train_examples.ids)
    write_jsonl(rows_file, ROWS[:-1])
    changed = load_supervised(str(rows_file), tok, 64, validation=val_file)
    assert changed.fingerprint != given.fingerprint and changed.num_train == len(ROWS) - 1
    assert not list((tmp_path).glob("*.pt")) and not list((tmp_path).glob("*.pkl"))


def test_named_fields_template_and_instruction(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Who wrote Hamlet?", "a": "Shakespeare", "topic": "plays"}])
    data = load_supervised(f"{path}#prompt=q,completion=a", tok, 64, val_fraction=0.0,
                           instruction="Answer briefly.")
    b = data.train_batch([0])
    text = tok.decode(b["input_ids"][0])
    assert text == "Answer briefly.\nWho wrote Hamlet?\nAnswer: Shakespeare" + tok.eos_token
    custom = load_supervised(path, tok, 64, prompt_field="q", completion_field="a", val_fraction=0.0,
                             template="[{topic}] Q: {input}\nA:", separator=" ")
    assert tok.decode(custom.train_batch([0])["input_ids"][0]).startswith("[plays] Q: Who wrote Hamlet?\nA: Shakespeare")
    with pytest.raises(LifecycleError, match="placeholder") as exc:
        load_supervised(path, tok, 64, prompt_field="q", completion_field="a", template="{nope} {input}")
    _one_line(exc)
    with pytest.raises(LifecycleError, match="unknown option 'promt'"):
        load_supervised(f"{path}#promt=q", tok, 64)


def test_real_files_continual_task_folder_and_gsm8k(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    cb = shared_data() / "continual" / "cb"
    data = load_supervised(str(cb), tok, 256, layout="packing", val_fraction=0.1)
    info = data.describe()
    assert info["fields"] == {"prompt": "sentence", "completion": "label"}
    assert info["labels"] == json.loads((cb / "labels.json").read_text())
    instruction = (cb / "instruction.txt").read_text().strip()
    first_row = json.loads((cb / "train.jsonl").read_text().splitlines()[0])
    padded = load_supervised("cb", tok, 256, val_fraction=0.1)  # a continual task by name
    ex = padded.train_batch([0])
    assert tok.decode(ex["input_ids"][0][ex["attention_mask"][0].bool()]) == (
        f"{instruction}\n{first_row['sentence']}\nAnswer: {first_row['label']}{tok.eos_token}"
    )
    assert padded.num_train + padded.num_validation == info["train_examples"] + info["validation_examples"] == 250
    # COPA has no instruction.txt: its items carry their own question.
    from lifecycle.data.supervised import _resolve

    assert _resolve(str(shared_data() / "continual" / "copa")).instruction is None
    gsm = _resolve("gsm8k")
    assert gsm.train.name == "gsm8k_train.jsonl" and gsm.default_template.startswith("Question: ")
    # GSM8K's own rows (question/answer fields, found without naming them).
    head = (shared_data() / "eval" / "gsm8k_train.jsonl").read_text().splitlines()[:8]
    sample = tmp_path / "gsm8k_head.jsonl"
    sample.write_text("\n".join(head) + "\n")
    g = load_supervised(str(sample), tok, 512, val_fraction=0.25)
    assert g.describe()["fields"] == {"prompt": "question", "completion": "answer"}
    assert (g.num_train, g.num_validation) == (6, 2)
    b = g.train_batch([0])
    assert tok.decode(b["input_ids"][0][b["labels"][0] != -100]) == " " + json.loads(head[0])["answer"] + tok.eos_token


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', r"bad\.jsonl:2 has no 'completion' field"),
        (b'{"prompt": "a", "completion": "b"}\n["c", "d"]\n', r"bad\.jsonl:2 is a JSON array, not an object"),
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": \n', r"bad\.jsonl:2 is not valid JSON"),
        ('{"prompt": "caf\u00e9", "completion": "b"}\n'.encode("latin-1"), r"bad\.jsonl is not UTF-8 text: byte 15 \(line 1\)"),
        (b"", r"bad\.jsonl has no examples"),
        (b"\n  \n", r"bad\.jsonl has no examples"),
        (b'{"text": "a"}\n', r"bad\.jsonl:1 has no 'prompt' field \(fields: text\)"),
        (b'{"prompt": "a", "completion": null}\n', r"field 'completion' is null"),
        (b'{"prompt": "a", "completion": "  "}\n', r"field 'completion' is empty"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, tiny_tokenizer, content, pattern):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(LifecycleError, match=pattern) as exc:
        load_supervised(str(path), tiny_tokenizer, 64, use_cache=False)
    _one_line(exc)


def test_missing_data_and_bad_settings(tmp_path, tiny_tokenizer, rows_file):
    with pytest.raises(LifecycleError, match="supervised data not found"):
        load_supervised(str(tmp_path / "nope.jsonl"), tiny_tokenizer, 64)
    (tmp_path / "task").mkdir()
    with pytest.raises(LifecycleError, match="no train.jsonl"):
        load_supervised(str(tmp_path / "task"), tiny_tokenizer, 64)
    with pytest.raises(LifecycleError, match="layout"):
        load_supervised(str(rows_file), tiny_tokenizer, 64, layout="ragged")

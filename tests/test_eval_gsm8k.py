"""The local GSM8K tasks (lifecycle/eval/tasks/gsm8k*.yaml): answer NLL and exact match of ``#### N``.

The NLL is checked against a direct computation with the model; exact match against generations
whose right and wrong answers are known (lm-eval's generation is replaced by canned strings, so the
test exercises the task's own regex filters and metric settings, not a model's luck).
"""

from __future__ import annotations

import json

import pytest
import torch

from lifecycle.eval.harness import evaluate

ITEMS = [
    ("What is 2 plus 3?", "2 + 3 = <<2+3=5>>5\n#### 5"),
    ("Tom has 4 apples and eats 1. How many are left?", "4 - 1 = <<4-1=3>>3\n#### 3"),
    ("A bike costs 1200 dollars. What is its price?", "The price is 1200 dollars.\n#### 1,200"),
    ("What is 10 minus 4?", "10 - 4 = <<10-4=6>>6\n#### 6"),
]

# Generations, one per item above: strict-match reads the first "#### N", flexible-extract the last
# number; the reference's "#### " prefix, commas, "$" and a final "." are ignored on both sides.
GENERATIONS = {
    ITEMS[0][0]: " 2 + 3 = 5\n#### 5",                       # strict ✓  flexible ✓
    ITEMS[1][0]: " 4 - 1 = 3, so 3 are left",                # strict ✗ (no ####)  flexible ✓
    ITEMS[2][0]: " It costs $1,200.\n#### 1,200",            # strict ✓ (1,200 = 1,200)  flexible ✓
    ITEMS[3][0]: " 10 - 4 = 7\n#### 7",                      # strict ✗  flexible ✗
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def eval_dir(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    rows = "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ITEMS)
    (folder / "gsm8k_test.jsonl").write_text(rows)
    (folder / "gsm8k_train.jsonl").write_text(rows)  # the few-shot source; unused at 0 shots
    return folder


def _answer_nll(model, tokenizer, question: str, answer: str) -> float:
    """-log p(" " + answer | "Question: …\\nAnswer:"), summed over the answer's tokens."""
    context = tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    target = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(target) - 1)
    return -float(logprobs[positions, torch.tensor(target)].sum())


def test_answer_nll_is_the_per_answer_teacher_forced_nll(tiny_model, tiny_tokenizer, eval_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = evaluate(tiny_model, tiny_tokenizer, "gsm8k_answer_nll", limit=3, max_length=512, eval_dir=eval_dir)
    expected = [_answer_nll(tiny_model, tiny_tokenizer, q, a) for q, a in ITEMS[:3]]
    assert report.settings["n_samples"] == {"gsm8k_answer_nll": 3}
    assert report.scores["gsm8k_answer_nll"]["answer_nll"] == pytest.approx(sum(expected) / 3, rel=1e-4)
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)  # the items differ, so the mean is a real check


def test_exact_match_reads_the_final_number(tiny_model, tiny_tokenizer, eval_dir, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    seen: list[tuple[str, dict]] = []

    def canned(self, requests, disable_tqdm=False):
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            seen.append((context, gen_kwargs))
            out.append(next(text for question, text in GENERATIONS.items() if question in context))
        return out

    monkeypatch.setattr(HFLM, "generate_until", canned)
    monkeypatch.chdir(tmp_path)
    report = evaluate(tiny_model, tiny_tokenizer, "gsm8k", max_length=512, eval_dir=eval_dir)
    em = report.scores["gsm8k_exact_match"]
    assert em["exact_match_strict-match"] == pytest.approx(2 / 4)
    assert em["exact_match_flexible-extract"] == pytest.approx(3 / 4)
    assert em["exact_match_strict-match_stderr"] == pytest.approx((0.5 * 0.5 / 3) ** 0.5)  # sample sd / sqrt(n)
    # the group runs both tasks and adds no empty row of its own
    assert set(report.scores) == {"gsm8k_answer_nll", "gsm8k_exact_match"}
    assert len(seen) == 4 and all(c.startswith("Question: ") and c.endswith("\nAnswer:") for c, _ in seen)
    assert all(kw["do_sample"] is False and "Question:" in kw["until"] for _, kw in seen)


def test_eval_command_scores_gsm8k(tiny_checkpoint, tmp_path, monkeypatch):
    """`lifecycle eval --tasks gsm8k` on the shared GSM8K test file, two problems, real greedy generation."""
    from lifecycle.commands import load_all
    from lifecycle.commands.eval import EvalOptions

    monkeypatch.chdir(tmp_path)
    load_all()["eval"].run(EvalOptions(model=str(tiny_checkpoint), tasks="gsm8k", limit="2", max_length=512))
    saved = json.loads((tiny_checkpoint / "eval_results.json").read_text())
    assert saved["settings"]["n_samples"] == {"gsm8k_answer_nll": 2, "gsm8k_exact_match": 2}
    assert saved["scores"]["gsm8k_answer_nll"]["answer_nll"] > 0
    assert saved["scores"]["gsm8k_exact_match"]["exact_match_strict-match"] == 0.0  # a random model


def test_missing_gsm8k_file_is_named_before_scoring(tiny_model, tiny_tokenizer, tmp_path):
    from lifecycle.errors import LifecycleError

    (tmp_path / "gsm8k_test.jsonl").write_text("")
    with pytest.raises(LifecycleError, match="gsm8k_train.jsonl not found"):
        evaluate(tiny_model, tiny_tokenizer, "gsm8k", eval_dir=tmp_path)

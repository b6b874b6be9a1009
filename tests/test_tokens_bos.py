"""Every path that builds token ids follows the tokenizer's own convention.

Two tokenizers that add a BOS, built offline: a Gemma-style one (a post-processor template
``<bos> $A``, as Gemma's tokenizer.json has) over a tiny random Gemma-3, and a llama-like one
(``add_bos_token=True``); a third adds nothing (SmolLM2, GPT-2 style) and must stay unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

BOS = 2
WORDS = ("the and to of I a my in you is that it not me with be his your for this he but have as thou so will what "
         "her him all by do no shall if are we our on thee or from at they good lord now").split()


def make_tokenizer(mode: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": BOS, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {}
    if mode == "gemma":
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                          special_tokens=[("<bos>", BOS)])
    elif mode == "llama":
        kw["add_bos_token"] = True
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", **kw)


ARCH = {"gemma": "gemma3_text", "llama": "llama", "plain": "llama"}


@pytest.fixture(scope="module", params=["gemma", "llama", "plain"])
def case(request, tmp_path_factory):
    """A saved tiny model + tokenizer, reloaded the way a user loads it (AutoTokenizer from the directory)."""
    from prunelens.model.loading import load_model

    mode = request.param
    d = tmp_path_factory.mktemp(mode) / "model"
    model = make_tiny_model(ARCH[mode], layers=2, vocab=96)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(d, safe_serialization=True)
    make_tokenizer(mode).save_pretrained(d)
    return mode, d, load_model(str(d))


def own_ids(tok, text: str) -> list[int]:
    """What the tokenizer itself builds for a text."""
    return [int(i) for i in tok(text)["input_ids"]]


def expect_prefix(mode: str) -> list[int]:
    return [] if mode == "plain" else [BOS]


def test_convention_is_read_from_the_tokenizer(case):
    from prunelens.text.tokens import convention

    mode, _, loaded = case
    conv = convention(loaded.tokenizer)
    assert list(conv.prefix) == expect_prefix(mode) and conv.suffix == ()
    assert conv.as_attrs()["adds_bos"] is (mode != "plain")


def test_encode_equals_the_tokenizers_own_ids(case):
    from prunelens.evaluation import scoring as T

    mode, _, loaded = case
    tok = loaded.tokenizer
    for text in ("the lord is good", "I shall not, my lord.", "thou art"):
        assert T.encode(tok, text, special=True) == own_ids(tok, text)
        assert T.encode(tok, text) == [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    assert own_ids(tok, "the lord")[: len(expect_prefix(mode))] == expect_prefix(mode)


def test_token_windows_start_like_the_tokenizer_and_keep_their_length(case):
    from prunelens.text.corpora import _tokenized, token_windows

    mode, _, loaded = case
    tok = loaded.tokenizer
    rows = token_windows(tok, 5, 24, split="heldout", seed=1)
    assert rows.shape == (5, 24)
    k = len(expect_prefix(mode))
    assert (rows[:, :k] == np.asarray(expect_prefix(mode))).all()
    ids, starts = _tokenized(tok, "heldout")
    for row in rows:  # the rest is the split's text from a paragraph start, as the tokenizer splits it
        assert any(np.array_equal(ids[s:s + 24 - k], row[k:]) for s in starts)


def test_text_prompts_follow_the_convention_and_truncation_keeps_bos(case, tmp_path):
    from prunelens.probe.prompts import load_prompts

    mode, _, loaded = case
    tok = loaded.tokenizer
    lines = ["the lord is good", " ".join(WORDS)]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines))
    prompts = load_prompts(path, tok, prompt_len=10)
    assert prompts.ids[0] == own_ids(tok, lines[0])
    full = own_ids(tok, lines[1])
    k = len(expect_prefix(mode))
    assert prompts.ids[1] == full[:k] + full[-(10 - k):] and len(prompts.ids[1]) == 10


def _capture(monkeypatch, name: str, result):
    from prunelens.evaluation import scoring as T

    seen: dict = {}
    real = getattr(T, name)

    def spy(model, rows, *args, **kwargs):
        seen["rows"] = [list(map(int, r)) for r in (rows.tolist() if hasattr(rows, "tolist") else rows)]
        return result(rows, *args, **kwargs) if callable(result) else real(model, rows, *args, **kwargs)

    monkeypatch.setattr(T, name, spy)
    return seen


def test_every_task_builds_its_sequences_with_the_convention(case, monkeypatch):
    from prunelens.evaluation.task_runner import parse_task

    mode, _, loaded = case
    tok = loaded.tokenizer
    prefix = expect_prefix(mode)
    k = len(prefix)

    ppl = _capture(monkeypatch, "perplexity", None)
    parse_task("perplexity:n_samples=3,length=16").run(loaded)
    assert all(r[:k] == prefix and len(r) == 16 for r in ppl["rows"])

    gen = _capture(monkeypatch, "greedy_generate", None)
    parse_task("gen_agreement:n_samples=3,prompt_len=8,steps=2").run(loaded, reference=loaded)
    assert all(r[:k] == prefix and len(r) == 8 for r in gen["rows"])

    nl = _capture(monkeypatch, "grouped_logprobs", None)
    parse_task("mc_nextline:n_samples=4").run(loaded)
    from prunelens.evaluation import scoring as T

    items = T.nextline_items(4, 0, 6)
    assert nl["rows"] == [own_ids(tok, it.context) for it in items]

    try:
        lettered = T.lettered_prompts(tok, 4, 0)
    except Exception as exc:  # the toy vocabulary has no single-token letters
        assert "lettered prompts need one" in str(exc)
    else:
        assert all(r[:k] == prefix for r in lettered[0])


def test_calibration_and_dense_ranker_windows_follow_the_convention(case):
    from prunelens.compression.sequential import _default_calibration
    from prunelens.plan.ranking import RankContext
    from prunelens_plugins.rankers import dense_ids

    mode, _, loaded = case
    prefix = expect_prefix(mode)
    k = len(prefix)
    calib = _default_calibration(loaded, samples=3, length=16)
    assert calib.shape == (3, 16) and (calib[:, :k] == torch.tensor(prefix)).all()
    ranker = dense_ids(RankContext(None, None, "block", 1.0, loaded=loaded), 3, 16, 0)
    assert ranker.shape == (3, 16) and (ranker[:, :k] == torch.tensor(prefix)).all()


def test_probe_store_prompts_start_like_the_tokenizer_and_record_the_convention(case, tmp_path):
    from click.testing import CliRunner

    from prunelens.cli import main

    mode, d, _ = case
    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["probe", "--model", str(d), "--method", "drop", "--units", "L0", "--samples", "2",
                                    "--steps", "2", "--prompt-len", "6", "--temperature", "1.0", "--locality",
                                    "propagated", "--timing", "teacher_forced", "--device", "cpu", "--no-compile",
                                    "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    from prunelens_store.reader import open_store

    ds = open_store(out)
    tokens = np.asarray(ds["tokens"].values)
    k = len(expect_prefix(mode))
    assert (tokens[:, :k] == np.asarray(expect_prefix(mode))).all()
    if k:
        assert (tokens[:, 1:6] != BOS).all()  # one BOS, then text
    rec = json.loads(ds.attrs["tokenization"])
    assert rec["adds_bos"] is (mode != "plain") and rec["prefix_ids"] == expect_prefix(mode)

"""Disjoint data: probe prompts, calibration, search fitness and evaluation windows never share text."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from prunelens.text.corpora import SPLITS, _tokenized, data_splits, shakespeare_works, token_windows


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from prunelens.model.loading import prepared_path

    return AutoTokenizer.from_pretrained(prepared_path("smollm2-135m"))


def test_every_work_is_in_exactly_one_split():
    works = {s: {p.name for p in shakespeare_works(s)} for s in SPLITS}
    assert all(works.values())
    for a, b in itertools.combinations(SPLITS, 2):
        assert not works[a] & works[b], (a, b)
    assert sum(len(w) for w in works.values()) == 42
    rule = data_splits()
    assert sorted(v for s in SPLITS for v in rule[s]) == [0, 1, 2, 3, 4]


def _occurs(window: np.ndarray, stream: bytes) -> bool:
    """Whether ``window`` occurs as a contiguous run of ``stream`` (int64 ids as bytes, aligned to 8)."""
    needle = window.astype(np.int64).tobytes()
    start = stream.find(needle)
    while start != -1:
        if start % 8 == 0:
            return True
        start = stream.find(needle, start + 1)
    return False


def test_no_window_of_one_split_occurs_in_another(tok):
    """Every split's windows (as the entry points draw them) occur in their own text and in no other split's."""
    from prunelens.probe.prompts import shakespeare_prompts
    from prunelens.text.tokens import convention

    skip = len(convention(tok).prefix)
    streams = {s: _tokenized(tok, s)[0].astype(np.int64).tobytes() for s in SPLITS}
    drawn = {
        "probe": np.asarray(shakespeare_prompts(tok, 24, 32, seed=0).ids),  # probe's default prompts
        "calib": token_windows(tok, 24, 64, split="calib", seed=0),  # calibration (compress, apply, probe stats)
        "search": token_windows(tok, 24, 64, split="search", seed=0),  # the search allocator's fitness windows
        "heldout": token_windows(tok, 24, 64, split="heldout", seed=1),  # perplexity evaluation
    }
    for split, rows in drawn.items():
        for row in rows:
            text = np.asarray(row[skip:])
            assert _occurs(text, streams[split]), split
            for other in SPLITS:
                if other != split:
                    assert not _occurs(text, streams[other]), (split, other)


def test_default_probe_prompts_ask_for_the_probe_split(monkeypatch):
    """Probe prompts without --prompts come from the probe split (the search's own split: test_search_allocation)."""
    import prunelens.text.corpora

    asked = []

    def windows(tokenizer, n, length, split="calib", seed=0):
        asked.append(split)
        return np.full((n, length), 5, dtype=np.int64)

    monkeypatch.setattr(prunelens.text.corpora, "token_windows", windows)
    from prunelens.probe.prompts import shakespeare_prompts

    shakespeare_prompts(None, 2, 4)
    assert asked == ["probe"]


def test_probe_store_and_plan_record_the_splits(tmp_path):
    from click.testing import CliRunner
    from rank_helpers import save_tiny

    from prunelens.cli import main
    from prunelens.plan.ranking import load_store

    model = save_tiny(tmp_path / "tiny", layers=2)
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["probe", "--model", str(model), "--method", "rtn:bits=2,3", "--units", "block",
                                    "--samples", "2", "--steps", "2", "--prompt-len", "4", "--temperature", "1",
                                    "--locality", "propagated", "--timing", "teacher_forced", "--out", str(store),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    ds = load_store(store)
    assert ds.attrs["prompts_source"].startswith("shakespeare:probe:")
    assert json.loads(ds.attrs["data_splits"]) == data_splits()
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(main, ["plan", str(store), "--budget", "bits=10", "-T", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())["data"]
    assert data["splits"] == data_splits() and data["probe_prompts"].startswith("shakespeare:probe:")
    assert data["calibration"]["split"] == "calib"

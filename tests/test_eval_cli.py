"""``prunelens eval`` on a tiny checkpoint directory (saved with the bundled tokenizer)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_model

from prunelens.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import AutoTokenizer

    from prunelens.model.loading import is_prepared, prepared_path

    if not is_prepared("smollm2-135m"):
        pytest.skip("the bundled SmolLM2 tokenizer is not prepared")
    tok = AutoTokenizer.from_pretrained(prepared_path("smollm2-135m"))
    out = tmp_path_factory.mktemp("tiny-ckpt")
    make_tiny_model("llama", layers=2, vocab=len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out, tok


def test_eval_cli_json_matches_direct_perplexity(tiny_dir, tmp_path):
    path, tok = tiny_dir
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", str(path), "--tasks", "perplexity:length=10,mc_nextline",
                                    "--samples", "2", "--seed", "4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "perplexity" in res.output and "mc_nextline" in res.output
    record = json.loads(out.read_text())
    assert record["configs"]["perplexity"]["n_samples"] == 2 and record["configs"]["perplexity"]["length"] == 10
    assert set(record["results"]["mc_nextline"]) == {"alias", "acc,none", "acc_stderr,none", "acc_norm,none",
                                                     "acc_norm_stderr,none"}
    assert record["n-samples"]["mc_nextline"] == {"original": 2, "effective": 2}
    assert isinstance(record["n-samples"]["mc_nextline"]["effective"], int)
    assert record["versions"]["mc_nextline"] == "1" and record["config"]["model"] == str(path)
    assert "samples" not in record
    from transformers import AutoModelForCausalLM

    from prunelens.text.corpora import token_windows

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    windows = torch.as_tensor(token_windows(tok, 2, 10, split="heldout", seed=4))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=windows).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).mean()
    ppl = record["results"]["perplexity"]
    assert ppl["ppl,none"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    # word and byte perplexity: the same total NLL over the words / UTF-8 bytes of the predicted text
    text = tok.batch_decode(windows[:, 1:].tolist())
    total = float(nll) * windows[:, 1:].numel()
    words, nbytes = sum(len(t.split()) for t in text), sum(len(t.encode()) for t in text)
    assert ppl["word_perplexity,none"] == pytest.approx(math.exp(total / words), rel=1e-5)
    assert ppl["byte_perplexity,none"] == pytest.approx(math.exp(total / nbytes), rel=1e-5)
    assert ppl["bits_per_byte,none"] == pytest.approx(total / nbytes / math.log(2), rel=1e-5)


def test_report_reads_what_eval_json_writes(tiny_dir, tmp_path):
    """`report --eval` on the file `eval --json` wrote (it crashed with AttributeError)."""
    from rank_helpers import synthetic_store

    path, _ = tiny_dir
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", str(path), "--tasks", "mc_nextline", "--samples", "3", "--json", str(out),
                                    "--log-samples"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    logs = record["samples"]["mc_nextline"]
    assert len(logs) == 3 and sum(x["acc"] for x in logs) / 3 == pytest.approx(record["results"]["mc_nextline"]["acc,none"])
    store = tmp_path / "s.zarr"
    synthetic_store(num_layers=2, attrs={"model_id": "tiny", "config_hash": "abc", "complete": True}).to_zarr(
        store, mode="w", consolidated=False, zarr_format=3)
    res = CliRunner().invoke(main, ["report", str(store), "--eval", str(out), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    row = next(line for line in md.splitlines() if line.startswith(f"| {path} |"))
    cells = dict(zip(header.split("|"), row.split("|")))
    assert float(cells[" mc_nextline.acc "]) == pytest.approx(record["results"]["mc_nextline"]["acc,none"], abs=1e-3)
    assert float(cells[" mc_nextline.n "]) == 3


def test_eval_results_reader_accepts_old_and_by_model_shapes():
    from prunelens.errors import PrunelensError
    from prunelens.evaluation.results import read_results

    old = {"model": "m", "results": {"mc_nextline": {"acc": 0.5, "n": 4.0}}}
    assert read_results(old) == {"m": {"mc_nextline": {"acc": 0.5, "n": 4.0}}}
    by_model = {"dense": {"perplexity": {"ppl": 10.0}}, "plan": {"perplexity": {"ppl": 12.0}}}
    assert read_results(by_model)["plan"] == {"perplexity": {"ppl": 12.0}}
    assert read_results({"perplexity": {"ppl": 3.0}}) == {"model": {"perplexity": {"ppl": 3.0}}}
    with pytest.raises(PrunelensError, match="unrecognised shape"):
        read_results({"a": 1})
    with pytest.raises(PrunelensError, match="expected metric"):
        read_results({"results": {"t": "oops"}})


def test_eval_lm_eval_without_lm_eval_installed_is_one_line(tiny_dir, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    path, _ = tiny_dir
    res = CliRunner().invoke(main, ["eval", str(path), "--lm-eval", "arc_easy"])
    assert res.exit_code == 1
    assert "pip install 'prunelens[lm-eval]'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_eval_cli_reference_json_stdout(tiny_dir):
    path, _ = tiny_dir
    res = CliRunner().invoke(main, ["eval", str(path), "--reference", str(path), "--tasks",
                                    "gen_agreement:steps=4,prompt_len=6", "--samples", "2", "--json", "-"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output[res.output.index("{"):])
    assert record["results"]["gen_agreement"]["token_match,none"] == 1.0
    assert record["results"]["gen_agreement"]["first_divergence,none"] == 4.0


@pytest.mark.parametrize("args,message", [
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--tasks", "gen_agreement"], "--reference"),
    (["--tasks", "perplexity:bogus=1"], "no parameter bogus"),
])
def test_eval_cli_errors_are_one_line(tiny_dir, args, message):
    path, _ = tiny_dir
    res = CliRunner().invoke(main, ["eval", str(path), *args])
    assert res.exit_code == 1
    assert message in res.output and "Traceback" not in res.output


def test_eval_cli_list():
    res = CliRunner().invoke(main, ["eval", "x", "--list"])
    assert res.exit_code == 0
    for name in ("perplexity", "mc_nextline", "mc_letters", "gen_agreement", "gsm8k"):
        assert name in res.output


def test_docs_plugin_example_registers_and_runs(tiny_dir, tmp_path):
    """The task plugin example in docs/eval.md loads through --plugin and runs."""
    import re
    from pathlib import Path

    from test_eval_tasks import _loaded

    from prunelens.evaluation.task_runner import run_tasks

    doc = (Path(__file__).resolve().parents[1] / "docs" / "eval.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "class FirstToken" in b)
    (tmp_path / "doc_first_token.py").write_text(code)
    res = CliRunner().invoke(main, ["--plugin", str(tmp_path / "doc_first_token.py"), "eval", "--list"])
    assert res.exit_code == 0 and "first_token" in res.output
    tiny = _loaded(tiny_dir[1])
    assert run_tasks(tiny, ["first_token"], reference=tiny, n_samples=3) == {"first_token": {"match": 1.0}}

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

    from prunelens.models import is_prepared, prepared_path

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
    assert record["tasks"]["perplexity"]["n_samples"] == 2 and record["tasks"]["perplexity"]["length"] == 10
    assert set(record["results"]["mc_nextline"]) == {"acc", "acc_norm", "acc_stderr", "n"}
    from transformers import AutoModelForCausalLM

    from prunelens.data import token_windows

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    windows = torch.as_tensor(token_windows(tok, 2, 10, split="heldout", seed=4))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=windows).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).mean()
    assert record["results"]["perplexity"]["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_eval_cli_reference_json_stdout(tiny_dir):
    path, _ = tiny_dir
    res = CliRunner().invoke(main, ["eval", str(path), "--reference", str(path), "--tasks",
                                    "gen_agreement:steps=4,prompt_len=6", "--samples", "2", "--json", "-"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.output[res.output.index("{"):])
    assert record["results"]["gen_agreement"]["token_match"] == 1.0
    assert record["results"]["gen_agreement"]["first_divergence"] == 4.0


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

    from prunelens.evaluation import run_tasks
    from test_eval_tasks import _loaded

    doc = (Path(__file__).resolve().parents[1] / "docs" / "eval.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "class FirstToken" in b)
    (tmp_path / "doc_first_token.py").write_text(code)
    res = CliRunner().invoke(main, ["--plugin", str(tmp_path / "doc_first_token.py"), "eval", "--list"])
    assert res.exit_code == 0 and "first_token" in res.output
    tiny = _loaded(tiny_dir[1])
    assert run_tasks(tiny, ["first_token"], reference=tiny, n_samples=3) == {"first_token": {"match": 1.0}}

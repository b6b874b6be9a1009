"""`prunelens eval --lm-eval`: lm-eval's results merge into prunelens's record; with lm-eval installed
(``PRUNELENS_LMEVAL_PYTHON``, default /tmp/lmeval-venv/bin/python, a Python with lm-eval[hf] and prunelens)
a task defined from a local JSON file scores the same through prunelens as through lm_eval by hand."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from rank_helpers import save_tiny

from prunelens.evaluation.lm_eval_harness import merge_records
from prunelens.evaluation.results import read_results


def test_merge_keeps_both_and_reads_back():
    ours = {"results": {"mc_nextline": {"alias": "mc_nextline", "acc,none": 0.5}},
            "n-samples": {"mc_nextline": {"original": 4, "effective": 4}}, "config": {"model": "m"}}
    lm = {"results": {"t": {"alias": "t", "name": "t", "sample_len": 6, "acc,none": 0.25, "acc_stderr,none": "N/A"}},
          "n-samples": {"t": {"original": 6, "effective": 6}}, "versions": {"t": 1.0},
          "config": {"model": "HFLM", "limit": None}}
    merged = merge_records(ours, lm)
    assert set(merged["results"]) == {"mc_nextline", "t"} and merged["lm_eval_config"] == lm["config"]
    assert read_results(merged) == {"m": {"mc_nextline": {"acc": 0.5, "n": 4.0}, "t": {"acc": 0.25, "n": 6.0}}}


def _lm_eval_python() -> str | None:
    exe = os.environ.get("PRUNELENS_LMEVAL_PYTHON", "/tmp/lmeval-venv/bin/python")
    if not Path(exe).is_file():
        return None
    probe = subprocess.run([exe, "-c", "import lm_eval.models.huggingface, prunelens"], capture_output=True)
    return exe if probe.returncode == 0 else None


@pytest.mark.slow
def test_local_json_task_same_accuracy_as_lm_eval_by_hand(tmp_path):
    exe = _lm_eval_python()
    if exe is None:
        pytest.skip("lm-eval[hf] is not installed (set PRUNELENS_LMEVAL_PYTHON to a Python that has it and prunelens)")
    model = save_tiny(tmp_path / "tiny", layers=2, seed=4)
    data = tmp_path / "items.jsonl"
    items = [{"context": f"w{5 + i} w{9 + i} w{20 + i}", "choices": [f" w{30 + i}", f" w{40 + i} w{41 + i}",
                                                                   f" w{50 + i}", f" w{60 + i}"], "answer": i % 4}
             for i in range(8)]
    data.write_text("".join(json.dumps(it) + "\n" for it in items))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        target_delimiter: ""
        metric_list:
          - metric: acc
          - metric: acc_norm
        metadata:
          version: 1.0
        """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PRUNELENS_LOAD_PLUGINS": "",
           "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "ds-cache")}
    ours = tmp_path / "ours.json"
    res = subprocess.run([exe, "-m", "prunelens", "eval", str(model), "--lm-eval", "tiny_mc", "--lm-eval-include",
                          str(tasks), "--device", "cpu", "--json", str(ours)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    by_hand = ("import json, sys; from lm_eval import simple_evaluate; from lm_eval.tasks import TaskManager; "
               "r = simple_evaluate(model='hf', model_args=f'pretrained={sys.argv[1]},dtype=float32', tasks=['tiny_mc'], "
               "task_manager=TaskManager(include_path=sys.argv[2]), device='cpu', batch_size=1); "
               "print(json.dumps(r['results']['tiny_mc'], default=str))")
    hand = subprocess.run([exe, "-c", by_hand, str(model), str(tasks)], capture_output=True, text=True, env=env)
    assert hand.returncode == 0, hand.stderr[-3000:]
    theirs = json.loads(hand.stdout.strip().splitlines()[-1])
    record = json.loads(ours.read_text())
    got = record["results"]["tiny_mc"]
    for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
        assert got[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert record["n-samples"]["tiny_mc"]["effective"] == 8 and record["config"]["model"] == str(model)

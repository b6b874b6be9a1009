"""Shell completion (click's) completes method, ranker and task names from the plugin registries."""

from __future__ import annotations

from click.shell_completion import ShellComplete

from prunelens.cli import main
from prunelens.compression.methods import method_registry
from prunelens.evaluation.task_runner import task_registry
from prunelens.plan.ranking import ranker_registry


def completions(args: list[str], incomplete: str) -> list[str]:
    return [c.value for c in ShellComplete(main, {}, "prunelens", "_PRUNELENS_COMPLETE").get_completions(args, incomplete)]


def test_method_names_complete():
    assert completions(["probe", "--method"], "wa") == sorted(n for n in method_registry() if n.startswith("wa"))
    assert set(completions(["compress", "--method"], "")) == set(method_registry())
    assert "drop" in completions(["rank", "store", "--method"], "d")
    assert completions(["probe", "--method"], "wanda:") == []  # parameters are the user's to type


def test_ranker_names_complete():
    assert set(completions(["rank", "store", "--by"], "")) == set(ranker_registry())
    assert completions(["plan", "store", "--by"], "kl") == sorted(n for n in ranker_registry() if n.startswith("kl"))
    assert "kl_pred" in completions(["report", "store", "--by"], "kl_")


def test_task_names_complete_the_last_item_of_a_list():
    names = sorted(n for n in task_registry() if n.startswith("mc"))
    assert completions(["eval", "m", "--tasks"], "perplexity,mc") == [f"perplexity,{n}" for n in names]
    assert set(completions(["eval", "m", "--tasks"], "")) == set(task_registry())

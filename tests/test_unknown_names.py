"""One "unknown X" message: the closest name suggested, the choices listed, bundled aliases for a model."""

from __future__ import annotations

import pytest

from prunelens.errors import PrunelensError, closest, unknown_message


def test_closest_name_is_suggested():
    msg = unknown_message("method", "wnada", ["magnitude", "wanda", "sparsegpt"])
    assert msg == "unknown method 'wnada'; did you mean wanda? available: magnitude, sparsegpt, wanda"


def test_nothing_close_gives_no_suggestion():
    assert unknown_message("method", "zzz", ["wanda"]) == "unknown method 'zzz'; available: wanda"
    assert unknown_message("task", "x", []) == "unknown task 'x'; available: none"
    assert closest("WANDA", ["wanda", "drop"]) == "wanda"  # case-insensitive, the choice's own spelling back
    assert closest("gpt2", ["smollm2-135m"]) is None


def test_unknown_method_suggests_through_the_registry():
    from prunelens.compression.methods import parse_method

    with pytest.raises(PrunelensError, match=r"unknown method 'sparsgpt'; did you mean sparsegpt\? available: .*wanda"):
        parse_method("sparsgpt:sparsity=0.5")


def test_misspelt_model_alias_lists_bundled_models():
    from prunelens.model.loading import resolve_spec

    with pytest.raises(PrunelensError, match=r"unknown model 'smollm2-135'; did you mean smollm2-135m\? "
                                             r"available: smollm2-135m"):
        resolve_spec("smollm2-135")
    with pytest.raises(PrunelensError, match=r"model path not found: /no/such/dir \(bundled models: smollm2-135m\)"):
        resolve_spec("/no/such/dir")
    assert resolve_spec("org/some-model") == ("org/some-model", {})  # a hub id is left to the hub


def test_other_lookups_use_the_same_message():
    from prunelens.plan.budgets import parse_budget_spec
    from prunelens.text.corpora import shakespeare_works

    with pytest.raises(PrunelensError, match=r"unknown split 'heldot'; did you mean heldout\?"):
        shakespeare_works("heldot")
    with pytest.raises(PrunelensError, match=r"unknown budget 'sparsty'; did you mean sparsity\?"):
        parse_budget_spec("sparsty=0.5")


def test_estimate_and_units_use_the_same_message():
    from prunelens.model.loading import read_config
    from prunelens.units import all_units

    with pytest.raises(PrunelensError, match=r"unknown unit kind 'mpl'; did you mean mlp\? available: attn, block, mlp"):
        all_units(2, ["attn", "mpl"])
    with pytest.raises(PrunelensError, match=r"unknown model 'smolm2-135m'; did you mean smollm2-135m\?"):
        read_config("smolm2-135m")

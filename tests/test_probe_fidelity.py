"""Fidelity to the paper: the sublayer locality, sampled decoding, probing on a base plan.

The sublayer check is an independent re-implementation of the paper's per-layer measurement
(CASE-Lab-UMD/Pruning-on-Representations, ``transition_layerwise_compare.py``): the residual is
the layer's input at the last position, the dense sublayer output is ``residual + attn_out``, the
dropped one is ``residual``, both read out by the LM head alone (``--readout raw``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from probe_helpers import ScaleOutput, single_thread

from prunelens.compression.methods import parse_method
from prunelens.errors import PrunelensError
from prunelens.model.adapters import get_adapter
from prunelens.model.loading import LoadedModel, config_hash
from prunelens.probe.engine import ProbeEngine, ProbeSettings
from prunelens.probe.prompts import Prompts
from prunelens.probe.run import run_probe
from prunelens.units import Unit, select_units
from prunelens_store import open_store

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
TEMPS = (0.7, 1.0)
STEPS = 4


def prompts(n=3, length=6, vocab=96, seed=0) -> Prompts:
    g = torch.Generator().manual_seed(seed)
    return Prompts(torch.randint(2, vocab, (n, length), generator=g).tolist())


def tiny_loaded(arch="llama", layers=3, seed=0) -> LoadedModel:
    model = make_tiny_model(arch, layers=layers, seed=seed)
    return LoadedModel(model, None, get_adapter(model), f"tiny-{arch}", config_hash(model.config))


@torch.no_grad()
def paper_attention_drop(model, seq: torch.Tensor, layer: int, positions: torch.Tensor, temps) -> dict[str, np.ndarray]:
    """The paper's per-layer measurement of dropping attention ``layer``, written from its description.

    One dense forward; hooks keep the layer input (the residual) and the attention output at
    ``positions``. Dense h = residual + attn_out, dropped h = residual; logits = lm_head(h); KL(p||q)
    at each T and 1 - cos of h, in float64.
    """
    dec = model.model.layers[layer]
    got = {}
    h1 = dec.register_forward_pre_hook(lambda m, a, k: got.__setitem__("x", (a[0] if a else k["hidden_states"])),
                                       with_kwargs=True)
    h2 = dec.self_attn.register_forward_hook(lambda m, a, o: got.__setitem__("attn", o[0] if isinstance(o, tuple) else o))
    try:
        model(input_ids=seq, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    x = got["x"][:, positions].double()
    h_full = x + got["attn"][:, positions].double()
    h_pruned = x
    w = model.lm_head.weight.double()
    z, z2 = h_full @ w.T, h_pruned @ w.T
    kl = []
    for t in temps:
        lp, lq = torch.log_softmax(z / t, -1), torch.log_softmax(z2 / t, -1)
        kl.append((lp.exp() * (lp - lq)).sum(-1))
    cos = 1 - torch.nn.functional.cosine_similarity(h_full, h_pruned, dim=-1)
    cos_z = 1 - torch.nn.functional.cosine_similarity(z, z2, dim=-1)
    return {"kl": torch.stack(kl).numpy(), "cos_h": cos.numpy(), "cos_z": cos_z.numpy()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sublayer_attention_drop_equals_the_papers_measurement_in_the_store(arch, tmp_path):
    loaded = tiny_loaded(arch)
    pr = prompts()
    settings = ProbeSettings(steps=STEPS, temperatures=TEMPS, localities=("local", "sublayer"), timings=("teacher_forced",),
                             readout="raw", batch_size=2, compile=False)
    units = select_units("attn", 3)
    run_probe(loaded, [parse_method("drop")], units, pr, settings, tmp_path / "s.zarr", progress=False)
    ds = open_store(tmp_path / "s.zarr")
    assert list(ds["locality"].values) == ["local", "sublayer"]
    tokens = ds["tokens"].values  # prompt + dense greedy continuation
    seq = torch.as_tensor(tokens[:, :-1])
    positions = torch.arange(len(pr.ids[0]) - 1, len(pr.ids[0]) - 1 + STEPS)
    for u in units:
        want = paper_attention_drop(loaded.model, seq, u.layer, positions, TEMPS)
        cell = ds.sel({"method": "drop", "unit": u.name, "locality": "sublayer", "timing": "teacher_forced"})
        assert want["kl"].min() > 1e-8  # a real perturbation (raw readout of a tiny random model: small)
        np.testing.assert_allclose(cell["kl"].values, want["kl"], rtol=1e-4, atol=0, err_msg=u.name)
        np.testing.assert_allclose(cell["cos_dev"].sel(space="embedding").isel(temperature=0).values, want["cos_h"],
                                   rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(cell["cos_dev"].sel(space="logit").isel(temperature=0).values, want["cos_z"],
                                   rtol=1e-4, atol=1e-9)
        local = ds["kl"].sel({"method": "drop", "unit": u.name, "locality": "local", "timing": "teacher_forced"}).values
        assert not np.allclose(local, cell["kl"].values, rtol=1e-3)  # local reads after the MLP: a different place
    assert "sublayer" in ds.attrs["sublayer_convention"]


def test_sublayer_of_mlp_and_block_is_the_layer_output_and_free_running_starts_equal():
    loaded = tiny_loaded("llama")
    pr = prompts(seed=3)
    settings = ProbeSettings(steps=STEPS, temperatures=TEMPS, localities=("local", "sublayer", "propagated"),
                             batch_size=2, compile=False)
    eng = ProbeEngine(loaded.adapter, pr, settings)
    eng.prepare()
    m = ScaleOutput(eps=0.3)
    for unit in (Unit(1, "mlp"), Unit(0, "block")):
        a = eng.measure(m, unit).arrays
        for k in ("kl", "cos_dev", "kl_pred"):
            np.testing.assert_array_equal(a[k][1], a[k][0], err_msg=f"{unit} {k}")
    a = eng.measure(m, Unit(1, "attn")).arrays
    # step 0 of free-running sees the same history as teacher-forced: same sublayer values
    np.testing.assert_allclose(a["kl"][1, 1, ..., 0], a["kl"][1, 0, ..., 0], rtol=1e-4, atol=1e-9)
    assert np.isfinite(a["kl"][1]).all() and not np.allclose(a["kl"][1], a["kl"][0])


def test_sublayer_is_refused_where_there_is_no_mid_stream():
    loaded = tiny_loaded("gpt_neox")  # parallel residual by default
    eng = ProbeEngine(loaded.adapter, prompts(n=1), ProbeSettings(steps=2, localities=("sublayer",), compile=False))
    eng.prepare()
    with pytest.raises(PrunelensError, match="parallel"):
        eng.measure(parse_method("drop"), Unit(1, "attn"))


def test_gemma_sublayer_reads_the_stream_after_the_post_attention_norm():
    loaded = tiny_loaded("gemma3_text")
    eng = ProbeEngine(loaded.adapter, prompts(n=2), ProbeSettings(steps=3, localities=("sublayer",), readout="raw",
                                                                  timings=("teacher_forced",), compile=False))
    eng.prepare()
    a = eng.measure(parse_method("drop"), Unit(1, "attn")).arrays
    # dropped attention: the stream after it is the layer input exactly
    batch = eng.batches[0]
    x = batch.rows(batch.calls[1].hidden).double()
    dense = eng._dense_h(0, 1, mid=True).double()
    want = (1 - torch.nn.functional.cosine_similarity(x, dense, dim=-1)).numpy().reshape(2, 3)
    np.testing.assert_allclose(a["cos_dev"][0, 0, 0, 0], want, rtol=1e-4, atol=1e-9)


# -- sampled decoding -----------------------------------------------------------------------

def _sample_settings(**kw) -> ProbeSettings:
    return ProbeSettings(steps=5, temperatures=(1.0,), decode="sample", decode_temperature=1.0, decode_seed=7,
                         batch_size=2, compile=False, **kw)


def test_sampled_decoding_same_seed_same_store_and_a_no_op_gives_zero_kl(tmp_path):
    loaded = tiny_loaded("llama")
    pr = prompts(n=2).repeated(2)
    assert pr.ids[0] == pr.ids[1] and len(pr) == 4
    units = select_units("L1.attn,L2.mlp", 3)
    methods = [parse_method("magnitude:sparsity=0"), parse_method("drop")]  # the first changes nothing
    for name in ("a", "b"):
        run_probe(loaded, methods, units, pr, _sample_settings(), tmp_path / f"{name}.zarr", progress=False)
    a, b = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "b.zarr")
    for v in ("kl", "cos_dev", "kl_pred", "top1_agree", "free_tokens", "tokens"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    assert json.loads(a.attrs["decode"])["mode"] == "sample"
    # the same prompt twice samples two different continuations (own noise per sample)
    toks = a["tokens"].values
    assert not np.array_equal(toks[0], toks[1])
    # a method that changes nothing: the perturbed model samples the same tokens, KL exactly 0 at every step
    zero = a.sel({"method": methods[0].spec})
    assert (zero["kl"].values == 0).all()
    np.testing.assert_array_equal(zero["free_tokens"].values[0], a["dense_free_tokens"].values)
    # another seed: other continuations
    other = ProbeSettings(steps=5, temperatures=(1.0,), decode="sample", decode_seed=8, batch_size=2, compile=False)
    run_probe(loaded, methods[:1], units, pr, other, tmp_path / "c.zarr", progress=False)
    assert not np.array_equal(open_store(tmp_path / "c.zarr")["tokens"].values, toks)


def test_sampling_follows_softmax_at_T():
    """Gumbel-max with the shared noise samples from softmax(z / T) (frequency check on a fixed row)."""
    from prunelens.probe.freerun import Sampler

    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    s = Sampler(temperature=0.7, seed=1)
    gens = s.generators(0, 1)
    counts = np.bincount([int(s.pick(z, gens)) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, torch.softmax(z[0] / 0.7, -1).numpy(), atol=0.025)


def test_sample_settings_are_checked():
    with pytest.raises(PrunelensError, match="decode"):
        ProbeSettings(decode="beam")
    with pytest.raises(PrunelensError, match="sampling temperature"):
        ProbeSettings(decode="sample", decode_temperature=0.0)


# -- checkpoint:path=DIR (pruned mode) ------------------------------------------------------

def _compressed_copy(tmp_path, spec: str, calib_ids=None, arch="llama"):
    from prunelens.compression.sequential import compress_model

    work = tiny_loaded(arch)
    compress_model(work, parse_method(spec), None, calib_ids=calib_ids, progress=False)
    out = tmp_path / spec.replace(":", "_").replace("=", "")
    work.model.save_pretrained(out)
    return out


def _cells(eng, method, units, stats=None):
    return {u.name: eng.measure(method, u, stats).arrays for u in units}


def test_checkpoint_method_equals_the_method_probed_directly(tmp_path):
    from prunelens.compression.calibration import collect_stats

    loaded = tiny_loaded("llama")
    units = select_units("attn,mlp", 3)
    eng = ProbeEngine(loaded.adapter, prompts(seed=4), ProbeSettings(steps=STEPS, temperatures=TEMPS, batch_size=2,
                                                                     compile=False))
    eng.prepare()
    # magnitude needs no calibration: compressing the whole model = each unit alone, every cell equal
    ckpt = _compressed_copy(tmp_path, "magnitude:sparsity=0.5")
    got = _cells(eng, parse_method(f"checkpoint:path={ckpt}"), units)
    want = _cells(eng, parse_method("magnitude:sparsity=0.5"), units)
    for u in units:
        assert np.nanmax(want[u.name]["kl"]) > 1e-7
        for k in ("kl", "kl_pred", "cos_dev", "top1_agree"):
            np.testing.assert_allclose(got[u.name][k], want[u.name][k], rtol=1e-4, atol=1e-9, err_msg=f"{u} {k}")
    # wanda is calibrated sequentially by compress (layer i sees the compressed layers < i): layer 0 equal, later differ
    ids = torch.randint(2, 96, (4, 16), generator=torch.Generator().manual_seed(5))
    ckpt = _compressed_copy(tmp_path, "wanda:sparsity=0.5", calib_ids=ids)
    stats = collect_stats(loaded, units, "input_norms", ids)
    got = _cells(eng, parse_method(f"checkpoint:path={ckpt}"), units)
    want = _cells(eng, parse_method("wanda:sparsity=0.5"), units, stats)
    for u in units:
        if u.layer == 0:
            np.testing.assert_allclose(got[u.name]["kl"], want[u.name]["kl"], rtol=1e-4, atol=1e-9, err_msg=str(u))
    assert not np.allclose(got["L2.mlp"]["kl"], want["L2.mlp"]["kl"], rtol=1e-4)
    # the model is dense again after every cell
    again = _cells(eng, parse_method("magnitude:sparsity=0.5"), units[:1])
    np.testing.assert_array_equal(again[units[0].name]["kl"], _cells(eng, parse_method("magnitude:sparsity=0.5"), units[:1])[units[0].name]["kl"])


def test_checkpoint_of_another_architecture_or_shape_is_refused_with_one_line(tmp_path):
    loaded = tiny_loaded("llama")
    other = make_tiny_model("llama", layers=2)
    other.save_pretrained(tmp_path / "two_layers")
    eng = ProbeEngine(loaded.adapter, prompts(n=1), ProbeSettings(steps=2, timings=("teacher_forced",), compile=False))
    eng.prepare()
    with pytest.raises(PrunelensError, match="another architecture.*num_hidden_layers 2 vs 3"):
        eng.measure(parse_method(f"checkpoint:path={tmp_path / 'two_layers'}"), Unit(0, "attn"))
    # same config, one tensor of another shape (a hand-edited or packed checkpoint)
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "same"
    make_tiny_model("llama", layers=3, seed=1).save_pretrained(ckpt)
    f = next(ckpt.glob("*.safetensors"))
    t = load_file(str(f))
    t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:5]
    save_file(t, str(f), metadata={"format": "pt"})
    with pytest.raises(PrunelensError, match=r"up_proj.weight has shape \(5, 32\)"):
        eng.measure(parse_method(f"checkpoint:path={ckpt}"), Unit(1, "mlp"))
    with pytest.raises(PrunelensError, match="not a directory"):
        eng.measure(parse_method(f"checkpoint:path={tmp_path / 'nowhere'}"), Unit(1, "mlp"))


# -- --base PLAN ------------------------------------------------------------------------------

def test_base_plan_probes_every_unit_on_top_of_the_applied_plan(tmp_path):
    from prunelens.plan.apply import apply_base, perturbed
    from prunelens.plan.document import Plan, PlanUnit

    ref = tiny_loaded("llama")
    plan = Plan(model_id="tiny", config_hash=ref.config_hash, method="drop", units=[PlanUnit("L1.attn")],
                temperature=1.0, budget=1, strategy="kl_pred")
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    pr = prompts(seed=6)
    settings = ProbeSettings(steps=STEPS, temperatures=TEMPS, batch_size=2, compile=False)
    m, unit = ScaleOutput(eps=0.3), Unit(2, "mlp")
    with perturbed(parse_method("drop"), ref.adapter, [Unit(1, "attn")]):  # the plan held open, reversibly
        eng = ProbeEngine(ref.adapter, pr, settings)
        eng.prepare()
        want, want_tokens = eng.measure(m, unit).arrays, eng.dense_continuation()
    base = tiny_loaded("llama")
    record = apply_base(base, tmp_path / "plan.json")
    assert record["units"] == ["L1.attn:drop"]
    eng = ProbeEngine(base.adapter, pr, settings)
    eng.prepare()
    np.testing.assert_array_equal(eng.dense_continuation(), want_tokens)
    got = eng.measure(m, unit).arrays
    for k in ("kl", "cos_dev", "kl_pred"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-9, err_msg=k)
    # the store records the base and never mixes with a store of the plain model
    run_probe(base, [parse_method("drop")], [unit], pr, settings, tmp_path / "b.zarr", progress=False, base=record)
    assert json.loads(open_store(tmp_path / "b.zarr").attrs["base_plan"])["units"] == ["L1.attn:drop"]
    with pytest.raises(PrunelensError):
        run_probe(base, [parse_method("drop")], [unit], pr, settings, tmp_path / "b.zarr", progress=False)


@pytest.mark.parametrize("args, match", [
    (["--samples-per-prompt", "2"], "needs --decode sample"),
    (["--decode", "sample", "--decode-temperature", "0"], "sampling temperature"),
    (["--locality", "local,nearby"], "locality must be"),
    (["--base", "/nonexistent/plan.json"], "does not exist"),  # click's usage error: its last line says it
])
def test_probe_cli_bad_fidelity_options_are_one_line(tmp_path, args, match):
    from click.testing import CliRunner

    from prunelens.cli import main

    out = tmp_path / "s.zarr"
    res = CliRunner().invoke(main, ["probe", "--model", str(tmp_path / "no-model"), "--method", "drop", "--out", str(out),
                                    *args])
    text = res.output.strip()
    if "--base" not in args:
        assert len(text.splitlines()) == 1, text
    assert res.exit_code != 0 and text.splitlines()[-1].startswith("Error:"), text
    assert match in text.splitlines()[-1], text
    assert not out.exists()

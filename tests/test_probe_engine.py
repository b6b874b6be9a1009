"""The probe engine against an independent naive probe (full model re-run, float64 formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from probe_helpers import NaiveProbe, ScaleOutput, ZeroOutput, naive_metrics, single_thread

from prunelens.model.adapters import get_adapter
from prunelens.probe.distributed import Ranks
from prunelens.probe.engine import ProbeEngine, ProbeSettings
from prunelens.probe.prompts import Prompts
from prunelens.units import Unit

TEMPS = (0.7, 1.0)
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
STEPS = 5


def prompts(n=3, length=6, vocab=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Prompts(torch.randint(2, vocab, (n, length), generator=g).tolist())


@torch.no_grad()
def expected_cells(adapter, method, unit, pr: Prompts, steps, temps):
    """{(locality, timing): {metric: array [.., sample, step]}} from the naive probe."""
    naive = NaiveProbe(adapter)
    prompt = torch.tensor(pr.ids)
    i = unit.layer
    d_tok, d_loc, d_fin = naive.greedy(prompt, steps, i)
    seq = torch.cat([prompt, d_tok[:, :-1]], 1)
    hs_d, logits_d = naive.hidden(seq)
    with method.perturb(adapter, unit, None):
        hs_p, logits_p = naive.hidden(seq)
        p_tok, p_loc, p_fin = naive.greedy(prompt, steps, i)
    pos = prompt.shape[1] - 1 + torch.arange(steps)
    pairs = {
        ("local", "teacher_forced"): (hs_d[i][:, pos], hs_p[i][:, pos], None, None),
        ("propagated", "teacher_forced"): (hs_d[-1][:, pos], hs_p[-1][:, pos], logits_d[:, pos], logits_p[:, pos]),
        ("local", "free_running"): (d_loc, p_loc, None, None),
        ("propagated", "free_running"): (d_fin, p_fin, None, None),
    }
    out = {}
    for key, (h, h2, z, z2) in pairs.items():
        z = naive.logits(h) if z is None else z
        z2 = naive.logits(h2) if z2 is None else z2
        rows = [[naive_metrics(h[b, s], h2[b, s], z[b, s], z2[b, s], temps) for s in range(steps)] for b in range(len(pr))]
        out[key] = {k: np.asarray([[r[k] for r in row] for row in rows]) for k in rows[0][0]}
    return out, d_tok, p_tok


def check_against_naive(adapter, method, unit, pr, rtol=1e-4, steps=STEPS):
    settings = ProbeSettings(steps=steps, temperatures=TEMPS, batch_size=2, compile=False)  # 2 batches: 2 + 1 samples
    eng = ProbeEngine(adapter, pr, settings)
    eng.prepare()
    cell = eng.measure(method, unit)
    exp, d_tok, p_tok = expected_cells(adapter, method, unit, pr, steps, TEMPS)
    np.testing.assert_array_equal(eng.dense_continuation(), d_tok.numpy())
    np.testing.assert_array_equal(cell.free_tokens, p_tok.numpy())
    a = cell.arrays
    for li, loc in enumerate(settings.localities):
        for ti, tim in enumerate(settings.timings):
            e = exp[(loc, tim)]
            for space, (c, p, r) in enumerate((("cos_h", "pred_h", "rel_h"), ("cos_z", "pred_z", "rel_z"), ("cos_p", "pred_p", "rel_p"))):
                for name, key in (("cos_dev", c), ("cos_dev_pred", p), ("rel_norm", r)):
                    want = e[key] if space == 2 else np.repeat(e[key][None], len(TEMPS), 0)
                    if space == 2:
                        want = np.moveaxis(want, -1, 0)
                    got = a[name][li, ti, space]
                    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-9, err_msg=f"{loc}/{tim}/{name}/space{space}")
            np.testing.assert_allclose(a["kl"][li, ti], np.moveaxis(e["kl"], -1, 0), rtol=rtol, atol=1e-9, err_msg=f"{loc}/{tim}/kl")
            np.testing.assert_allclose(a["kl_pred"][li, ti], np.moveaxis(e["kl_pred"], -1, 0), rtol=rtol, atol=1e-9)
            np.testing.assert_array_equal(a["top1_agree"][li, ti], e["top1"])
    assert cell.nonfinite == 0
    return cell


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "gpt_neox"])
def test_engine_matches_naive_zeroed_attention(arch):
    model = make_tiny_model(arch, layers=3)
    adapter = get_adapter(model)
    cell = check_against_naive(adapter, ZeroOutput(), Unit(1, "attn"), prompts())
    assert np.nanmax(cell.arrays["kl"]) > 1e-6  # a real perturbation, not a no-op


@pytest.mark.parametrize("unit", [Unit(0, "block"), Unit(2, "mlp")])
def test_engine_matches_naive_magnitude(unit):
    from prunelens.compression.methods import parse_method

    model = make_tiny_model("llama", layers=3)
    check_against_naive(get_adapter(model), parse_method("magnitude:sparsity=0.6"), unit, prompts(seed=1))


def test_engine_matches_naive_drop_block():
    from prunelens.compression.methods import parse_method

    model = make_tiny_model("qwen2", layers=3)
    check_against_naive(get_adapter(model), parse_method("drop"), Unit(1, "block"), prompts(seed=2))


def test_left_padded_prompts_match_unpadded_runs():
    """A short prompt left-padded in a batch gives the same numbers as that prompt alone."""
    model = make_tiny_model("llama", layers=3)
    adapter = get_adapter(model)
    pr = Prompts([[5, 6, 7, 8, 9, 10], [11, 12, 13]])
    settings = ProbeSettings(steps=4, temperatures=(1.0,))
    both = ProbeEngine(adapter, pr, settings)
    both.prepare()
    alone = ProbeEngine(adapter, Prompts([[11, 12, 13]]), settings)
    alone.prepare()
    a = both.measure(ZeroOutput(), Unit(1, "mlp"))
    b = alone.measure(ZeroOutput(), Unit(1, "mlp"))
    np.testing.assert_array_equal(a.free_tokens[1], b.free_tokens[0])
    for k in ("cos_dev", "kl", "kl_pred", "rel_norm"):
        np.testing.assert_allclose(a.arrays[k][..., 1, :], b.arrays[k][..., 0, :], rtol=2e-4, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("locality", ["local", "propagated"])
def test_engine_taylor_limit(locality):
    """For a unit output scaled by (1+ε), predicted/measured -> 1 as ε -> 0 (float64 model)."""
    model = make_tiny_model("llama", layers=3).double()
    adapter = get_adapter(model)
    pr = prompts(n=2)
    settings = ProbeSettings(steps=3, temperatures=(1.0,), localities=(locality,), timings=("teacher_forced",))
    eng = ProbeEngine(adapter, pr, settings)
    eng.prepare()
    errs = []
    for eps in (1e-1, 1e-2, 1e-3):
        a = eng.measure(ScaleOutput(eps=eps), Unit(1, "attn")).arrays
        r_h = a["cos_dev_pred"][0, 0, 0] / a["cos_dev"][0, 0, 0]
        r_p = a["cos_dev_pred"][0, 0, 2] / a["cos_dev"][0, 0, 2]
        r_kl = a["kl_pred"][0, 0] / a["kl"][0, 0]
        errs.append(max(np.abs(r - 1).max() for r in (r_h, r_p, r_kl)))
    assert errs[-1] < 1e-2, errs
    assert errs[0] > errs[1] > errs[2], errs


@pytest.mark.real_model
def test_engine_matches_naive_on_smollm2(smollm2):
    """The real model (30 layers, vocab 49152): one attention drop, both localities and timings."""
    from prunelens.compression.methods import parse_method

    pr = Prompts([smollm2.tokenizer("To be, or not to be, that is the question:")["input_ids"][-7:],
                  smollm2.tokenizer("Now is the winter of our discontent")["input_ids"][-7:]])
    check_against_naive(smollm2.adapter, parse_method("drop"), Unit(5, "attn"), pr, rtol=1e-3, steps=3)


def test_bfloat16_model_is_read_out_in_float32():
    """A bf16 model: metrics come out float and close to the float32 model's (bf16 rounding, ~1e-2)."""
    pr = prompts(n=2)
    settings = ProbeSettings(steps=3, temperatures=(1.0,), timings=("teacher_forced",))
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = make_tiny_model("llama", layers=3).to(dtype)
        eng = ProbeEngine(get_adapter(model), pr, settings)
        eng.prepare()
        out[dtype] = eng.measure(ZeroOutput(), Unit(1, "mlp")).arrays
    assert eng.readout(eng.batches[0].final[:, :1]).dtype == torch.float32
    for k in ("kl", "cos_dev"):
        assert np.isfinite(out[torch.bfloat16][k]).all()
        np.testing.assert_allclose(out[torch.bfloat16][k], out[torch.float32][k], rtol=0.15, atol=1e-6, err_msg=k)


def test_uncached_inner_layer_logits_give_the_same_cells(monkeypatch):
    """A long probe recomputes inner-layer dense logits instead of caching them: same numbers either way."""
    import prunelens.probe.engine as engine_mod

    model = make_tiny_model("llama", layers=3)
    adapter = get_adapter(model)
    settings = ProbeSettings(steps=4, temperatures=(0.7, 1.0), localities=("local", "propagated"),
                             timings=("teacher_forced", "free_running"))
    cells = {}
    for budget in (1 << 40, 0):
        monkeypatch.setattr(engine_mod, "INNER_CACHE_BYTES", budget)
        eng = ProbeEngine(adapter, prompts(seed=5), settings)
        eng.prepare()
        cells[budget] = [eng.measure(ZeroOutput(), u) for u in (Unit(0, "attn"), Unit(0, "mlp"), Unit(1, "mlp"))]
        cached_inner = [k for k in eng._dense_z if k[1] != adapter.num_layers - 1]
        assert bool(cached_inner) == (budget > 0)
    for a, b in zip(cells[1 << 40], cells[0]):
        for k in a.arrays:
            np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)


class _TwoRanks(Ranks):
    """Rank ``rank`` of two, in one process: the other rank's share of the exchange is given."""

    def __init__(self, rank: int, other_share: dict):
        super().__init__(rank=rank, world=2)
        self.other_share = other_share
        self.sent: dict | None = None

    def all_gather_object(self, obj):
        self.sent = obj
        return [obj, self.other_share] if self.rank == 0 else [self.other_share, obj]


def test_sharded_continuation_equals_one_process_and_a_failed_rank_stops_every_rank(tiny_llama, monkeypatch):
    """Two ranks each decode their round-robin share of the batches and exchange them: the same batches
    (tokens, cached pass, free-running reference) as one process; a rank whose share failed makes the
    other raise a clear error instead of waiting or running on."""
    import prunelens.probe.engine as E
    from prunelens.errors import PrunelensError
    from prunelens.model.adapters import get_adapter

    ad = get_adapter(tiny_llama)
    prompts = Prompts(torch.randint(2, 90, (5, 6), generator=torch.Generator().manual_seed(1)).tolist())
    settings = ProbeSettings(steps=4, temperatures=(1.0,), batch_size=2)  # 3 batches; both timings
    decoded, calls = {}, []
    real = E.greedy_decode

    def recording(*a, **k):
        out = real(*a, **k)
        decoded[k["offset"] // 2] = out
        calls.append(k["offset"])
        return out

    monkeypatch.setattr(E, "greedy_decode", recording)
    one = ProbeEngine(ad, prompts, settings)
    one.prepare()
    assert len(decoded) == 3 and len(calls) == 3
    calls.clear()
    rank0 = ProbeEngine(ad, prompts, settings)
    rank0.prepare(ranks=_TwoRanks(0, {1: decoded[1]}))
    assert calls == [0, 4]  # batches 0 and 2 only: rank 1 decoded batch 1
    assert len(rank0.batches) == len(one.batches) == 3
    for a, b in zip(one.batches, rank0.batches):
        assert torch.equal(a.continuation, b.continuation) and torch.equal(a.final, b.final)
        assert a.free.keys() == b.free.keys() and all(torch.equal(a.free[k], b.free[k]) for k in a.free)
    with pytest.raises(PrunelensError, match="rank 1 failed during the dense continuation: RuntimeError: out of memory"):
        ProbeEngine(ad, prompts, settings).prepare(ranks=_TwoRanks(0, {"error": "RuntimeError: out of memory"}))

    def broken(*a, **k):
        raise RuntimeError("no memory here")

    monkeypatch.setattr(E, "greedy_decode", broken)
    failing = _TwoRanks(1, {0: decoded[0], 2: decoded[2]})
    with pytest.raises(RuntimeError, match="no memory here"):  # its own error, after telling the others
        ProbeEngine(ad, prompts, settings).prepare(ranks=failing)
    assert failing.sent == {"error": "RuntimeError: no memory here"}


def test_cells_are_sharded_by_whole_layers_every_cell_once():
    """Each rank gets whole layers (all units and methods of a layer: one dense readout per layer), round-robin,
    and the ranks together get every cell exactly once."""
    layers = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # attn, mlp per layer
    cells = [(m, u) for u in range(len(layers)) for m in range(2)]
    shares = [Ranks(rank=r, world=3).shard_by(cells, lambda c: layers[c[1]]) for r in range(3)]
    assert sorted(c for s in shares for c in s) == sorted(cells)
    assert [sorted({layers[u] for _, u in s}) for s in shares] == [[0, 3], [1, 4], [2]]
    assert Ranks().shard_by(cells, lambda c: layers[c[1]]) == cells

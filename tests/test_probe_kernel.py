"""The vocabulary-pass kernel: eager and compiled against a float64 truth at every magnitude,
the paper's extra quantities against naive float64 formulas, the auto compile decision, and
version-1 stores still readable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelens.probe import vocab_pass as K
from prunelens.probe.metrics import row_metrics

TEMPS = [0.7, 1.0]
ROWS, VOCAB = 16, 96  # the tiny models' vocabulary: the compiled probe test below reuses this kernel shape


def sweep_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """float32 logits and perturbed logits, one perturbation scale ε per row from 1e-8 to 10."""
    g = torch.Generator().manual_seed(seed)
    eps = np.logspace(-8, 1, ROWS)
    z = 3 * torch.randn(ROWS, VOCAB, generator=g)
    dz = torch.randn(ROWS, VOCAB, generator=g) * torch.tensor(eps, dtype=torch.float32).unsqueeze(-1)
    return z, z + dz, eps


def truth_kl(z: torch.Tensor, z2: torch.Tensor, t: float) -> tuple[np.ndarray, np.ndarray]:
    """(KL(p‖q), Var_p(Δz)/2T²) in float64 from the float32 inputs, by the centred form
    ``log1p(E_p[expm1(b)]) - E_p[b]`` with float64's accurate expm1 (independent of the kernel)."""
    z, dz = z.double(), z2.double() - z.double()
    p = torch.softmax(z / t, -1)
    b = (dz - (p * dz).sum(-1, keepdim=True)) / t
    kl = torch.log1p((p * torch.expm1(b)).sum(-1)) - (p * b).sum(-1)
    direct = (p * (torch.log_softmax(z / t, -1) - torch.log_softmax((z + dz) / t, -1))).sum(-1)
    kl = torch.where(b.abs().amax(-1) > 1, direct, kl)  # large b: the plain formula is exact enough
    var = (p * b * b).sum(-1) - (p * b).sum(-1) ** 2
    return kl.numpy(), (var / 2).numpy()


def check_sweep(kernel: K.SumsKernel) -> None:
    z, z2, _ = sweep_rows()
    h = torch.randn(ROWS, 8, dtype=torch.float64)
    m = row_metrics(h, 0.1 * h, z, z2, TEMPS, kernel=kernel)
    for k, t in enumerate(TEMPS):
        kl, pred = truth_kl(z, z2, t)
        got = m.kl[k].numpy()
        assert (got >= 0).all(), got
        big = kl > 1e-12
        np.testing.assert_allclose(got[big], kl[big], rtol=1e-4)
        np.testing.assert_allclose(got[~big], kl[~big], rtol=0, atol=1e-12)
        bigp = pred > 1e-12
        np.testing.assert_allclose(m.kl_pred[k].numpy()[bigp], pred[bigp], rtol=1e-4)
        assert big.sum() >= 8 and (~big).sum() >= 3  # both regimes are exercised


def test_eps_sweep_eager_matches_float64_truth():
    check_sweep(K.SumsKernel("eager"))


@pytest.fixture(scope="module")
def kernel_home(tmp_path_factory):
    """One PRUNELENS_HOME for this module's compiled kernels: built once, reused by the tests after."""
    return tmp_path_factory.mktemp("prunelens-home")


@pytest.fixture(params=["native", "aoti"])
def kernel_backend(request, monkeypatch):
    """Each compiled kernel: the C function (a CPU's default) and AOTInductor (a GPU's, forced here)."""
    from prunelens.probe import vocab_pass_c

    if request.param == "native" and vocab_pass_c.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("PRUNELENS_KERNEL_BACKEND", request.param)
    return request.param


def test_eps_sweep_compiled_matches_float64_truth(kernel_home, kernel_backend, monkeypatch):
    """CI's compiled-mode test: one build of each kernel (AOTInductor: ~tens of seconds on a small CPU), kept."""
    monkeypatch.setenv("PRUNELENS_HOME", str(kernel_home))
    assert K.backend(torch.device("cpu"), torch.float32) == kernel_backend
    kernel = K.SumsKernel("compiled")
    check_sweep(kernel)
    assert kernel.using_compiled
    z, z2, _ = sweep_rows()  # the raw sums, not only the metrics (which recompute bad rows directly)
    dense = K.DenseRows.of(z, TEMPS)
    assert_same_sums(kernel(dense, z2), K.SumsKernel("eager")(dense, z2))


def assert_same_sums(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Compiled sums = eager sums: finite, relative 1e-3 (signed sums of 10-sized b differ by 2e-4), and the
    residual Σeb within float32 rounding of Σe|b| ≤ sqrt(s Σeb²)."""
    (per, once), (per_e, once_e) = got, want
    assert torch.isfinite(per).all() and torch.isfinite(once).all()
    eb, s, ebb = (K.PER_T.index(n) for n in ("eb", "s", "ebb"))
    rest = [k for k in range(len(K.PER_T)) if k != eb]
    torch.testing.assert_close(per[rest], per_e[rest], rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(once, once_e, rtol=1e-4, atol=1e-9)
    assert ((per[eb] - per_e[eb]).abs() <= 1e-5 * (per_e[s] * per_e[ebb]).sqrt() + 1e-9).all()


def test_a_later_process_loads_the_kept_kernel_without_building(kernel_home, kernel_backend, monkeypatch):
    """A fresh process in auto mode finds the kept kernel: compiled from its first call, nothing built, same sums."""
    import subprocess
    import sys

    monkeypatch.setenv("PRUNELENS_HOME", str(kernel_home))
    z, z2, _ = sweep_rows()
    dense = K.DenseRows.of(z, TEMPS)
    K.compiled_kernel(K._example_args(dense))  # kept by the test above, or built here when run alone
    code = (
        "import json, sys, torch\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "sys.path[:0] = " + repr(sys.path) + "\n"
        "from prunelens.probe import vocab_pass as K\n"
        "K.AUTO_MIN_VOCAB = 0\n"  # this toy vocabulary may use the kept kernel
        "import test_probe_kernel as T\n"
        "z, z2, _ = T.sweep_rows()\n"
        "k = K.SumsKernel('auto')\n"
        "per, once = k(K.DenseRows.of(z, T.TEMPS), z2)\n"
        "print(json.dumps({'compiled': k.using_compiled, 'build_s': k.timing['build_s'], 'loaded': k.timing['loaded'],\n"
        "                  'per': per.tolist(), 'once': once.tolist()}))\n"
    )
    env = {**__import__("os").environ, "PRUNELENS_HOME": str(kernel_home), "PYTHONPATH": str(Path(__file__).parent),
           "PRUNELENS_KERNEL_BACKEND": kernel_backend}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["compiled"] and res["loaded"] is True and res["build_s"] == 0.0
    got = (torch.tensor(res["per"], dtype=z.dtype), torch.tensor(res["once"], dtype=z.dtype))
    assert_same_sums(got, K.SumsKernel("eager")(dense, z2))


def test_series_is_accurate_where_expm1_minus_b_is_not():
    b = torch.tensor([1e-8, -1e-7, 1e-6, -1e-4, 1e-2, 0.3, -0.49, 0.51, -3.0, 20.0], dtype=torch.float32)
    truth = torch.expm1(b.double()) - b.double()
    got = K.hb_of(b).double()
    np.testing.assert_allclose(got.numpy(), truth.numpy(), rtol=1e-6)
    assert (got >= 0).all()


def naive_extra(h, h2, z, z2, temps):
    """The paper's extra quantities, textbook float64, one row at a time."""
    out = {k: [] for k in ("par", "perp", "uvar", "top5", "top10", "l1", "l2")}
    for r in range(len(h)):
        par, perp = [], []
        for a, b in ((h[r], h2[r]), (z[r], z2[r])):
            d = b - a
            u = a / np.linalg.norm(a)
            dpar = (d @ u) * u
            par.append([np.linalg.norm(dpar) / np.linalg.norm(a)] * len(temps))
            perp.append([np.linalg.norm(d - dpar) / np.linalg.norm(a)] * len(temps))
        dz = z2[r] - z[r]
        pp, pq, uv, t5, t10 = [], [], [], [], []
        for t in temps:
            p = np.exp(z[r] / t - np.max(z[r] / t)); p /= p.sum()
            q = np.exp(z2[r] / t - np.max(z2[r] / t)); q /= q.sum()
            d = q - p
            u = p / np.linalg.norm(p)
            dpar = (d @ u) * u
            pp.append(np.linalg.norm(dpar) / np.linalg.norm(p))
            pq.append(np.linalg.norm(d - dpar) / np.linalg.norm(p))
            uv.append(np.var(dz) / (2 * t * t))
            for k, dst in ((5, t5), (10, t10)):
                idx = np.argsort(-p)[:k]
                w = p[idx] / p[idx].sum()
                dst.append(w @ (dz[idx] - w @ dz[idx]) ** 2 / (2 * t * t))
        par.append(pp); perp.append(pq)
        out["par"].append(par); out["perp"].append(perp)
        out["uvar"].append(uv); out["top5"].append(t5); out["top10"].append(t10)
        out["l1"].append(np.mean(np.abs(dz))); out["l2"].append(np.sqrt(np.mean(dz**2)))
    res = {k: np.asarray(v) for k, v in out.items()}
    res["par"], res["perp"] = res["par"].transpose(1, 2, 0), res["perp"].transpose(1, 2, 0)
    for k in ("uvar", "top5", "top10"):
        res[k] = res[k].T
    return res


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [0.3, 5.0])
def test_paper_quantities_match_naive_float64(dtype, scale):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(9, 24, generator=g, dtype=torch.float64)
    dh = scale * torch.randn(9, 24, generator=g, dtype=torch.float64)
    w = torch.randn(60, 24, generator=g, dtype=torch.float64)
    z, z2 = h @ w.T, (h + dh) @ w.T
    m = row_metrics(h.to(dtype), dh.to(dtype), z.to(dtype), z2.to(dtype), [0.5, 1.0, 2.0])
    hh, zz, zz2 = (x.to(dtype).double().numpy() for x in (h, z, z2))
    ref = naive_extra(hh, hh + dh.to(dtype).double().numpy(), zz, zz2, [0.5, 1.0, 2.0])
    rtol, atol = (1e-9, 1e-14) if dtype == torch.float64 else (3e-4, 1e-9)
    np.testing.assert_allclose(m.rel_par.numpy(), ref["par"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.rel_perp.numpy(), ref["perp"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.dz_var_uniform.numpy(), ref["uvar"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.dz_var_top5.numpy(), ref["top5"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.dz_var_top10.numpy(), ref["top10"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.dz_l1.numpy(), ref["l1"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(m.dz_l2.numpy(), ref["l2"], rtol=rtol, atol=atol)
    # ‖Δ∥‖² + ‖Δ⊥‖² = ‖Δ‖² in every space
    np.testing.assert_allclose(m.rel_par.numpy() ** 2 + m.rel_perp.numpy() ** 2, m.rel_norm.numpy() ** 2, rtol=max(rtol, 1e-6))


def test_shared_dense_rows_and_fused_temperatures_equal_separate_calls():
    """One pass for three temperatures with shared dense statistics = three one-temperature calls."""
    z, z2, _ = sweep_rows(seed=1)
    h = torch.randn(ROWS, 8, dtype=torch.float64)
    temps = [0.5, 0.7, 1.0]
    dense = K.DenseRows.of(z, temps)
    fused = row_metrics(h, 0.1 * h, z, z2, temps, dense=dense, kernel=K.SumsKernel("eager"))
    for k, t in enumerate(temps):
        one = row_metrics(h, 0.1 * h, z, z2, [t], kernel=K.SumsKernel("eager"))
        for name in ("kl", "kl_pred", "dz_var_top5"):
            np.testing.assert_allclose(getattr(fused, name)[k].numpy(), getattr(one, name)[0].numpy(), rtol=1e-6, atol=1e-14)
        np.testing.assert_allclose(fused.cos_dev[:, k].numpy(), one.cos_dev[:, 0].numpy(), rtol=1e-6, atol=1e-14)


def test_chunks_stay_cache_sized():
    spans = K._chunks(1000, 49152, 4)
    assert all((hi - lo) * 49152 * 4 <= K.CACHE_BYTES for lo, hi in spans)
    assert spans[0][0] == 0 and spans[-1][1] == 1000


def test_auto_compiles_only_when_the_measured_eager_cost_pays(monkeypatch, tmp_path):
    """A short run stays eager; a long one builds; the decision uses this machine's recorded build time;
    a kept kernel is used from the first call of a later run."""
    monkeypatch.setenv("PRUNELENS_KERNEL_BACKEND", "aoti")  # the kept-file check of the AOTInductor kernel
    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path))
    monkeypatch.setattr(K, "AUTO_MIN_VOCAB", 0)  # this toy vocabulary may compile here
    builds = []

    def fake_kernel(args):
        path = K._args_path(args)
        if K.kernel_cache.trusted(path):
            return K.chunk_sums, 0.0
        builds.append(path)
        built = path.with_name("built")
        built.write_text("kept")
        K.kernel_cache.keep(built, path)  # kept with its digest, as a build keeps it
        return K.chunk_sums, 0.5

    monkeypatch.setattr(K, "compiled_kernel", fake_kernel)
    z, z2, _ = sweep_rows()
    dense = K.DenseRows.of(z, TEMPS)
    k = K.SumsKernel("auto")
    k(dense, z2)  # nothing announced: eager
    assert not k.using_compiled and k.timing["eager_elems"] == ROWS * VOCAB
    rate = k.timing["eager_s"] / k.timing["eager_elems"]
    k.expect(int(10 / rate), key="test/T2/x")  # ~10 s of eager work to come < default build seconds
    k(dense, z2)
    assert not k.using_compiled and not builds
    K._save_records({"test/T3/x": {"compile_seconds": 0.001, "speedup": 3.0}})  # another T count, same machine
    k(dense, z2)
    assert k.using_compiled and len(builds) == 1 and k.timing["build_s"] == 0.5
    rec = K._records()["test/T2/x"]  # the first compiled call records build seconds and speedup
    assert rec["compile_seconds"] == 0.5 and rec["speedup"] > 0
    later = K.SumsKernel("auto")
    later(dense, z2)  # a later run: the kept kernel, nothing measured or built
    assert later.using_compiled and later.timing["loaded"] is True and len(builds) == 1
    assert K._record_for("test/T5/x") == K._records()["test/T2/x"] and K._record_for("other/T2/x") == {}


def test_one_compiled_shape_per_vocabulary_smaller_inputs_padded(monkeypatch, tmp_path):
    """The compiled kernel always sees its one shape (fewer rows are padded, more are split); another
    vocabulary gets its own kernel; the sums equal the eager ones."""
    monkeypatch.setenv("PRUNELENS_KERNEL_BACKEND", "aoti")  # the padded one-shape kernel (a GPU's)
    monkeypatch.setattr(K, "CACHE_BYTES", 32 * VOCAB * 4)  # 32 rows per call at this vocabulary
    assert 3 * ROWS > K._kernel_rows(VOCAB, 4, torch.device("cpu")) == 32 > ROWS
    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path))
    prepared, seen = [], []

    def fake_kernel(args):
        prepared.append(tuple(args[0].shape))

        def run(*a):
            seen.append(tuple(a[0].shape))
            return K.chunk_sums(*a)

        return run, 0.5

    monkeypatch.setattr(K, "compiled_kernel", fake_kernel)
    z, z2, _ = sweep_rows()
    k = K.SumsKernel("compiled")
    for rows in (ROWS, 3, ROWS):  # a full batch, a short last batch, a full one again
        dense = K.DenseRows.of(z[:rows], TEMPS)
        assert_same_sums(k(dense, z2[:rows]), K.SumsKernel("eager")(dense, z2[:rows]))
    wide = torch.cat([z, z], 1)  # another vocabulary: its own kernel
    dense = K.DenseRows.of(wide, TEMPS)
    assert_same_sums(k(dense, torch.cat([z2, z2], 1)), K.SumsKernel("eager")(dense, torch.cat([z2, z2], 1)))
    rows = 32  # one shape per vocabulary on a CPU, whatever the input's rows
    assert prepared == [(rows, VOCAB), (rows // 2, 2 * VOCAB)]  # the same bytes per call
    assert set(seen) == {(rows, VOCAB), (rows // 2, 2 * VOCAB)}
    k(K.DenseRows.of(torch.cat([z, z, z]), TEMPS), torch.cat([z2, z2, z2]))  # more rows than one call: split
    assert seen[-2:] == [(rows, VOCAB), (rows, VOCAB)] and len(prepared) == 2


def test_a_kernel_that_cannot_be_built_falls_back_to_eager(monkeypatch, tmp_path):
    """No compiler (or any build failure): a warning, eager sums, the same numbers."""
    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path))

    def broken(args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(K, "compiled_kernel", broken)
    z, z2, _ = sweep_rows()
    dense = K.DenseRows.of(z, TEMPS)
    with pytest.warns(UserWarning, match="eager"):
        got = K.SumsKernel("compiled")(dense, z2)
    ref = K.SumsKernel("eager")(dense, z2)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])


def test_compiled_engine_probe_equals_eager(tiny_llama, kernel_home, monkeypatch):
    """A whole compiled-mode probe (tiny model, vocabulary 96) equals the eager one."""
    from prunelens.compression.methods import parse_method
    from prunelens.model.adapters import get_adapter
    from prunelens.probe.engine import ProbeEngine, ProbeSettings
    from prunelens.probe.prompts import Prompts
    from prunelens.units import select_units

    ad = get_adapter(tiny_llama)
    prompts = Prompts([[5, 6, 7, 8], [9, 10, 11, 12]], source="test")
    unit = select_units("L1.attn", ad.num_layers)[0]
    cells = []
    monkeypatch.setenv("PRUNELENS_HOME", str(kernel_home))  # the kernel the sweep test kept (same shape)
    for compile_ in (False, True):
        st = ProbeSettings(steps=8, temperatures=tuple(TEMPS), timings=("teacher_forced",), compile=compile_)
        eng = ProbeEngine(ad, prompts, st)
        eng.prepare()
        cells.append(eng.measure(parse_method("drop"), unit))
        assert eng.kernel.using_compiled == compile_
    for name, a in cells[0].arrays.items():
        np.testing.assert_allclose(cells[1].arrays[name], a, rtol=2e-4, atol=1e-9, err_msg=name)


def test_native_kernel_equals_eager_at_a_ragged_vocabulary_any_thread_count(kernel_home, monkeypatch):
    """The C kernel at a vocabulary that is not a multiple of its 8 lanes or 1024-element blocks, three
    temperatures, perturbations from 1e-6 to overflow: the eager sums where finite, the same inf/NaN where
    not (a NaN logit stays NaN, argmax picks the first NaN like torch), bitwise equal at 1 and 2 threads."""
    from prunelens.probe import vocab_pass_c

    monkeypatch.setenv("PRUNELENS_HOME", str(kernel_home))
    if vocab_pass_c.compiler() is None:
        pytest.skip("no C compiler")
    lib, _ = vocab_pass_c.load_library()
    g = torch.Generator().manual_seed(3)
    rows, vocab, temps = 9, 2 * 1024 + 13, [0.5, 1.0, 2.0]
    z = 4 * torch.randn(rows, vocab, generator=g)
    scale = torch.tensor([1e-6, 1e-3, 0.1, 1.0, 5.0, 0.01, 0.3, 200.0, 0.2]).unsqueeze(-1)
    z2 = z + scale * torch.randn(rows, vocab, generator=g)
    z2[5, vocab - 3] = float("nan")  # in the ragged tail
    z2[5, 7] = float("nan")
    dense = K.DenseRows.of(z, temps)
    args = (z, z2, dense.zmax, dense.zz, dense.inv_t)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = vocab_pass_c.native_sums(lib, *args)
        torch.set_num_threads(2)
        two = vocab_pass_c.native_sums(lib, *args)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    with K.denormals_flushed(z.device):
        want = K.chunk_sums_eager(*args)
    finite = [r for r in range(rows) if r not in (5, 7)]
    assert_same_sums((one[0][..., finite], one[1][:, finite]), (want[0][..., finite], want[1][:, finite]))
    assert torch.isnan(one[0][:, :, 5]).sum() >= torch.isnan(want[0][:, :, 5]).sum() > 0
    assert one[1][K.ONCE.index("argmax2"), 5] == want[1][K.ONCE.index("argmax2"), 5] == 7
    big = one[0][:, :, 7]  # b of a few hundred: exp(b) overflows in both, never a finite wrong number
    assert torch.equal(torch.isfinite(big), torch.isfinite(want[0][:, :, 7]))
    assert not torch.isfinite(big[K.PER_T.index("eh")]).any()


def test_version_1_store_still_reads(tmp_path):
    """A store written before schema 2 (without the paper's extra variables) opens; a v2 store missing one does not."""
    import json
    import shutil

    import zarr

    from prunelens.errors import PrunelensError
    from prunelens_store import open_store
    from prunelens_store.schema import ADDED_IN, VARIABLES
    from prunelens_store.writer import StoreWriter, build_template, create_store

    path = tmp_path / "v1.zarr"
    ds = build_template(["drop"], ["L0", "L1"], [0, 1], ["block", "block"], 2, 3, [1.0], ["local"], ["teacher_forced"],
                        tokens=np.arange(16).reshape(2, 8), prompt_len=np.array([5, 5]),
                        dense_free_tokens=np.ones((2, 3), dtype=np.int64), candidates=None, attrs={"model_id": "tiny"})
    create_store(path, ds, {"model_id": "tiny"})
    w = StoreWriter(path)
    rng = np.random.default_rng(0)
    for u in range(2):
        w.write_cell(0, u, {n: rng.random(w.group[n].shape[2:]).astype(np.float32) for n in VARIABLES
                            if n not in ("done", "free_tokens")}, np.zeros((2, 3)), 0)
    w.finalise()
    kl = open_store(path)["kl"].values.copy()
    v2 = tmp_path / "v2-damaged.zarr"
    shutil.copytree(path, v2)
    for name in ADDED_IN:  # make it what schema 1 wrote
        shutil.rmtree(path / name)
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    group.attrs["schema_version"] = 1
    zarr.consolidate_metadata(str(path), zarr_format=3)
    old = open_store(path)
    assert old.attrs["schema_version"] == 1 and "rel_par" not in old and "dz_l1" not in old
    np.testing.assert_array_equal(old["kl"].values, kl)
    shutil.rmtree(v2 / "rel_par")
    meta = json.loads((v2 / "zarr.json").read_text())
    meta.get("consolidated_metadata", {}).get("metadata", {}).pop("rel_par", None)
    (v2 / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(PrunelensError, match="rel_par"):
        open_store(v2)


def test_dense_rows_argmax_keeps_the_first_index_rule_on_ties():
    """The dense argmax comes from the top-k (one pass fewer) but follows argmax's first-index rule on ties."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(64, 300, generator=g)
    z[::3, 17] = z[::3, 250] = 9.0  # two tied maxima in every third row
    z[1::3, 5] = z[1::3, 6] = z[1::3, 290] = 8.0  # three in others
    dense = K.DenseRows.of(z, [1.0])
    torch.testing.assert_close(dense.argmax, z.argmax(-1))
    torch.testing.assert_close(dense.zmax, z.amax(-1))
    torch.testing.assert_close(dense.zz, (z.double() ** 2).sum(-1).float(), rtol=1e-6, atol=0)


def test_native_dense_pass_equals_torch_top_k_and_argmax_rule(kernel_home, monkeypatch):
    """The C kernel's dense pass: Σz² (relative 1e-5), the top-10 ids and values of torch's topk, argmax's
    first index where the maximum ties, any thread count; a row with a NaN is left to torch's rules."""
    from prunelens.probe import vocab_pass_c

    monkeypatch.setenv("PRUNELENS_HOME", str(kernel_home))
    if vocab_pass_c.compiler() is None:
        pytest.skip("no C compiler")
    lib, _ = vocab_pass_c.load_library()
    g = torch.Generator().manual_seed(5)
    z = 3 * torch.randn(7, 3 * 64 + 5, generator=g)
    z[2, 150] = z[2, 40] = z[2, 196] = 30.0  # a three-way tie for the max: argmax's first index is 40
    z[4, :] = 1.0  # all equal: the first ten ids in order
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = K.DenseRows.of(z, TEMPS, lib)
    finally:
        torch.set_num_threads(before)
    want = K.DenseRows.of(z, TEMPS)
    torch.testing.assert_close(got.zz, want.zz, rtol=1e-5, atol=0)
    assert torch.equal(got.zmax, want.zmax) and torch.equal(got.argmax, want.argmax) and got.argmax[2] == 40
    assert torch.equal(got.z.gather(-1, got.top), z.topk(K.TOPK, -1).values)
    for r in range(z.shape[0]):
        if r not in (2, 4):  # no ties: the same ids in the same order
            assert torch.equal(got.top[r], want.top[r])
    assert got.top[2, :3].tolist() == [40, 150, 196] and got.top[4].tolist() == list(range(K.TOPK))
    z[3, 9] = float("nan")
    assert vocab_pass_c.native_dense(lib, z, K.TOPK) is None
    nan_rows = K.DenseRows.of(z, TEMPS, lib)  # torch's rules: NaN is the maximum
    assert nan_rows.argmax[3] == 9 and torch.isnan(nan_rows.zmax[3])

"""Offload is exact, out of memory is one line, and the weights fingerprint sees every tensor (offloaded ones too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rank_helpers import save_tiny

from prunelens.cli import main
from prunelens.model.loading import load_model, tensor_digest, weights_fingerprint
from prunelens.model.offload import has_offload, offloaded_tensors

METHODS = ("drop", "magnitude:sparsity=0.5", "wanda:sparsity=0.5", "sparsegpt:sparsity=0.5")
SMALL_CPU = 60_000  # bytes of "cpu" memory for accelerate: the embedding and a layer or so; the rest goes to disk


def _probe(model, out, *extra):
    args = ["probe", "--model", str(model), "--units", "L0.mlp,L3.attn,L3.mlp", "--samples", "2", "--steps", "2",
            "--prompt-len", "6", "--temperature", "1.0", "--calib-samples", "2", "--calib-len", "16", "--out", str(out), "--quiet"]
    for m in METHODS:
        args += ["--method", m]
    return CliRunner().invoke(main, args + list(extra))


def _offloaded(model, folder):
    return load_model(str(model), device="auto", max_memory={"cpu": SMALL_CPU}, offload_folder=str(folder))


def test_offload_puts_layers_and_head_on_disk(tmp_path):
    model = save_tiny(tmp_path / "tiny")
    loaded = _offloaded(model, tmp_path / "off")
    assert has_offload(loaded.model)
    assert loaded.model.lm_head.weight.device.type == "meta"  # the head is offloaded
    assert loaded.adapter.layers[-1].mlp.down_proj.weight.device.type == "meta"
    assert "lm_head.weight" in offloaded_tensors(loaded.model)


@pytest.mark.slow
def test_offloaded_cells_equal_the_plain_run(tmp_path):
    """drop, magnitude, wanda and sparsegpt on every unit: an offloaded run (layers and the head on disk) stores the
    cells of a plain CPU run to 1e-5 relative (float32), with the same weights fingerprint."""
    from prunelens_store import open_store

    model = save_tiny(tmp_path / "tiny")
    plain = _probe(model, tmp_path / "plain.zarr", "--device", "cpu")
    assert plain.exit_code == 0, plain.output
    off = _probe(model, tmp_path / "off.zarr", "--device", "map", "--max-memory", f"cpu={SMALL_CPU}",
                 "--offload-folder", str(tmp_path / "offload"))
    assert off.exit_code == 0, off.output
    a, b = open_store(tmp_path / "plain.zarr"), open_store(tmp_path / "off.zarr")
    assert a.attrs["weights_fingerprint"] == b.attrs["weights_fingerprint"]
    assert a.attrs["cells_done"] == b.attrs["cells_done"] == len(METHODS) * 3
    for v in ("kl", "kl_pred", "cos_dev", "rel_norm", "top1_agree"):
        x, y = a[v].values.astype(np.float64), b[v].values.astype(np.float64)
        assert np.array_equal(np.isfinite(x), np.isfinite(y)), v
        fin = np.isfinite(x)
        assert np.all(np.abs(x[fin] - y[fin]) <= 1e-5 * np.abs(x[fin]) + 1e-12), v
    kl = a["kl"].values
    assert np.nanmin(kl[1:]) > 0  # every weight method moved every unit (the check is not vacuous)
    np.testing.assert_array_equal(a["free_tokens"].values, b["free_tokens"].values)


def test_offloaded_weights_are_restored_after_a_cell(tmp_path):
    """A weight method's edit lasts only while its cell is open: the offloaded values come back exactly."""
    from prunelens.compression.methods import parse_method
    from prunelens.model.offload import onloaded
    from prunelens.units import Unit

    loaded = _offloaded(save_tiny(tmp_path / "tiny"), tmp_path / "off")
    layer = loaded.adapter.layers[-1]
    before = {k: v.clone() for k, v in offloaded_tensors(loaded.model).items()}
    ids = torch.tensor([[3, 4, 5, 6]])
    z0 = loaded.model(ids).logits
    with onloaded([layer]):
        with parse_method("magnitude:sparsity=0.5").perturb(loaded.adapter, Unit(3, "mlp")):
            assert layer.mlp.down_proj.weight.device.type == "cpu"
            assert float((layer.mlp.down_proj.weight == 0).float().mean()) >= 0.5
            assert not torch.equal(loaded.model(ids).logits, z0)  # the edit is what the forward sees
    assert layer.mlp.down_proj.weight.device.type == "meta"
    assert torch.equal(loaded.model(ids).logits, z0)
    after = offloaded_tensors(loaded.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fingerprint_sees_one_changed_element_in_any_tensor(tmp_path):
    """One element changed in any tensor (here: each tensor in turn, at a random position, by one unit in the last
    place) changes the fingerprint; the offloaded model's fingerprint covers the tensors on disk."""
    from conftest import make_tiny_model

    model = make_tiny_model("llama", layers=2)
    base = weights_fingerprint(model)
    g = torch.Generator().manual_seed(0)
    for name, p in model.state_dict().items():
        flat = p.view(-1)
        i = int(torch.randint(flat.numel(), (1,), generator=g))
        old = flat[i].clone()
        flat[i] = torch.nextafter(old, torch.tensor(float("inf")))
        assert weights_fingerprint(model) != base, name
        flat[i] = old
    assert weights_fingerprint(model) == base


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int8])
def test_tensor_digest_detects_single_elements_across_blocks(dtype):
    """Blocks of the digest: a change anywhere (several blocks long, a tail past the last whole word) is seen;
    a value moved from one block to another is seen too."""
    n = (1 << 17) + 5  # two full blocks of 64-bit words for int8/bf16 ... and a ragged tail
    t = torch.randint(-50, 50, (n,)).to(dtype)
    d0 = tensor_digest(t)
    for i in (0, 7, n // 2, n - 1):
        u = t.clone()
        u[i] = u[i] + 1
        assert tensor_digest(u) != d0, i
    u = t.clone()
    u[0], u[-3] = t[-3], t[0]
    if not torch.equal(t[0], t[-3]):
        assert tensor_digest(u) != d0


def test_fingerprint_of_offloaded_model_covers_the_tensors_on_disk(tmp_path):
    """Offloaded: the same fingerprint as loaded plainly; one element changed in the (offloaded) LM head of the
    checkpoint changes it."""
    from conftest import make_tiny_model
    from rank_helpers import tiny_tokenizer

    model = save_tiny(tmp_path / "tiny")
    loaded = _offloaded(model, tmp_path / "off")
    base = weights_fingerprint(loaded.model)
    assert base == weights_fingerprint(load_model(str(model)).model)
    other = make_tiny_model("llama", layers=4, seed=0)
    with torch.no_grad():
        other.lm_head.weight.view(-1)[5] += 1.0
    other.save_pretrained(tmp_path / "tiny2", safe_serialization=True)
    tiny_tokenizer().save_pretrained(tmp_path / "tiny2")
    changed = _offloaded(tmp_path / "tiny2", tmp_path / "off2")
    assert changed.model.lm_head.weight.device.type == "meta"
    assert weights_fingerprint(changed.model) != base


def test_out_of_memory_in_a_cell_is_one_line_and_the_store_resumes(tmp_path, monkeypatch):
    from prunelens.probe import engine as eng
    from prunelens_store import open_store

    model = save_tiny(tmp_path / "tiny", layers=2)
    out = tmp_path / "p.zarr"
    args = ["probe", "--model", str(model), "--method", "drop", "--units", "all", "--samples", "2", "--steps", "2",
            "--prompt-len", "5", "--temperature", "1.0", "--out", str(out), "--device", "cpu", "--quiet"]
    real = eng.ProbeEngine._measure
    calls = []

    def flaky(self, method, unit, stats):
        calls.append(unit.name)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, method, unit, stats)

    monkeypatch.setattr(eng.ProbeEngine, "_measure", flaky)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Loading weights")]  # transformers' bar
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"Error: out of memory in cell drop on {calls[2]} ")
    for hint in ("--batch-size", "--dtype", "--max-memory"):
        assert hint in lines[0]
    monkeypatch.setattr(eng.ProbeEngine, "_measure", real)
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    ds = open_store(out)
    assert int(ds.attrs["cells_done"]) == 6
    ref = tmp_path / "ref.zarr"
    assert CliRunner().invoke(main, args[:-4] + [str(ref), "--device", "cpu", "--quiet"]).exit_code == 0
    np.testing.assert_array_equal(open_store(ref)["kl"].values, ds["kl"].values)


def test_out_of_memory_at_load_is_one_line(tmp_path, monkeypatch):
    import transformers

    def boom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model = save_tiny(tmp_path / "tiny", layers=2)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    res = CliRunner().invoke(main, ["probe", "--model", str(model), "--method", "drop", "--units", "L0",
                                    "--samples", "1", "--steps", "1", "--out", str(tmp_path / "p.zarr"), "--quiet"])
    assert res.exit_code == 1
    (line,) = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Loading weights")]
    assert line.startswith("Error: out of memory loading") and "--max-memory" in line
    assert not (tmp_path / "p.zarr").exists()


def test_cpu_allocator_failure_counts_as_out_of_memory():
    from prunelens.model.devices import is_out_of_memory

    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate "
                                         "memory: you tried to allocate 1000000000000 bytes."))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_compress_refuses_offloaded_weights(tmp_path):
    model = save_tiny(tmp_path / "tiny", layers=2)
    res = CliRunner().invoke(main, ["compress", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5",
                                    "--device", "map", "--max-memory", "cpu=20000", "--out", str(tmp_path / "c")])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith("Error: compress cannot write offloaded weights")


def test_device_and_dtype_choices():
    from prunelens.errors import PrunelensError
    from prunelens.model.devices import auto_dtype, parse_max_memory, rank_device

    assert auto_dtype("float32", "cpu") == "float32"  # CPU numbers stay float32
    assert auto_dtype("float32", "cuda:1") == "bfloat16"
    assert auto_dtype("bfloat16", "cpu") == "bfloat16" and auto_dtype("torch.float16", "cuda") == "float16"
    assert auto_dtype(None, "cuda") == "bfloat16"
    assert rank_device("cuda", 2, 1) == "cuda:1" and rank_device("cuda:3", 2, 1) == "cuda:3"
    assert rank_device("auto", 1, 0) == "auto"
    with pytest.raises(PrunelensError, match="torchrun"):
        rank_device("auto", 2, 0)
    assert parse_max_memory("0=20GiB, cuda:1=40GiB,cpu=1000") == {0: "20GiB", 1: "40GiB", "cpu": 1000}
    for bad in ("0:20GiB", "gpu=1GiB", "0=lots"):
        with pytest.raises(PrunelensError, match="--max-memory"):
            parse_max_memory(bad)


def test_obs_column_loop_has_no_host_syncs():
    """The number of host-synchronising operations (.item(), boolean indexing, nonzero) in a SparseGPT/GPTQ solve does
    not grow with the number of columns: none happens per column."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from prunelens.compression.obs_solver import obs_compress
    from prunelens.compression.quant_grid import Grid

    class Syncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero,
                                       torch.ops.aten.is_nonzero, torch.ops.aten.masked_select):
                self.count += 1
            if func.overloadpacket in (torch.ops.aten.index_put_, torch.ops.aten.index_put, torch.ops.aten.index):
                masks = [i for i in args[1] if isinstance(i, torch.Tensor) and i.dtype == torch.bool]
                self.count += bool(masks)  # boolean indexing: a nonzero (a host sync on a GPU) inside the kernel
            return func(*args, **(kwargs or {}))

    def syncs(cols: int, **kw) -> int:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(8, cols, generator=g)
        x = torch.randn(4 * cols, cols, generator=g)
        with Syncs() as mode:
            obs_compress(w, x.T @ x, blocksize=16, **kw)
        return mode.count

    grid = Grid(bits=4, group_size=-1)
    for kw in ({"sparsity": 0.5}, {"nm": (2, 4)}, {"quantize": lambda b, _c: grid.quantize(b[:, 0], *grid.params(b))[:, 0]}):
        assert syncs(32, **kw) == syncs(128, **kw), kw


def test_low_precision_readout_is_chunked_and_exact(monkeypatch):
    """A bf16 head is read in float32 chunks: the logits equal one float32 matmul of the same bf16 values."""
    import torch.nn.functional as F
    from conftest import make_tiny_model

    from prunelens.model.adapters import get_adapter
    from prunelens.probe import engine as eng

    model = make_tiny_model("llama", layers=2).to(torch.bfloat16)
    adapter = get_adapter(model)
    monkeypatch.setattr(eng, "READOUT_CHUNK_BYTES", 4 * 32 * 10)  # 10 vocabulary rows per chunk (96 rows: ragged)
    h = torch.randn(5, 32).to(torch.bfloat16)
    z = eng.Readout(adapter, "norm")(h)
    want = F.linear(adapter.final_norm(h).float(), model.lm_head.weight.float())
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, want, rtol=1e-6, atol=1e-6)


def test_weights_load_straight_onto_the_device_in_the_resolved_dtype(tmp_path, monkeypatch):
    """``cuda:1`` loads with device_map {"": "cuda:1"} (no host copy); auto on CUDA picks bf16 for a float32
    checkpoint; a bf16 checkpoint stays bf16 on the CPU."""
    import transformers

    from prunelens.model.loading import resolve_dtype

    model = save_tiny(tmp_path / "tiny", layers=2)
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(target, **kwargs):
        seen.update(kwargs)
        return real(target, **{k: v for k, v in kwargs.items() if k != "device_map"})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load_model(str(model), dtype="auto", device="cuda:1")
    assert seen["device_map"] == {"": "cuda:1"} and seen["dtype"] == torch.bfloat16
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", real)
    assert resolve_dtype(str(model), "auto", "cpu") == "float32"
    bf16 = tmp_path / "bf16"
    load_model(str(model), dtype="bfloat16").model.save_pretrained(bf16)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (model / f).exists():
            (bf16 / f).write_bytes((model / f).read_bytes())
    assert resolve_dtype(str(bf16), "auto", "cpu") == "bfloat16"
    assert next(load_model(str(bf16), dtype="auto").model.parameters()).dtype == torch.bfloat16


def test_fingerprint_of_a_tied_head_is_the_same_offloaded(tmp_path):
    """A tied LM head (one tensor in memory, a separate copy when offloaded) gives the same fingerprint."""
    from conftest import tiny_config
    from rank_helpers import tiny_tokenizer
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", layers=4)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "tied", safe_serialization=True)
    tiny_tokenizer().save_pretrained(tmp_path / "tied")
    off = _offloaded(tmp_path / "tied", tmp_path / "off")
    assert has_offload(off.model)
    assert weights_fingerprint(off.model) == weights_fingerprint(model)

"""Several devices, correct by construction: a probe over a model split across two devices moves every tensor
that crosses between them explicitly.

This CPU has one real device, so the test gives tensors a virtual device: a ``TorchFunctionMode`` tags every
tensor with where it lives (the host, ``A`` = ``cpu:1`` or ``B`` = ``cpu:2``), answers ``tensor.device`` with that
virtual device, turns ``.to(device)`` / ``device=`` into a tagged copy, and fails any other operation whose
tensor inputs sit on two devices (0-dim host tensors excepted, as torch allows for CUDA). The model is placed as
accelerate's ``device_map`` places it: the embedding and layers 0-1 on A, layers 2-3, the final norm and the LM
head on B, each placed module behind an ``AlignDevicesHook`` (inputs moved to its execution device), the top
model returning its outputs on the input's device. A probe then runs every locality, both timings, greedy and
sampled decoding, a weight method and multiple-choice candidates; the mode records every mixing operation.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

A, B = torch.device("cpu", 1), torch.device("cpu", 2)
_TAG = "_virtual_device"
_DEVICE_GETTER = torch.Tensor.device.__get__  # a new method-wrapper at each access: compared with ==


def _dev(t: torch.Tensor) -> torch.device | None:
    return getattr(t, _TAG, None)


def _as_device(x: Any) -> torch.device | None:
    if isinstance(x, torch.device):
        return x
    if isinstance(x, str) and (x.startswith("cpu") or x.startswith("cuda")):
        return torch.device(x)
    return None


def _virtual(d: torch.device | None) -> torch.device | None:
    return d if d in (A, B) else None  # None = the host


def _real(x: Any) -> Any:
    return torch.device("cpu") if _as_device(x) is not None else x


class VirtualDevices(TorchFunctionMode):
    """Tags tensors with a virtual device and records every operation that mixes two devices."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.moves = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GETTER:
            return _dev(args[0]) or torch.device("cpu")
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        target = _as_device(kwargs.get("device")) if "device" in kwargs else None
        if "device" in kwargs:
            kwargs = dict(kwargs, device=_real(kwargs["device"]))
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if func is torch.Tensor.copy_:  # a copy between devices is an explicit move
            tensors = tensors[:1]
        where = {_dev(t) for t in tensors if not (t.dim() == 0 and _dev(t) is None)}
        if len(where) > 1:
            self.mixed.append(f"{getattr(func, '__qualname__', func)} on {sorted(map(str, where))}")
        out = func(*args, **kwargs)
        tag = _virtual(target) if "device" in kwargs else (next(iter(where)) if len(where) == 1 else None)
        if isinstance(out, torch.Tensor) and any(out is t for t in tensors) and func is not torch.Tensor.copy_:
            return out  # in place: keeps its device
        return tree_map(lambda o: self._tag(o, tag), out)

    def _move(self, func, args, kwargs):
        src = args[0]
        if func is torch.Tensor.cpu:
            target: torch.device | None = torch.device("cpu")
        else:
            target = None
            for x in list(args[1:]) + list(kwargs.values()):
                if isinstance(x, torch.Tensor):
                    target = _dev(x) or torch.device("cpu")
                elif _as_device(x) is not None:
                    target = _as_device(x)
        args = tuple(_real(a) for a in args)
        kwargs = {k: _real(v) for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        if target is None:  # a dtype change only: the same device
            return self._tag(out, _dev(src)) if out is not src else out
        tag = _virtual(target)
        if tag != _dev(src):
            self.moves += 1
            if out is src:
                out = src.clone()
        return self._tag(out, tag) if out is not src else out

    @staticmethod
    def _tag(o: Any, tag: torch.device | None) -> Any:
        if isinstance(o, torch.Tensor):
            setattr(o, _TAG, tag)
        return o


def _split(model) -> None:
    """Place ``model`` as accelerate's device_map would: embedding and layers 0-1 on A, the rest on B."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    class Align(AlignDevicesHook):
        def init_hook(self, module):  # the tensors are tagged below (the real ones cannot move to cpu:1)
            return module

    inner = model.model
    placed = {inner.embed_tokens: A, inner.rotary_emb: A, inner.norm: B, model.lm_head: B}
    for i, layer in enumerate(inner.layers):
        placed[layer] = A if i < 2 else B
    for mod, dev in placed.items():
        add_hook_to_module(mod, Align(execution_device=dev))
        for t in list(mod.parameters()) + list(mod.buffers()):
            setattr(t, _TAG, dev)
    add_hook_to_module(model, Align(io_same_device=True))  # outputs back on the input's device


@pytest.mark.slow
@pytest.mark.parametrize("dtype,decode", [(torch.float32, "greedy"), (torch.bfloat16, "sample")])
def test_probe_over_two_devices_moves_every_crossing_tensor(dtype, decode):
    from conftest import make_tiny_model

    from prunelens.compression.methods import parse_method
    from prunelens.model.adapters import get_adapter
    from prunelens.probe.engine import ProbeEngine, ProbeSettings
    from prunelens.probe.prompts import Prompts
    from prunelens.units import Unit

    model = make_tiny_model("llama", layers=4).to(dtype)
    _split(model)
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(0)
    ids = [list(map(int, torch.randint(3, 96, (n,), generator=g))) for n in (6, 5)]
    prompts = Prompts(ids, [[5, 9, 11], [7, 8]], "test")
    settings = ProbeSettings(steps=3, temperatures=(0.7, 1.0), localities=("local", "sublayer", "propagated"),
                             readout="norm", batch_size=2, compile=False, decode=decode, decode_temperature=1.0)
    stats = None
    with VirtualDevices() as mode:
        engine = ProbeEngine(adapter, prompts, settings)
        assert engine.device == A and engine.readout.device == B
        engine.prepare()
        cells = []
        for spec, unit in (("drop", Unit(1, "attn")), ("magnitude:sparsity=0.5", Unit(2, "mlp")),
                           ("drop", Unit(0, "block")), ("drop", Unit(3, "mlp"))):
            cells.append(engine.measure(parse_method(spec), unit, stats))
    assert mode.mixed == [], mode.mixed[:5]
    assert mode.moves > 0  # the placement was exercised: tensors did cross between A and B
    assert all(float(abs(c.arrays["kl"][0, 0]).max()) > 0 for c in cells)


def test_the_mode_catches_a_mixing_operation():
    """The check is not vacuous: an operation on tensors of A and B is recorded, an explicit move is not."""
    x, y = torch.ones(3), torch.ones(3)
    with VirtualDevices() as mode:
        a, b = x.to(A), y.to(B)
        _ = a + b.to(A)
        assert mode.mixed == []
        _ = a + b
    assert len(mode.mixed) == 1 and "cpu:1" in mode.mixed[0] and "cpu:2" in mode.mixed[0]

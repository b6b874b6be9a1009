"""accelerate offload: where a module runs, its offloaded weights, and holding a module's weights in place.

With ``device_map`` offload (weights kept on the host or on disk), accelerate's ``AlignDevicesHook``
leaves each offloaded parameter on the ``meta`` device and reloads it from the hook's
``weights_map`` at every forward: an edit of ``weight.data`` would be lost at the next call.
``onloaded`` loads a module's weights on its execution device and switches the reload off while
open (an edit then holds, and is gone when the weights are offloaded again on exit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _align_hooks(module: nn.Module) -> list[Any]:
    """The module's own accelerate ``AlignDevicesHook``s (inside a ``SequentialHook`` too)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    hooks = list(getattr(hook, "hooks", [hook]))
    return [h for h in hooks if hasattr(h, "execution_device") and hasattr(h, "offload")]


def offloading_hooks(root: nn.Module) -> list[tuple[str, nn.Module, Any]]:
    """(module name, module, hook) for every module under ``root`` whose weights accelerate offloads."""
    return [(name, mod, h) for name, mod in root.named_modules() for h in _align_hooks(mod) if h.offload]


def has_offload(model: nn.Module) -> bool:
    """Whether any weight of ``model`` is offloaded (reloaded from the host or disk at each forward)."""
    return bool(offloading_hooks(model))


def execution_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device, else its first real tensor's device."""
    for h in _align_hooks(module):
        if h.execution_device is not None:
            dev = h.execution_device
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type != "meta":
            return t.device
    for sub in module.children():  # a container whose tensors are all offloaded: its first child's hook
        return execution_device(sub)
    return torch.device("cpu")


def offloaded_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict name -> the offloaded value (loaded from the host or disk) of every offloaded tensor."""
    out: dict[str, torch.Tensor] = {}
    for name, mod, hook in offloading_hooks(model):
        prefix = f"{name}." if name else ""
        wm = hook.weights_map
        if wm is None:
            continue
        names = [n for n, _ in mod.named_parameters(recurse=hook.place_submodules)]
        if hook.offload_buffers:
            names += [n for n, _ in mod.named_buffers(recurse=hook.place_submodules)]
        for key in names:
            if key in wm:
                out[prefix + key] = wm[key]
    return out


@contextmanager
def onloaded(modules: list[nn.Module]) -> Iterator[None]:
    """While open, the offloaded weights of ``modules`` (and their submodules) sit on their execution device and
    are not reloaded at each forward, so an edit of ``weight.data`` takes effect; on exit they are offloaded again
    (the stored values, never the edit, come back at the next forward). A no-op without offload."""
    held: list[tuple[nn.Module, Any]] = []
    try:
        for root in modules:
            for _name, mod, hook in offloading_hooks(root):
                hook.pre_forward(mod)  # loads from weights_map onto the execution device
                hook.offload = False
                held.append((mod, hook))
        yield
    finally:
        for mod, hook in reversed(held):
            hook.offload = True
            hook.post_forward(mod, None)  # back to meta: the next forward reloads the stored weights

"""Apply a mixed plan: each unit with its own method and level, sequentially on compressed activations.

``compress_mixed`` walks the layers in order. Calibration inputs enter layer 0; within a
layer the units are compressed one after another (attention before MLP), each unit's
statistics (Wanda's input norms, the SparseGPT/GPTQ Hessian) gathered by running the layer
as it is *now* (earlier units of the same layer already compressed); then the layer's
compressed outputs become the next layer's inputs. So the result equals compressing the
units one by one in that order with ``compress_model`` (each call re-propagating through the
already-compressed model), in one pass. Units of ``whole_model`` methods (``drop``) are held
perturbed during the pass (so later layers calibrate on the model with them dropped) and
applied for good with the method's ``apply`` at the end (blocks removed, sublayers' output
projections zeroed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from prunelens.compression.methods import Method, WeightMethod
from prunelens.errors import PrunelensError
from prunelens.units import Unit, first_overlap

if TYPE_CHECKING:
    from prunelens.compression.resume import LayerWork

KIND_ORDER = {"attn": 0, "mlp": 1, "block": 2}


def mixed_order(assignments: list[tuple[Unit, Method]]) -> list[tuple[Unit, Method]]:
    """Layer by layer, attention before MLP; rejects a unit twice or a block with its own sublayer."""
    hit = first_overlap(u for u, _ in assignments)
    if hit is not None:
        raise PrunelensError(f"the plan compresses overlapping units in layer {hit[0].layer} ({hit[0]})")
    return sorted(assignments, key=lambda a: (a[0].layer, KIND_ORDER[a[0].kind]))


def linear_zeros(adapter: Any) -> tuple[int, int]:
    """(zero weights, all weights) over every linear of every decoder layer."""
    from prunelens.compression.sequential import zero_count

    counts = [zero_count(adapter.linears(Unit(i, "block"))) for i in range(adapter.num_layers)]
    return sum(z for z, _ in counts), sum(t for _, t in counts)


def _checked(adapter: Any, assignments: list[tuple[Unit, Method]]) -> list[tuple[Unit, Method]]:
    """The assignments, each unit existing and fit for its method (one line on the first that is not)."""
    if not assignments:
        raise PrunelensError("no units to compress")
    for u, m in assignments:
        m.check_unit(u)
        adapter.module(u)  # raises on a layer that does not exist
        if not isinstance(m, WeightMethod) and not m.whole_model:
            raise PrunelensError(f"method {m.name!r} cannot compress a whole model (it has no apply())")
    return assignments


def _apply_held(loaded: Any, held: dict[str, tuple[Method, list[Unit]]]) -> dict[str, Any]:
    """Apply the whole-model methods held during the pass for good; their summaries merged (lists joined)."""
    merged: dict[str, Any] = {}
    for m, units in held.values():
        for k, v in (m.apply(loaded, units) or {}).items():
            merged[k] = merged.get(k, []) + v if isinstance(v, list) else v
    return merged


@dataclass
class _PerUnitPass:
    """The steps of ``layer_loop`` for a plan with a method per unit: within a layer each unit in turn (its
    statistics from the layer as it is then); whole-model methods held perturbed on ``stack`` until the end."""

    adapter: Any
    by_layer: dict[int, list[tuple[Unit, Method]]]
    inputs: Any
    stack: ExitStack
    held: dict[str, tuple[Method, list[Unit]]] = field(default_factory=dict)
    info: list[dict] = field(default_factory=list)

    def _hold(self, u: Unit, m: Method) -> None:
        self.stack.enter_context(m.perturb(self.adapter, u))
        self.held.setdefault(m.spec, (m, []))[1].append(u)

    def restore(self, i: int, saved: Callable[[int], dict[str, torch.Tensor]]) -> None:
        from prunelens.compression.resume import restore_weights

        tensors = saved(i) if self.by_layer.get(i) else {}
        for u, m in self.by_layer.get(i, []):
            if isinstance(m, WeightMethod):
                restore_weights(self.adapter.linears(u), tensors, prefix=f"{u.name}/")
            else:
                self._hold(u, m)

    def step(self, i: int) -> dict[str, Any]:
        from prunelens.compression.sequential import compress_linears, zero_count

        written: dict[str, Any] = {}
        for u, m in self.by_layer.get(i, []):
            if not isinstance(m, WeightMethod):
                self._hold(u, m)
                self.info.append({"unit": u.name, "method": m.spec, "seconds": 0.0})
                continue
            tu = time.time()
            lin = self.adapter.linears(u)
            written.update({f"{u.name}/{name}": mod for name, mod in lin.items()})
            calibrated = self.inputs is not None and m.calibration != "none"
            stats = self.inputs.stats(i, lin, m.calibration) if calibrated else None
            compress_linears(m, lin, stats)
            del stats
            zeros, total = zero_count(lin)
            self.info.append({"unit": u.name, "method": m.spec, "sparsity": zeros / total if total else 0.0,
                              "seconds": round(time.time() - tu, 3)})
        return written


@torch.no_grad()
def compress_mixed(loaded: Any, assignments: list[tuple[Unit, Method]], calib_ids: torch.Tensor | None = None,
                   progress: bool = True, batch_size: int = 8, work: LayerWork | None = None) -> dict:
    """Compress ``loaded.model`` in place, each unit with its own method (see the module docstring).

    With ``work``, each finished layer is kept on disk and a rerun continues after the last one.
    """
    from prunelens.compression.sequential import SequentialInputs, _default_calibration, layer_loop, progress_bar

    adapter = loaded.adapter
    order = mixed_order(_checked(adapter, assignments))
    t0 = time.time()
    calibrated = [u.layer for u, m in order if isinstance(m, WeightMethod) and m.calibration != "none"]
    inputs = None
    if calibrated:
        ids = torch.as_tensor(_default_calibration(loaded) if calib_ids is None else calib_ids)
        inputs = SequentialInputs.capture(adapter, ids, batch_size, max(calibrated))
    by_layer: dict[int, list[tuple[Unit, Method]]] = {}
    for u, m in order:
        by_layer.setdefault(u.layer, []).append((u, m))
    layers = range(max(max(calibrated, default=-1), max(by_layer)) + 1)
    with ExitStack() as stack:
        one = _PerUnitPass(adapter, by_layer, inputs, stack)
        bar = progress_bar(progress, len(layers), "compress (mixed plan)")
        layer_loop(layers, inputs, one.step, one.restore, one.info, work, bar)
        info, held = one.info, one.held
    return {
        "method": "mixed",
        "units": [{"unit": u.name, "method": m.spec} for u, m in order],
        "calibration_samples": 0 if inputs is None else inputs.samples,
        "seconds": round(time.time() - t0, 3),
        "per_unit": info,
        **_apply_held(loaded, held),
    }

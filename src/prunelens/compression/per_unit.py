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
from contextlib import ExitStack
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


@torch.no_grad()
def compress_mixed(loaded: Any, assignments: list[tuple[Unit, Method]], calib_ids: torch.Tensor | None = None,
                   progress: bool = True, batch_size: int = 8, work: LayerWork | None = None) -> dict:
    """Compress ``loaded.model`` in place, each unit with its own method (see the module docstring).

    With ``work``, each finished layer is kept on disk and a rerun continues after the last one.
    """
    from prunelens.compression.sequential import SequentialInputs, _default_calibration, compress_linears, zero_count

    adapter = loaded.adapter
    if not assignments:
        raise PrunelensError("no units to compress")
    for u, m in assignments:
        m.check_unit(u)
        adapter.module(u)  # raises on a layer that does not exist
        if not isinstance(m, WeightMethod) and not m.whole_model:
            raise PrunelensError(f"method {m.name!r} cannot compress a whole model (it has no apply())")
    order = mixed_order(assignments)
    t0 = time.time()
    calibrated = [u.layer for u, m in order if isinstance(m, WeightMethod) and m.calibration != "none"]
    last = max(calibrated) if calibrated else -1
    inputs = None
    if calibrated:
        ids = torch.as_tensor(_default_calibration(loaded) if calib_ids is None else calib_ids)
        inputs = SequentialInputs.capture(adapter, ids, batch_size)
    by_layer: dict[int, list[tuple[Unit, Method]]] = {}
    for u, m in order:
        by_layer.setdefault(u.layer, []).append((u, m))
    layers = range(max(last, max(by_layer)) + 1)
    done = -1 if work is None else work.done
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(layers), initial=min(done + 1, len(layers)), desc="compress (mixed plan)", unit="layer")
    held: dict[str, tuple[Method, list[Unit]]] = {}  # whole-model methods, applied at the end
    info: list[dict] = []
    with ExitStack() as stack:
        if work is not None and done >= 0:  # finished layers as they were written, and the next layer's inputs
            from prunelens.compression.resume import restore_weights

            for i in range(done + 1):
                saved = work.layer(i) if by_layer.get(i) else {}
                for u, m in by_layer.get(i, []):
                    if isinstance(m, WeightMethod):
                        restore_weights(adapter.linears(u), saved, prefix=f"{u.name}/")
                    else:
                        stack.enter_context(m.perturb(adapter, u))
                        held.setdefault(m.spec, (m, []))[1].append(u)
            info = work.info
            if inputs is not None and done < last:
                inputs.hidden = work.hidden(inputs.hidden[0].device)
        for i in layers:
            if i <= done:
                continue
            written: dict[str, Any] = {}
            for u, m in by_layer.get(i, []):
                if not isinstance(m, WeightMethod):
                    stack.enter_context(m.perturb(adapter, u))
                    held.setdefault(m.spec, (m, []))[1].append(u)
                    info.append({"unit": u.name, "method": m.spec, "seconds": 0.0})
                    continue
                tu = time.time()
                lin = adapter.linears(u)
                written.update({f"{u.name}/{name}": mod for name, mod in lin.items()})
                stats = inputs.stats(i, lin, m.calibration) if inputs is not None and m.calibration != "none" else None
                compress_linears(m, lin, stats)
                del stats
                zeros, total = zero_count(lin)
                info.append({"unit": u.name, "method": m.spec, "sparsity": zeros / total if total else 0.0,
                             "seconds": round(time.time() - tu, 3)})
            if inputs is not None and i < last:
                inputs.advance(i)
            if work is not None:
                from prunelens.compression.resume import weights_of

                work.save(i, weights_of(written), inputs.hidden if inputs is not None and i < last else None, info)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    dropped: dict[str, Any] = {}
    for m, units in held.values():
        out = m.apply(loaded, units)
        for k, v in (out or {}).items():
            dropped[k] = dropped.get(k, []) + v if isinstance(v, list) else v
    return {
        "method": "mixed",
        "units": [{"unit": u.name, "method": m.spec} for u, m in order],
        "calibration_samples": 0 if inputs is None else inputs.samples,
        "seconds": round(time.time() - t0, 3),
        "per_unit": info,
        **dropped,
    }

"""Apply a plan to produce a real checkpoint, and measure what it really costs.

``apply_plan`` loads the plan's model, checks it (config hash, units), compresses it with
``prunelens.compression.sequential`` (drops, or a weight method sequentially layer by layer) and writes a
checkpoint plain ``transformers`` loads. ``validate_plan`` replays the store's prompts
(prompt + dense continuation, teacher-forced) through the dense model and the compressed one
and compares the plan's predicted KL with the measured ``KL(p_dense ‖ q)`` at the plan's
temperature: cumulatively unit by unit (reversible perturbations) and for the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunelens.errors import PrunelensError, unknown_message
from prunelens.plan.checks import check_units_disjoint
from prunelens.plan.document import Plan
from prunelens.units import Unit


def plan_methods(plan: Plan) -> list[tuple[Unit, Any]]:
    """Each unit of the plan with its parsed method; a method that is not installed is a one-line error
    naming where the plan's store recorded it from (``load it with --plugin FILE``)."""
    from prunelens.compression.methods import method_registry, parse_method

    for _, spec in plan.unit_methods():
        name = spec.split(":", 1)[0].strip()
        if name not in method_registry():
            raise PrunelensError(missing_method_message(name, plan.store_path))
    return [(u, parse_method(spec)) for u, spec in plan.unit_methods()]


def missing_method_message(name: str, store_path: str | None) -> str:
    """Why method ``name`` is unknown, with the plugin the store recorded for it (file, or distribution)."""
    from prunelens.compression.methods import method_registry

    head = f"unknown method {name!r}"
    prov: dict[str, Any] = {}
    if store_path:
        try:
            from prunelens.plan.ranking import load_store

            recorded = json.loads(load_store(store_path).attrs.get("methods", "{}"))
            prov = next((v.get("plugin") or {} for v in recorded.values()
                         if isinstance(v, dict) and v.get("name") == name), {})
        except Exception:  # noqa: BLE001 - the store is only a hint here; without it the generic advice stays
            prov = {}
    if prov.get("file"):
        return f"{head}: the store recorded it from the plugin file {prov['file']}; load it with --plugin FILE"
    if prov.get("source") == "file":
        return f"{head}: the store recorded it from a plugin file ({prov.get('plugin')}); load it with --plugin FILE"
    if prov.get("distribution"):
        return f"{head}: the store recorded it from the plugin {prov['distribution']}; install it (pip install ...)"
    return unknown_message("method", name, method_registry(), "(a method from a plugin file needs --plugin FILE)")


def compress_with_plan(loaded: Any, plan: Plan, *, calib_samples: int = 32, calib_len: int = 256, seed: int = 0,
                       progress: bool = True, work_dir: Path | None = None) -> dict[str, Any]:
    """Compress ``loaded`` in memory as the plan says (one method: ``compress_model``; mixed:
    ``compress_mixed``, unit by unit on compressed activations); return the compression summary.

    With ``work_dir``, finished layers are kept there (``prunelens.compression.resume``) and a rerun continues after
    them.
    """
    from prunelens.compression.per_unit import compress_mixed
    from prunelens.compression.sequential import compress_model

    check_units_disjoint(u.unit for u in plan.units)
    plan.validate_for(loaded)
    assignments = plan_methods(plan)
    for u, m in assignments:
        m.check_unit(u)
    calib_ids = None
    if any(m.calibration != "none" for _, m in assignments):
        from prunelens.text.corpora import token_windows

        calib_ids = torch.as_tensor(token_windows(loaded.tokenizer, calib_samples, calib_len, split="calib", seed=seed))
    work = None
    if work_dir is not None:
        from prunelens.compression.resume import LayerWork, tensor_digest

        work = LayerWork.open(work_dir, {
            "command": "apply", "model": plan.model_id, "config_hash": getattr(loaded, "config_hash", None),
            "units": [f"{u.name}:{m.spec}" for u, m in assignments], "mixed": plan.is_mixed,
            "calibration": None if calib_ids is None else tensor_digest(calib_ids),
            "dtype": str(next(loaded.model.parameters()).dtype)})
    if plan.is_mixed:  # each unit its own method: sequential, unit by unit on compressed activations
        return compress_mixed(loaded, assignments, calib_ids=calib_ids, progress=progress, work=work)
    return compress_model(loaded, assignments[0][1], [u for u, _ in assignments], calib_ids=calib_ids,
                          progress=progress, work=work)


def apply_plan(plan: Plan, out_dir: str | Path, *, loaded: Any = None, calib_samples: int = 32, calib_len: int = 256,
               overwrite: bool = False, force: bool = False, progress: bool = True) -> tuple[Path, dict]:
    """Compress the plan's model in place (``loaded`` is consumed) and save it to ``out_dir``.

    Finished layers are kept in ``OUT.partial`` beside it until the checkpoint is written, so a
    killed run continues from the last finished layer with the same result (``prunelens.compression.resume``).
    """
    from prunelens.compression.per_unit import linear_zeros
    from prunelens.compression.sequential import save_checkpoint
    from prunelens.model.loading import load_model
    from prunelens.paths import guard_output_dir

    guard_output_dir(out_dir, overwrite=overwrite, force=force)  # before loading and compressing
    check_units_disjoint(u.unit for u in plan.units)
    plan_methods(plan)  # a method that is not installed fails before the model loads
    if loaded is None:
        loaded = load_model(plan.model_id)
    _, linear_before = linear_zeros(loaded.adapter)
    from prunelens.compression.resume import work_dir_for

    work_dir = work_dir_for(out_dir)
    summary = compress_with_plan(loaded, plan, calib_samples=calib_samples, calib_len=calib_len, progress=progress,
                                 work_dir=work_dir)
    zeros, present = linear_zeros(loaded.adapter)
    summary["zero_fraction"] = zeros / present if present else 0.0  # of the decoder linear weights still stored
    summary["linear_zero_or_removed"] = (zeros + linear_before - present) / linear_before
    out = save_checkpoint(loaded, out_dir, {"plan": plan.to_dict(), "compress": summary}, overwrite=overwrite,
                          force=force)
    from prunelens.compression.resume import LayerWork

    LayerWork.remove_at(work_dir)
    summary["checkpoint_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return out, summary


# -- the store's prompts ---------------------------------------------------------------
def store_prompts(ds: Any) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, int]:
    """(ids [N, L] right-padded with 0, attention mask, prompt lengths, steps) from a probe store.

    The store keeps prompt + dense continuation (``StoreView.prompts``, compacted per row) so
    that position ``prompt_len - 1 + s`` predicts continuation token ``s``.
    """
    from prunelens_store import StoreView

    stored = StoreView.of(ds).prompts()
    rows = stored.rows
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return torch.as_tensor(ids), torch.as_tensor(mask), stored.prompt_len, stored.steps


def store_prompt_ids(ds: Any) -> list[list[int]]:
    """The prompts alone (without the continuation), as token-id lists."""
    from prunelens_store import StoreView

    return StoreView.of(ds).prompts().prompt_ids()


@torch.no_grad()
def step_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, plen: np.ndarray, steps: int) -> torch.Tensor:
    """float32 logits [N, S, V]: row s of sample n predicts continuation token s (position plen-1+s)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    pos = torch.as_tensor(plen[:, None] - 1 + np.arange(steps)[None, :], device=logits.device)
    return logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float().cpu()


def kl_between(z_dense: torch.Tensor, z_other: torch.Tensor, temperature: float) -> dict[str, np.ndarray]:
    """Measured KL(p‖q), predicted Var_p(Δz)/(2T²) and top-1 agreement per (sample, step), float64."""
    from prunelens.probe.metrics import probability_metrics

    n, s, v = z_dense.shape
    z, dz = z_dense.reshape(-1, v), (z_other - z_dense).reshape(-1, v)
    m = probability_metrics(z, dz, temperature)
    agree = (z.argmax(-1) == z_other.reshape(-1, v).argmax(-1)).double()
    return {"kl": m["kl"].reshape(n, s).numpy(), "kl_pred": m["kl_pred"].reshape(n, s).numpy(),
            "top1_agree": agree.reshape(n, s).numpy()}


class PromptReplay:
    """The store's prompts in batches, with the dense model's logits cached once."""

    def __init__(self, ds: Any, dense_model: Any, batch: int = 8):
        self.ids, self.mask, self.plen, self.steps = store_prompts(ds)
        self.batch = batch
        self.dense = [step_logits(dense_model, *b) for b in self._batches()]

    def _batches(self) -> Iterator[tuple]:
        for a in range(0, len(self.ids), self.batch):
            sl = slice(a, a + self.batch)
            yield self.ids[sl], self.mask[sl], self.plen[sl], self.steps

    def compare(self, model: Any, temperature: float) -> dict[str, float]:
        """Means over samples and steps of kl, kl_pred, top1_agree for ``model`` against the dense logits."""
        parts = [kl_between(zd, step_logits(model, *b), temperature) for zd, b in zip(self.dense, self._batches())]
        return {k: float(np.mean(np.concatenate([p[k] for p in parts]))) for k in parts[0]}


def validate_plan(plan: Plan, ds: Any, *, dense: Any = None, checkpoint: str | Path | None = None,
                  cumulative: bool = True, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Predicted vs measured KL on the store's prompts; fills the plan's measured fields and returns rows.

    Rows: one per plan prefix (units 1..k perturbed together, reversible, dense weights
    elsewhere) with cumulative predicted and measured KL, then one ``checkpoint`` row for the
    applied model when ``checkpoint`` is given.
    """
    from prunelens.model.loading import load_model

    if plan.prompts_hash and ds.attrs.get("prompts_hash") and plan.prompts_hash != ds.attrs["prompts_hash"]:
        raise PrunelensError("the store's prompts differ from the ones the plan was made with (prompts_hash)")
    if dense is None:
        dense = load_model(plan.model_id)
    plan.validate_for(dense)
    replay = PromptReplay(ds, dense.model)
    rows: list[dict[str, Any]] = []
    methods = plan_methods(plan)
    if cumulative and all(m.calibration == "none" for _, m in methods):
        with ExitStack() as stack:
            for k, (pu, (unit, method)) in enumerate(zip(plan.units, methods), start=1):
                if progress:
                    progress(f"{k}/{len(plan.units)} {pu.unit}")
                stack.enter_context(method.perturb(dense.adapter, unit))
                m = replay.compare(dense.model, plan.temperature)
                pu.cumulative_measured_kl = m["kl"]
                rows.append({"k": k, "unit": pu.unit, "predicted_kl": pu.predicted_kl,
                             "cumulative_predicted_kl": pu.cumulative_predicted_kl, "measured_kl": m["kl"],
                             "taylor_kl_of_set": m["kl_pred"], "top1_agree": m["top1_agree"]})
    if checkpoint is not None:
        applied = load_model(str(checkpoint))
        m = replay.compare(applied.model, plan.temperature)
        rows.append({"k": len(plan.units), "unit": "checkpoint", "predicted_kl": None,
                     "cumulative_predicted_kl": plan.predicted_kl_total, "measured_kl": m["kl"],
                     "taylor_kl_of_set": m["kl_pred"], "top1_agree": m["top1_agree"]})
        plan.measured.update({"checkpoint": str(checkpoint), "top1_agree": m["top1_agree"],
                              "taylor_kl_of_set": m["kl_pred"]})
    if rows:
        plan.measured_kl_total = rows[-1]["measured_kl"]
        plan.measured.update({"samples": int(len(replay.ids)), "steps": replay.steps, "timing": "teacher_forced",
                              "locality": "propagated", "top1_agree": rows[-1]["top1_agree"]})
    return rows


@contextmanager
def perturbed(method: Any, adapter: Any, units: list[Unit]) -> Iterator[None]:
    """Every unit perturbed by ``method`` at once (reversible; restored on exit)."""
    with ExitStack() as stack:
        for u in units:
            stack.enter_context(method.perturb(adapter, u))
        yield


def apply_base(loaded: Any, plan_path: str | Path, *, calib_samples: int = 32, calib_len: int = 256,
               seed: int = 0) -> dict[str, Any]:
    """Compress ``loaded`` in memory with the plan at ``plan_path`` (``probe --base``); return the store's record of it.

    The same compression as ``prunelens apply`` (``apply.compress_with_plan``), without writing a checkpoint.
    Every unit is then probed on top of that model: it is the dense reference.
    """
    plan = Plan.load(plan_path)
    compress_with_plan(loaded, plan, calib_samples=calib_samples, calib_len=calib_len, seed=seed, progress=False)
    text = json.dumps(plan.to_dict(), sort_keys=True, default=str)
    return {"path": str(Path(plan_path).resolve()), "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
            "units": [f"{u.name}:{spec}" for u, spec in plan.unit_methods()]}

"""A whole probe run: dense pass, cells sharded over ranks, written into a resumable store."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from prunelens.compression.methods import Method, method_provenance
from prunelens.errors import PrunelensError
from prunelens.probe.distributed import Ranks
from prunelens.probe.engine import ProbeEngine, ProbeSettings
from prunelens.probe.integrity import CellGate, WeightGuard
from prunelens.probe.prompts import Prompts
from prunelens.text.corpora import data_splits
from prunelens.text.tokens import convention
from prunelens.units import Unit


def versions() -> dict[str, str]:
    import torch
    import transformers
    import xarray
    import zarr

    from prunelens import __version__

    return {"prunelens": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "xarray": xarray.__version__, "zarr": zarr.__version__, "python": platform.python_version()}


def plugin_versions(methods: list[Method]) -> dict[str, str]:
    """distribution -> version of every third-party plugin that provides one of ``methods``."""
    out: dict[str, str] = {}
    for m in methods:
        prov = method_provenance(m.name)
        if prov["source"] != "builtin" and prov["distribution"]:
            out[str(prov["distribution"])] = str(prov["version"] or "?")
    return out


def prompts_hash(prompts: Prompts) -> str:
    from prunelens.text.corpora import hash_tokens

    rows = [list(r) for r in prompts.ids]
    if prompts.candidates is not None:
        rows += [[-7] + list(c) for c in prompts.candidates]
    return hash_tokens(rows)


def run_identity(loaded: Any, methods: list[Method], units: list[Unit], prompts: Prompts, settings: ProbeSettings,
                 seed: int, dtype: str, calibration: dict[str, Any],
                 base: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a store must match for a run to resume into it."""
    from prunelens.model.loading import weights_fingerprint
    from prunelens_store.schema import KL_CONVENTION, SCHEMA_VERSION

    ident = {
        "schema_version": SCHEMA_VERSION, "model_id": loaded.model_id, "config_hash": loaded.config_hash,
        "dtype": dtype, "readout": settings.readout, "kl_convention": KL_CONVENTION,
        "prompts_hash": prompts_hash(prompts), "seed": seed,
        "samples": len(prompts), "steps": settings.steps, "temperatures": list(settings.temperatures),
        "localities": list(settings.localities), "timings": list(settings.timings),
        "methods": [m.spec for m in methods], "units": [u.name for u in units],
        "weights": weights_fingerprint(loaded.model),  # same path and config, other weights: never mixed
    }
    if any(m.calibration != "none" for m in methods):
        ident["calibration"] = calibration
    if base is not None:  # probed on top of a plan (--base): never mixed with a store of the plain model
        ident["base_plan"] = base["sha256"]
    if settings.decode != "greedy":  # greedy stores keep their old identity (they resume as before)
        ident["decode"] = decode_attrs(settings)
    return ident


def decode_attrs(settings: ProbeSettings) -> dict[str, Any]:
    """How the continuations were decoded (the store's ``decode`` attr)."""
    if settings.decode == "greedy":
        return {"mode": "greedy"}
    return {"mode": "sample", "temperature": settings.decode_temperature, "seed": settings.decode_seed,
            "noise": "Gumbel-max, one stream per sample seeded by (seed, sample index), shared by dense and perturbed"}


class StatsCache:
    """Calibration statistics of one layer at a time (``calibration.LayerwiseStats``), gathered when a cell first
    needs them: a cell of another layer frees the previous layer's statistics before gathering its own."""

    def __init__(self, loaded: Any, units: list[Unit], samples: int, length: int, seed: int):
        self.loaded, self.units, self.samples, self.length, self.seed = loaded, units, samples, length, seed
        self.layerwise: Any = None

    def for_cell(self, method: Method, unit: Unit) -> Any:
        """The statistics ``method`` needs for ``unit`` (every probed linear of its layer, by name), or None."""
        if self.layerwise is not None and self.layerwise.layer != unit.layer:
            self.layerwise.release()  # another layer's cells begin: its statistics go first
        if method.calibration == "none":
            return None
        if self.layerwise is None:
            try:
                from prunelens.compression.calibration import LayerwiseStats
            except ImportError as exc:  # pragma: no cover - calibration ships with the core
                raise PrunelensError(f"method {method.name!r} needs calibration, and prunelens.compression.calibration "
                                     f"is unavailable ({exc})") from exc
            import torch

            from prunelens.text.corpora import token_windows

            tok = self.loaded.tokenizer
            if tok is None:
                raise PrunelensError(f"method {method.name!r} needs calibration text, and the model has no tokenizer")
            ids = torch.as_tensor(token_windows(tok, self.samples, self.length, split="calib", seed=self.seed))
            self.layerwise = LayerwiseStats(self.loaded, self.units, ids)
        return self.layerwise.get(unit.layer, method.calibration)

    def release(self) -> None:
        if self.layerwise is not None:
            self.layerwise.release()


def run_probe(loaded: Any, methods: list[Method], units: list[Unit], prompts: Prompts, settings: ProbeSettings,
              out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Probe every (method, unit) cell not yet done in the store at ``out``; return the final attrs.

    Rank 0 creates (or validates) the store; every rank measures its round-robin share of
    the cells and writes them; rank 0 finalises. Re-running resumes. Rank 0 holds the
    store's lock (``StoreLock``) throughout: a second probe on the same path is refused.
    Keyword arguments: see ``_run_probe``.
    """
    from prunelens_store.writer import StoreLock

    lock = StoreLock(out)
    try:
        return _run_probe(loaded, methods, units, prompts, settings, out, lock=lock, **kwargs)
    finally:
        lock.release()


def _run_probe(loaded: Any, methods: list[Method], units: list[Unit], prompts: Prompts, settings: ProbeSettings,
               out: str | Path, *, lock: Any = None, seed: int = 0, dtype: str = "float32", device: str = "cpu",
               calib_samples: int = 32, calib_len: int = 256, ranks: Ranks | None = None, progress: bool = True,
               on_cell: Callable[[str, str], None] | None = None, base: dict[str, Any] | None = None,
               ) -> dict[str, Any]:
    """``run_probe``'s body; ``lock`` (the store's ``StoreLock``) is taken by rank 0 before it touches the store."""
    from prunelens_store.writer import StoreWriter, create_store

    ranks = ranks or Ranks()
    out = Path(out)
    t0 = time.time()
    _check_unit_kinds(methods, units)
    from prunelens.probe.prompts import check_vocab

    check_vocab(prompts, int(loaded.model.get_input_embeddings().num_embeddings))  # before any store exists
    calibration = {"samples": calib_samples, "length": calib_len, "split": "calib", "seed": seed}
    identity = run_identity(loaded, methods, units, prompts, settings, seed, dtype, calibration, base)
    tok = loaded.tokenizer
    pad_id = getattr(tok, "pad_token_id", None) if tok is not None else None
    engine = ProbeEngine(loaded.adapter, prompts, settings, pad_id=0 if pad_id is None else int(pad_id))
    engine.prepare(ranks=ranks)
    tokens, cont = engine.dense_tokens(), engine.dense_continuation()

    error: Exception | None = None
    if ranks.is_main:
        try:
            if lock is not None:
                from prunelens.paths import remove_stale_temps

                lock.acquire()
                remove_stale_temps(out, any_owner=True)  # we hold the lock: every temporary of out is stale
            if out.exists():
                _check_resume(out, identity, tokens)
            else:
                attrs = _store_attrs(loaded, methods, prompts, settings, identity, calibration, seed=seed, dtype=dtype,
                                     device=device, base=base, world=ranks.world)
                create_store(out, _template(methods, units, prompts, settings, tokens, cont, attrs), identity)
        except Exception as exc:  # tell the other ranks before raising
            error = exc
    if not ranks.broadcast_ok(error is None):
        raise error if error is not None else PrunelensError("rank 0 could not prepare the store")
    ranks.barrier()

    writer = StoreWriter(out)
    _probe_cells(loaded, engine, writer, methods, units, ranks, calib_samples=calib_samples, calib_len=calib_len,
                 seed=seed, progress=progress, on_cell=on_cell)
    ranks.barrier()
    result: dict[str, Any] = {}
    if ranks.is_main:
        result = writer.finalise({"seconds_last_run": round(time.time() - t0, 2)})
    ranks.barrier()
    return result


def _check_unit_kinds(methods: list[Method], units: list[Unit]) -> None:
    """Refuse a (method, unit) pair whose unit kind the method cannot act on."""
    for m in methods:
        for u in units:
            if u.kind not in m.unit_kinds:
                raise PrunelensError(f"method {m.name!r} cannot act on {u.kind} units ({u}); choose units of kind "
                                     f"{', '.join(m.unit_kinds)}")


def _check_resume(out: Path, identity: dict[str, Any], tokens: np.ndarray) -> None:
    """Refuse to resume into the store at ``out`` unless its identity and dense continuation match."""
    from prunelens_store.writer import StoreWriter

    writer = StoreWriter.open_for_resume(out, identity)
    stored = np.asarray(writer.group["tokens"][:])
    if stored.shape != tokens.shape or not np.array_equal(stored, tokens):
        raise PrunelensError(f"{out}: the dense continuation differs from the store's (different weights or "
                             "device?); refusing to mix results; use another --out")


def _store_attrs(loaded: Any, methods: list[Method], prompts: Prompts, settings: ProbeSettings,
                 identity: dict[str, Any], calibration: dict[str, Any], *, seed: int, dtype: str, device: str,
                 base: dict[str, Any] | None, world: int) -> dict[str, Any]:
    """The attrs of a new store: provenance, versions and the conventions its values follow."""
    return {
        "model_id": loaded.model_id, "config_hash": loaded.config_hash, "dtype": dtype, "device": device,
        "weights_fingerprint": identity["weights"],
        "versions": json.dumps({**versions(), **plugin_versions(methods)}), "readout": settings.readout,
        "prompts_hash": identity["prompts_hash"],
        "prompts_source": prompts.source, "seed": seed, "data_splits": json.dumps(data_splits()),
        "tokenization": json.dumps(convention(loaded.tokenizer).as_attrs()),
        "methods": json.dumps({m.spec: {"name": m.name, **m.values, "plugin": method_provenance(m.name)}
                               for m in methods}, default=str),
        "calibration": json.dumps(calibration),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "step_convention": "step s = prediction of continuation token s, at position prompt_len - 1 + s",
        "readout_convention": "norm: z = lm_head(final_norm(h)); raw: z = lm_head(h)",
        "local_convention": "local = output of the unit's layer i read out through the readout",
        "sublayer_convention": "sublayer = the unit's own residual-stream output: x + attn(x) before the MLP "
                               "for an attention unit, the layer output for an MLP or block unit",
        "decode": json.dumps(decode_attrs(settings)),
        **({"base_plan": json.dumps(base)} if base is not None else {}),
        "world_size": world,
    }


def _template(methods: list[Method], units: list[Unit], prompts: Prompts, settings: ProbeSettings,
              tokens: np.ndarray, cont: Any, attrs: dict[str, Any]) -> Any:
    """The empty dataset of a new store (``build_template``): every cell's shape, the dense tokens, ``attrs``."""
    from prunelens_store.writer import build_template

    return build_template(
        [m.spec for m in methods], [u.name for u in units], [u.layer for u in units], [u.kind for u in units],
        len(prompts), settings.steps, list(settings.temperatures), list(settings.localities), list(settings.timings),
        tokens=tokens, prompt_len=np.asarray([len(r) for r in prompts.ids]), dense_free_tokens=cont,
        candidates=prompts.candidate_array(), attrs=attrs,
    )


def _probe_cells(loaded: Any, engine: ProbeEngine, writer: Any, methods: list[Method], units: list[Unit],
                 ranks: Ranks, *, calib_samples: int, calib_len: int, seed: int, progress: bool,
                 on_cell: Callable[[str, str], None] | None) -> None:
    """Measure and write this rank's cells not yet done, then free the engine's and the statistics' memory."""
    done = writer.done()
    cells = [(mi, ui) for ui in range(len(units)) for mi in range(len(methods))]  # layer order: dense logits reused
    # whole layers per rank, round-robin (early and late layers balance): a layer's dense readout is made once
    mine = [c for c in ranks.shard_by(cells, lambda c: units[c[1]].layer) if not done[c]]
    engine.expect_cells(len(mine))  # the metric kernel compiles only if these cells pay for it
    stats = StatsCache(loaded, units, calib_samples, calib_len, seed)
    # per-layer digests: no method may leave a change; cells are marked done only once a full check passed
    gate = CellGate(WeightGuard(loaded.model), writer.mark_done) if mine else None
    bar = _progress(len(mine), ranks, progress, skipped=int(done.sum()))
    try:
        for mi, ui in mine:
            m, u = methods[mi], units[ui]
            if bar is not None:
                bar.set_postfix_str(f"{m.spec} {u.name}")
            started = time.perf_counter()
            cell = engine.measure(m, u, stats.for_cell(m, u))
            writer.write_cell(mi, ui, cell.arrays, cell.free_tokens, cell.nonfinite, mark_done=gate is None)
            if gate is not None:
                gate.after_cell((mi, ui), m.spec, u.name, u.layer, time.perf_counter() - started)
            if on_cell:
                on_cell(m.spec, u.name)
            if bar is not None:
                bar.update(1)
        if gate is not None:
            gate.flush()
    finally:
        if bar is not None:
            bar.close()
    engine.release()
    stats.release()


def _progress(total: int, ranks: Ranks, enabled: bool, skipped: int) -> Any:
    if not enabled or not ranks.is_main:
        return None
    from tqdm.auto import tqdm

    desc = "probe" + (f" (rank 0 of {ranks.world})" if ranks.world > 1 else "")
    if skipped:
        desc += f", {skipped} cells already done"
    return tqdm(total=total, desc=desc, unit="cell", dynamic_ncols=True,
                disable=os.environ.get("PRUNELENS_NO_PROGRESS") == "1")

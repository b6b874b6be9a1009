"""``prunelens compress``: compress a whole model with one method and write a checkpoint."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from prunelens.cli._complete import complete_method
from prunelens.model.devices import DEVICE_HELP, DTYPE_AUTO_HELP

if TYPE_CHECKING:
    from prunelens.compression.methods import Method


def method_from_options(method: str, options: dict, extra: tuple[str, ...]) -> Method:
    """``--method wanda:sparsity=0.5`` plus ``--sparsity``/``--param k=v`` -> a validated method.

    Options override values written in the spec; unknown parameters are reported by the method.
    """
    from prunelens.compression.methods import parse_method
    from prunelens.params import format_spec, parse_assignments, parse_spec

    name, values = parse_spec(method, "method")
    values.update(parse_assignments(extra, "--param"))
    values.update({key: str(value) for key, value in options.items() if value is not None})
    return parse_method(format_spec(name, values))


class MethodOptionsCommand(click.Command):
    """A command that also takes one option per parameter of the installed methods (``Param.option``:
    ``--sparsity``, ``--group-size``, ``--sym/--asym``, a plugin's own), built when it parses or shows
    help (after ``--plugin`` files load). A parameter whose flag another option has is given with ``--param``."""

    _built: tuple[Any, list[click.Parameter]] | None = None  # (the methods they were built for, the options)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        from prunelens.compression.methods import method_registry

        params = super().get_params(ctx)
        methods = tuple((name, id(cls)) for name, (_, cls) in sorted(method_registry().items()))
        if self._built is None or self._built[0] != methods:  # the same Option objects for one parse
            taken = {o for p in params for o in (*p.opts, *p.secondary_opts)} | {p.name for p in params}
            self._built = (methods, method_options(taken))
        at = next((i + 1 for i, p in enumerate(params) if p.name == "extra"), len(params))  # right after --param
        return params[:at] + self._built[1] + params[at:]


def method_options(taken: set[str | None]) -> list[click.Parameter]:
    """``Param.option`` for each parameter name of the installed methods (the first declaration in name
    order; its help lists every method that takes it), leaving out names and flags in ``taken``."""
    from prunelens.compression.methods import method_registry

    users: dict[str, list[str]] = {}
    first: dict[str, Any] = {}
    for mname, (_, cls) in sorted(method_registry().items()):
        for pname, param in cls.params.items():
            first.setdefault(pname, param)
            users.setdefault(pname, []).append(mname)
    out: list[click.Parameter] = []
    for pname, param in first.items():
        option = param.option(pname, users[pname])
        if pname in taken or taken & {*option.opts, *option.secondary_opts}:
            continue
        out.append(option)
    return out


@click.command("compress", cls=MethodOptionsCommand)
@click.option("--model", "model_spec", required=True,
              help="Bundled alias (smollm2-135m), HF directory, .gguf or hub id.")
@click.option("--method", required=True, shell_complete=complete_method,
              help="Method name or spec, e.g. wanda or wanda:sparsity=0.5,pattern=2:4.")
@click.option("--param", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any method parameter (repeatable); the installed methods' parameters are also the options "
                   "that follow.")
@click.option("--units", default=None,
              help="Units to compress: all, attn, mlp, L0-5.mlp,L7 ... (default: every block; required for drop).")
@click.option("--calib-samples", type=int, default=32, show_default=True, help="Calibration windows (split=calib).")
@click.option("--calib-len", type=int, default=256, show_default=True, help="Tokens per calibration window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration windows.")
@click.option("--dtype", default="auto", show_default=True, help=DTYPE_AUTO_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--max-memory", "max_memory", default=None, metavar="DEV=SIZE,...",
              help="With --device map: memory per GPU, e.g. 0=20GiB,1=40GiB (a placement that offloads is refused).")
@click.option("--eval-ppl", "eval_ppl", type=int, default=0, show_default=True,
              help="Also report held-out perplexity before and after on this many 256-token windows (0 = skip).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds a prunelens checkpoint.")
@click.option("--force", is_flag=True,
              help="Also replace a non-empty OUT that is not a prunelens checkpoint (never the current "
                   "directory, home or their parents).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--dry-run", is_flag=True, help="Read only the config (no weights) and print the estimated peak memory "
                                              "per device and time on --device-class; nothing is run or written.")
@click.option("--device-class", default=None, type=click.Choice(["cpu", "h100", "a100"]),
              help="Device class of the --dry-run time estimate (default: cpu for a CPU --device, else h100).")
def command(model_spec, method, extra, units, calib_samples, calib_len, seed,
            dtype, device, max_memory, eval_ppl, out_dir, overwrite, force, as_json, dry_run,
            device_class, **method_params) -> None:
    """Compress a whole model with one method (sequentially, layer by layer) and save a checkpoint.

    \b
    Examples:
      prunelens compress --model smollm2-135m --method wanda --sparsity 0.5 --out out/wanda50
      prunelens compress --model smollm2-135m --method sparsegpt --pattern 2:4 --out out/sgpt24
      prunelens compress --model smollm2-135m --method gptq --bits 4 --group-size 128 --out out/gptq4
      prunelens compress --model smollm2-135m --method drop --units L20,L22.attn,L25.mlp --out out/drop3

    The checkpoint (safetensors + tokenizer + prunelens.json) loads with plain
    transformers AutoModelForCausalLM.from_pretrained.
    """
    from pathlib import Path

    m = method_from_options(method, method_params, extra)
    if dry_run:
        from prunelens.cli.probe import _device_class
        from prunelens.model.cost_estimate import estimate_compress, show

        show(estimate_compress(model_spec, m, units, dtype, _device_class(device_class, device),
                               calib_samples=calib_samples, calib_len=calib_len), as_json)
        return
    out = Path(out_dir)
    _check_before_work(out_dir, overwrite, force, calib_samples, calib_len)

    import torch

    from prunelens.compression.resume import tensor_digest
    from prunelens.compression.sequential import compress_model, save_checkpoint
    from prunelens.evaluation.perplexity import perplexity
    from prunelens.text.corpora import token_windows

    loaded, dtype = _load_writable(model_spec, dtype, device, max_memory)
    unit_list = _checked_units(m, units, loaded)
    ppl_ids = _heldout_ids(loaded, eval_ppl, seed) if eval_ppl else None
    before = perplexity(loaded, ppl_ids) if ppl_ids is not None else None
    calib_ids = None
    if m.calibration != "none":
        calib_ids = torch.as_tensor(token_windows(loaded.tokenizer, calib_samples, calib_len, split="calib", seed=seed))
    work = None
    if hasattr(m, "compress_weight"):  # layer by layer: finished layers kept beside --out, a rerun resumes
        work = _open_work(out, {
            "command": "compress", "model": model_spec, "config_hash": getattr(loaded, "config_hash", None),
            "method": m.spec, "units": None if unit_list is None else [u.name for u in unit_list],
            "calibration": None if calib_ids is None else tensor_digest(calib_ids), "dtype": dtype,
            "device": device})
    summary = compress_model(loaded, m, unit_list, calib_ids=calib_ids, progress=True, work=work)
    if ppl_ids is not None:
        summary["heldout_ppl_before"] = before
        summary["heldout_ppl_after"] = perplexity(loaded, ppl_ids)
    meta = {"method": m.spec, "units": units or "all blocks",
            "calib_samples": calib_samples if calib_ids is not None else 0,
            "calib_len": calib_len if calib_ids is not None else 0, "seed": seed, "compress": summary}
    path = save_checkpoint(loaded, out, meta, overwrite=overwrite, force=force)
    if work is not None:
        work.remove_at(work.path)
    _print_result(m.spec, path, summary, as_json)


def _check_before_work(out_dir: str, overwrite: bool, force: bool, calib_samples: int, calib_len: int) -> None:
    """Refuse a bad ``--out`` or calibration size in one line, before loading anything."""
    from pathlib import Path

    from prunelens.errors import PrunelensError
    from prunelens.fileio import refuse_stdout_dir
    from prunelens.paths import guard_output_dir

    refuse_stdout_dir(out_dir, "--out")
    guard_output_dir(Path(out_dir), overwrite=overwrite, force=force)
    if calib_samples < 1 or calib_len < 2:
        raise PrunelensError("--calib-samples must be >= 1 and --calib-len >= 2")


def _print_result(spec: str, path: Any, summary: dict[str, Any], as_json: bool) -> None:
    """The written checkpoint and what compression did: JSON, or one line."""
    if as_json:
        click.echo(json.dumps({"out": str(path), **summary}, indent=2, default=str))
        return
    from prunelens.workflow.summaries import compress_line

    click.echo(compress_line(spec, path, summary))


def _heldout_ids(loaded: Any, windows: int, seed: int) -> Any:
    """``windows`` held-out windows of 256 tokens (the perplexity before and after, ``--eval-ppl``)."""
    import torch

    from prunelens.text.corpora import token_windows

    return torch.as_tensor(token_windows(loaded.tokenizer, windows, 256, split="heldout", seed=seed))


def _load_writable(model_spec: str, dtype: str, device: str, max_memory: str | None) -> tuple[Any, str]:
    """The model loaded for writing its weights (refused in one line when a weight would be offloaded)."""
    from prunelens.errors import PrunelensError
    from prunelens.model.devices import parse_max_memory, resolve_device
    from prunelens.model.loading import load_model, resolve_dtype
    from prunelens.model.offload import has_offload

    target = resolve_device(device)[0]
    memory = parse_max_memory(max_memory)
    if memory and target != "auto":
        raise PrunelensError("--max-memory places a model with --device map")
    dtype = resolve_dtype(model_spec, dtype, target)
    loaded = load_model(model_spec, dtype=dtype, device=target, max_memory=memory)
    if has_offload(loaded.model):  # compression writes the weights: an offloaded weight would be reloaded unchanged
        raise PrunelensError("compress cannot write offloaded weights: the model does not fit the devices; "
                             "give more --max-memory, use --dtype bfloat16, or more GPUs")
    return loaded, dtype


def _checked_units(m: Method, units: str | None, loaded: Any) -> list[Any] | None:
    """``--units`` parsed and checked against the method (None: every block, for a weight method)."""
    from prunelens.errors import PrunelensError
    from prunelens.units import select_units

    unit_list = select_units(units, loaded.adapter.num_layers) if units else None
    if unit_list is None and not hasattr(m, "compress_weight"):
        raise PrunelensError(f"method {m.name!r} needs --units (e.g. --units L20,L22.attn)")
    for u in unit_list or []:
        m.check_unit(u)
    return unit_list


def _open_work(out: Any, key: dict[str, Any]) -> Any:
    """The work folder beside ``--out`` (finished layers kept, so that a rerun resumes), announced."""
    from prunelens.cli._interrupt import mark_resumable
    from prunelens.compression.resume import LayerWork, work_dir_for

    work = LayerWork.open(work_dir_for(out), key)
    mark_resumable(f"rerun the same command to resume after the last finished layer (kept in {work.path})")
    if work.done >= 0:
        click.echo(f"resuming after layer {work.done} (finished layers kept in {work.path})", err=True)
    return work

"""``prunelens probe``: replace each unit alone with each method and measure it into a Zarr store."""

from __future__ import annotations

from typing import Any

import click

from prunelens.cli._complete import complete_method
from prunelens.model.devices import DEVICE_HELP, DTYPE_AUTO_HELP


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("probe")
@click.option("--model", required=True, help="Bundled alias (smollm2-135m), local HF directory, .gguf file or hub id.")
@click.option("--method", "methods", multiple=True, required=True, shell_complete=complete_method,
              help="Compression method spec, e.g. drop or wanda:sparsity=0.5 (repeatable); a numeric parameter "
                   "may list levels, e.g. wanda:sparsity=0.3,0.5,0.7 (one method per level).")
@click.option("--units", default="all", show_default=True,
              help="all, attn, mlp, block, L3, L0-5.mlp, ... (comma-separated).")
@click.option("--samples", default=16, show_default=True, type=click.IntRange(1),
              help="Prompts (the probe split of Shakespeare unless --prompts).")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(1), help="Decoding steps per prompt.")
@click.option("--prompt-len", default=32, show_default=True, type=click.IntRange(1), help="Prompt length in tokens.")
@click.option("--temperature", "temperatures", default="0.5,0.7,1.0", show_default=True,
              help="Deployment temperatures (comma-separated).")
@click.option("--locality", default="local,propagated", show_default=True,
              help="local, propagated and/or sublayer (the unit's own residual-stream output: x + attn(x) for "
                   "attention, as in the paper's per-layer script; the layer output for MLP and block).")
@click.option("--timing", default="teacher_forced,free_running", show_default=True,
              help="teacher_forced and/or free_running.")
@click.option("--readout", default="norm", show_default=True, type=click.Choice(["norm", "raw"]),
              help="norm: z = lm_head(final_norm(h)) (logit lens); raw: z = lm_head(h).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Store directory (*.zarr); rerun to resume.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompts file: .txt (one per line) or .jsonl with prompt/ids and optional candidates.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for prompt and calibration sampling.")
@click.option("--dtype", default="auto", show_default=True, help=DTYPE_AUTO_HELP)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--max-memory", "max_memory", default=None, metavar="DEV=SIZE,...",
              help="With --device map: memory per device for accelerate's placement, e.g. 0=20GiB,1=40GiB,cpu=64GiB.")
@click.option("--offload-folder", "offload_folder", default=None, type=click.Path(file_okay=False),
              help="With --device map: where weights that fit on no device are kept (each cell onloads its unit's "
                   "layer, so the cells equal a run without offload).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Samples per forward pass.")
@click.option("--calib-samples", default=32, show_default=True, type=click.IntRange(1),
              help="Calibration windows (wanda, sparsegpt, gptq).")
@click.option("--calib-len", default=256, show_default=True, type=click.IntRange(2),
              help="Calibration window length in tokens.")
@click.option("--compile/--no-compile", "compile_metrics", default=None,
              help="Use the compiled metric kernel (built once per machine and kept in PRUNELENS_HOME/kernels: "
                   "a small C function on a CPU, about a second with the system compiler; AOTInductor on a GPU, "
                   "tens of seconds; default: auto, compiled when a kept kernel exists or when the measured eager "
                   "cost of the cells to come exceeds the build time).")
@click.option("--decode", default="greedy", show_default=True, type=click.Choice(["greedy", "sample"]),
              help="How the dense continuation and the free-running tokens are chosen: greedy, or sampled at "
                   "--decode-temperature with noise seeded by --seed and shared by dense and perturbed.")
@click.option("--decode-temperature", default=1.0, show_default=True, type=float,
              help="Sampling temperature (--decode sample).")
@click.option("--samples-per-prompt", default=1, show_default=True, type=click.IntRange(1),
              help="Sampled continuations per prompt (--decode sample): each prompt becomes K samples with their "
                   "own noise.")
@click.option("--base", "base_plan", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A plan (plan.json) applied to the model first: every unit is then probed on top of it.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--dry-run", is_flag=True, help="Read only the config (no weights) and print the estimated peak memory "
                                              "per device and time on --device-class; nothing is run or written.")
@click.option("--device-class", default=None, type=click.Choice(["cpu", "h100", "a100"]),
              help="Device class of the --dry-run time estimate (default: cpu for a CPU --device, else "
                   "h100).")
@click.option("--json", "as_json", is_flag=True,
              help="With --dry-run: one JSON object (peak_bytes per device, seconds).")
def command(model, methods, units, samples, steps, prompt_len, temperatures, locality, timing, readout, out,
            prompts_file, seed, dtype, device, max_memory, offload_folder, batch_size, calib_samples, calib_len,
            compile_metrics, decode, decode_temperature, samples_per_prompt, base_plan, quiet, dry_run, device_class,
            as_json) -> None:
    """Probe every unit (block, attention, MLP) of a model with each method, one unit at a time.

    Measures 1-cos in embedding, logit and probability space, KL(p_dense||q_perturbed) and
    top-1 agreement next to their Taylor predictions, locally and propagated, teacher-forced
    and free-running, and writes them into a resumable Zarr store. Run it again with the
    same arguments to resume; under torchrun or accelerate launch the units are shared
    among the processes.
    """
    from prunelens.cli._interrupt import mark_resumable

    mark_resumable("rerun the same command to resume (cells already in the store are kept)")
    from prunelens.errors import PrunelensError
    from prunelens.model.loading import load_model
    from prunelens.probe.distributed import init_ranks
    from prunelens.probe.run import run_probe
    from prunelens.units import select_units

    settings = _settings(temperatures, locality, timing, steps=steps, readout=readout, batch_size=batch_size,
                         compile=compile_metrics, decode=decode, decode_temperature=decode_temperature,
                         decode_seed=seed)
    if samples_per_prompt > 1 and decode != "sample":
        raise PrunelensError("--samples-per-prompt needs --decode sample (greedy continuations of one prompt are "
                             "identical)")
    if dry_run:
        _dry_run(model, methods, units, dtype, _device_class(device_class, device), settings, samples=samples,
                 prompt_len=prompt_len, calib_samples=calib_samples, calib_len=calib_len, as_json=as_json)
        return
    _check_out(out)  # before any work
    parsed = _distinct_methods(methods)
    from prunelens.model.devices import rank_device
    from prunelens.model.loading import resolve_dtype

    device, why, memory = _placement(device, max_memory, offload_folder)
    ranks = init_ranks()
    try:
        device = rank_device(device, ranks.world, ranks.local_rank)
        dtype = resolve_dtype(model, dtype, device)
        if ranks.is_main and not quiet:
            click.echo(f"probe: {model} on {device} ({why}), dtype {dtype}", err=True)
        if quiet:
            from prunelens.console import silence_library_progress

            silence_library_progress()
        loaded = load_model(model, dtype=dtype, device=device, max_memory=memory, offload_folder=offload_folder)
        chosen = select_units(units, loaded.adapter.num_layers)
        base = _apply_base(loaded, base_plan, calib_samples=calib_samples, calib_len=calib_len, seed=seed)
        if ranks.is_main and not quiet:
            _announce_compile(settings, loaded)
        prompts = _prompts(loaded, prompts_file, prompt_len, samples, seed, samples_per_prompt)
        attrs = run_probe(loaded, parsed, chosen, prompts, settings, out, seed=seed, dtype=dtype, device=device,
                          calib_samples=calib_samples, calib_len=calib_len, ranks=ranks, progress=not quiet,
                          base=base)
        if ranks.is_main and not quiet:
            print_summary(out, attrs)
    finally:
        ranks.close()


def _settings(temperatures: str, locality: str, timing: str, **fields: Any) -> Any:
    """``ProbeSettings`` from the comma-separated options and the other ``fields``."""
    from prunelens.errors import PrunelensError
    from prunelens.probe.engine import ProbeSettings

    try:
        temps = tuple(float(t) for t in _csv(temperatures))
    except ValueError:
        raise PrunelensError(f"--temperature must be numbers separated by commas, not {temperatures!r}") from None
    return ProbeSettings(temperatures=temps, localities=tuple(_csv(locality)), timings=tuple(_csv(timing)), **fields)


def _dry_run(model: str, methods: tuple[str, ...], units: str, dtype: str, device_class: str, settings: Any, *,
             samples: int, prompt_len: int, calib_samples: int, calib_len: int, as_json: bool) -> None:
    """Print the estimated peak memory and time of this probe (--dry-run): the config is read, nothing is run."""
    from prunelens.compression.methods import expand_methods
    from prunelens.model.cost_estimate import estimate_probe, show

    parsed = [m for text in methods for m in expand_methods(text)]
    show(estimate_probe(model, parsed, units, dtype, device_class, samples=samples, steps=settings.steps,
                        prompt_len=prompt_len, temperatures=len(settings.temperatures),
                        localities=len(settings.localities), timings=list(settings.timings),
                        batch_size=settings.batch_size, calib_samples=calib_samples, calib_len=calib_len), as_json)


def _check_out(out: str) -> None:
    """The --out store (or the folder it will be made in) must be writable."""
    from pathlib import Path

    from prunelens.paths import check_writable_dir

    check_writable_dir(Path(out) if Path(out).exists() else Path(out).parent, flag="--out", shown=out)


def _placement(device: str, max_memory: str | None, offload_folder: str | None) -> tuple[str, str, Any]:
    """(device, why it was chosen, the parsed --max-memory); --max-memory and --offload-folder need --device map."""
    from prunelens.errors import PrunelensError
    from prunelens.model.devices import parse_max_memory, resolve_device

    device, why = resolve_device(device)
    memory = parse_max_memory(max_memory)
    if (memory or offload_folder) and device != "auto":
        raise PrunelensError("--max-memory and --offload-folder place a model with --device map")
    return device, why, memory


def _distinct_methods(methods: tuple[str, ...]) -> list[Any]:
    """Every --method, levels expanded; the same method given twice is an error."""
    from prunelens.compression.methods import expand_methods
    from prunelens.errors import PrunelensError

    parsed = [m for text in methods for m in expand_methods(text)]
    specs = [m.spec for m in parsed]
    if len(set(specs)) != len(specs):
        raise PrunelensError(f"the same method is given twice: {', '.join(specs)}")
    return parsed


def _apply_base(loaded: Any, base_plan: str | None, **calibration: Any) -> Any:
    """Apply the --base plan, if any, to the loaded model (None without one); refused on offloaded weights."""
    if not base_plan:
        return None
    from prunelens.errors import PrunelensError
    from prunelens.model.offload import has_offload
    from prunelens.plan.apply import apply_base

    if has_offload(loaded.model):  # a plan's edits would be lost at the next reload of an offloaded weight
        raise PrunelensError("--base cannot apply a plan to offloaded weights; give the devices more "
                             "--max-memory (or compress the model first and probe the checkpoint)")

    return apply_base(loaded, base_plan, **calibration)


def _prompts(loaded: Any, prompts_file: str | None, prompt_len: int, samples: int, seed: int,
             samples_per_prompt: int) -> Any:
    """The --prompts file, else held-out Shakespeare prompts (which need the model's tokenizer); each repeated
    ``samples_per_prompt`` times."""
    from prunelens.errors import PrunelensError
    from prunelens.probe.prompts import load_prompts, shakespeare_prompts

    if prompts_file:
        prompts = load_prompts(prompts_file, loaded.tokenizer, prompt_len, samples)
    else:
        if loaded.tokenizer is None:
            raise PrunelensError("the model has no tokenizer: give --prompts with token ids")
        prompts = shakespeare_prompts(loaded.tokenizer, samples, prompt_len, seed)
    return prompts.repeated(samples_per_prompt) if samples_per_prompt > 1 else prompts


def _device_class(device_class: str | None, device: str) -> str:
    """The --dry-run device class: as given, else from --device (cpu, or an H100 for any GPU choice)."""
    if device_class:
        return device_class
    from prunelens.model.devices import resolve_device

    return "cpu" if resolve_device(device)[0] == "cpu" else "h100"


def _announce_compile(settings, loaded) -> None:
    """Say so before a one-time kernel build, so the first slow cells are not a surprise."""
    if not settings.compile:
        return
    import torch

    from prunelens.probe.vocab_pass import backend, kept_kernel_exists

    weight = loaded.adapter.lm_head.weight
    vocab = weight.shape[0]
    if backend(weight.device, torch.float32) == "aoti" and not kept_kernel_exists(vocab, len(settings.temperatures),
                                                                                  weight.device):
        click.echo(f"building the compiled metric kernel (vocabulary {vocab}): a one-time build of tens of seconds, "
                   "kept in PRUNELENS_HOME/kernels for every later run on this machine", err=True)


def print_summary(path: str, attrs: dict) -> None:
    """Means over units, samples and steps per method / locality / timing / T, and Spearman(pred, measured KL)."""
    import json

    from prunelens.console import make_console
    from prunelens.workflow.tables import probe_summary_line, probe_summary_table
    from prunelens_store import open_store

    ds = open_store(path, allow_incomplete=True)
    rho = json.loads(attrs.get("spearman_kl_pred_vs_kl") or ds.attrs.get("spearman_kl_pred_vs_kl", "{}"))
    console = make_console()
    console.print(probe_summary_table(ds, rho))
    console.print(probe_summary_line(path, attrs))
    if not attrs.get("complete"):
        console.print("[yellow]the store is incomplete; rerun the same command to finish it[/yellow]")

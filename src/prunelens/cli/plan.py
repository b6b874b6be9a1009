"""``prunelens plan``: choose units under a budget from a probe store and write the plan."""

from __future__ import annotations

from typing import Any

import click

from prunelens.cli.rank import store_options


def check_export_targets(out: str | None, mergekit: str | None, llmc: str | None, as_json: bool = False) -> None:
    """At least one output; at most one text on standard output ('-', or --json's plan JSON)."""
    from prunelens.errors import PrunelensError
    from prunelens.fileio import is_stdout

    if out is None and mergekit is None and llmc is None:
        raise PrunelensError("missing --out (the plan JSON), or --mergekit / --llmcompressor alone")
    named = [flag for flag, path in (("--out", out), ("--mergekit", mergekit), ("--llmcompressor", llmc))
             if path is not None and is_stdout(path)]
    if as_json and not is_stdout(out):
        named.append("--json")
    if len(named) > 1:
        raise PrunelensError(f"{' and '.join(named)} all print to standard output: choose one")


@click.command("plan")
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@store_options
@click.option("--budget", required=True,
              help="Units to compress (4), a fraction of parameters (0.1), or with an allocator: sparsity=0.6 "
                   "(decoder linear weights zeroed), bits=3.5 (average), bytes=400MB (checkpoint).")
@click.option("--allocator", default=None,
              help="Choose each unit's method and level: knapsack (predicted KL), uniform, owl, ranked "
                   "(parameters as owl:M=5,lmbda=0.08). Default: knapsack for sparsity/bits/bytes budgets. "
                   "--method then selects store labels or names, several joined by + (rtn+gptq).")
@click.option("--dense-bits", type=float, default=16.0, show_default=True,
              help="Bits a dense weight counts under a bits budget.")
@click.option("--seed", type=int, default=None,
              help="Random seed of an allocator that has one (search: mutations, fitness windows); default 0.")
@click.option("--iterative", is_flag=True,
              help="Take the best unit, re-probe the rest on the already-compressed model, repeat (kl_pred).")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False),
              help="Plan JSON to write; '-' prints the plan JSON only. Optional with --mergekit or "
                   "--llmcompressor (then no plan JSON is written).")
@click.option("--mergekit", type=click.Path(dir_okay=False), default=None,
              help="Also write a mergekit passthrough YAML (block drops only); '-' prints it.")
@click.option("--llmcompressor", "llmc", type=click.Path(dir_okay=False), default=None,
              help="Also write an llm-compressor recipe YAML (wanda, sparsegpt, rtn, gptq units); '-' prints "
                   "it.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the plan JSON instead of the table (the file is written too).")
def command(store, method, kind, temperature, by, locality, timing, budget, allocator, dense_bits, seed, iterative, out,
            mergekit, llmc, as_json) -> None:
    """Write a plan: the safest units of STORE under --budget, at --temperature."""
    from pathlib import Path

    from prunelens.console import make_console
    from prunelens.fileio import is_stdout, write_output
    from prunelens.paths import check_writable_file
    from prunelens.plan.ranking import load_store
    from prunelens.plan.unit_selection import iterative_plan, plan_from_store

    check_export_targets(out, mergekit, llmc, as_json)
    check_writable_file(None if is_stdout(out) else out, flag="--out")  # before any work
    check_writable_file(None if is_stdout(mergekit) else mergekit, flag="--mergekit")
    check_writable_file(None if is_stdout(llmc) else llmc, flag="--llmcompressor")
    quiet = as_json or is_stdout(out) or is_stdout(mergekit) or is_stdout(llmc)  # stdout carries data only
    console = make_console(stderr=quiet)
    ds = load_store(store)
    kind_ = None if kind == "all" else kind
    from prunelens.plan.allocation import is_allocation_budget

    if allocator is None and is_allocation_budget(budget):
        allocator = "knapsack"
    if allocator is not None:
        if iterative:
            raise click.UsageError("--iterative and --allocator do not combine")
        plan = _allocated_plan(ds, console, allocator, method, seed, budget=budget, temperature=temperature,
                               kind=kind_, locality=locality, timing=timing, store_path=str(Path(store).resolve()),
                               dense_bits=dense_bits)
    elif iterative:
        if by != "kl_pred":
            raise click.UsageError("--iterative re-probes predicted KL; use it with --by kl_pred")
        with console.status("iterative plan: re-probing after each choice...") as status:
            plan = iterative_plan(ds, method=method, kind=kind_, temperature=temperature, budget=budget,
                                  store_path=str(Path(store).resolve()),
                                  progress=lambda msg: status.update(f"re-probing {msg}"))
    else:
        plan = plan_from_store(ds, method=method, kind=kind_, temperature=temperature, by=by, budget=budget,
                               locality=locality, timing=timing, store_path=str(Path(store).resolve()))
    from prunelens.workflow.export import export_plan, prepare_plan

    prepare_plan(plan, ds)  # the data record; 0 units or every layer removed: refused before writing (as the TUI)
    export_plan(plan, out, mergekit, llmc)  # every text is built (and checked) before anything is written
    if as_json and not is_stdout(out):
        write_output("-", plan.to_json())
    if not quiet:
        _print_plan(console, plan, ds, (out, mergekit, llmc))


def _allocated_plan(ds: Any, console: Any, allocator: str, method: str | None, seed: int | None, *, budget: str,
                    temperature: float, kind: str | None, locality: str, timing: str, store_path: str,
                    dense_bits: float) -> Any:
    """The plan of ``--allocator`` (its parameters, ``--seed`` where it takes one) over the store's methods."""
    from prunelens.plan.allocation import allocate_plan, parse_allocator_spec

    name, params = parse_allocator_spec(allocator)
    methods = None if method is None else [m for m in method.split("+") if m]
    if seed is not None:
        from prunelens.plan.allocation import allocator_registry

        reg = allocator_registry()
        if name in reg and "seed" not in reg[name][1].params:
            raise click.UsageError(f"--seed: allocator {name!r} has no seed")
        params.setdefault("seed", str(seed))
    from contextlib import nullcontext

    # the search draws its own progress bar (best fitness); a spinner would fight it
    busy = nullcontext() if name == "search" else console.status(f"allocating ({name})...")
    with busy:
        return allocate_plan(ds, allocator=name, budget=budget, temperature=temperature, methods=methods, kind=kind,
                             locality=locality, timing=timing, store_path=store_path, dense_bits=dense_bits, **params)


def _print_plan(console: Any, plan: Any, ds: Any, written: tuple[str | None, ...]) -> None:
    """The plan's table, its allocation line, the files written and a note on non-finite results."""
    from prunelens.console import make_console
    from prunelens.safe_text import esc
    from prunelens.workflow.tables import allocation_line, plan_table

    console.print(plan_table(plan))
    line = allocation_line(plan)
    if line:
        console.print(line)
    console.print(esc("wrote " + " and ".join(str(p) for p in written if p)))
    from prunelens.plan.ranking import nonfinite_note

    note = nonfinite_note(ds)
    if note:
        make_console(stderr=True).print(f"[yellow]warning: {esc(note)}; units with non-finite results are never "
                                        "planned[/yellow]")

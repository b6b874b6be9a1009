"""Search allocation: a (1+λ) evolutionary search over per-layer options, seeded by the knapsack.

The EvoPress recipe (Sieberling et al., ICML 2025) on prunelens' own pieces:

- the search space is the knapsack's: per layer, dense, its block at one store level, or its
  attention and/or MLP at one level each (``allocation.layer_combinations``);
- each (unit, level) is compressed once, on dense calibration inputs as the probe does, and kept
  (``VariantBank``: in memory, or as safetensors files in a cache directory);
- a candidate is *assembled* by swapping those weights into the model (drops are held with the
  method's ``perturb``); its fitness is KL(dense ‖ assembled) per token on fitness windows of the
  ``search`` data split (``Fitness``);
- the search starts at the knapsack's plan; a mutation moves one layer to a neighbouring option
  and compensates in another layer with exactly the opposite change of saving, so every candidate
  spends exactly the seed's budget (1 to 3 such moves, fewer more likely, as EvoPress);
- multi-step selection: all offspring are scored on few tokens (random windows), the survivors on
  more, and the last survivors together with the parent on every fitness window; the parent is
  replaced only by a strictly fitter candidate, so the result's fitness is never worse than the
  knapsack seed's on those windows.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prunelens.errors import PrunelensError
from prunelens.params import Param
from prunelens.plan.allocation import Allocation, Allocator
from prunelens.units import Unit

Combo = tuple[Any, ...]  # one layer's choice: a tuple of allocation.UnitOption (empty = dense)


# -- the budget, exactly ----------------------------------------------------------------------------
def exact(value: float) -> Fraction:
    """A saving as an exact fraction (savings are level × integer sizes: small denominators)."""
    return Fraction(value).limit_denominator(10**6)


def combo_saving(combo: Combo) -> Fraction:
    return sum((exact(o.saving) for o in combo), Fraction(0))


# -- mutation -------------------------------------------------------------------------------------------
def _neighbours(savings: Sequence[Fraction], current: int) -> list[int]:
    """Options of one layer next to ``current``: the same saving, or the nearest distinct saving on either side."""
    here = savings[current]
    same = [k for k, s in enumerate(savings) if k != current and s == here]
    up = sorted({s for s in savings if s > here})
    down = sorted({s for s in savings if s < here}, reverse=True)
    near = set(up[:1] + down[:1])
    return same + [k for k, s in enumerate(savings) if s in near]


def mutate(genome: Sequence[int], savings: Sequence[Sequence[Fraction]], rng: np.random.Generator,
           flips: int, tries: int = 200) -> list[int] | None:
    """``flips`` budget-neutral moves: one layer to a neighbouring option, another layer by exactly the opposite
    saving (a move to an option of equal saving needs no partner). None when no move is found."""
    child = list(genome)
    n = len(child)
    done = 0
    for _ in range(tries):
        if done == flips:
            break
        a = int(rng.integers(n))
        near = _neighbours(savings[a], child[a])
        if not near:
            continue
        k = near[int(rng.integers(len(near)))]
        delta = savings[a][k] - savings[a][child[a]]
        if delta == 0:
            child[a] = k
            done += 1
            continue
        partners = [(b, j) for b in range(n) if b != a for j, s in enumerate(savings[b])
                    if s - savings[b][child[b]] == -delta]
        if not partners:
            continue
        b, j = partners[int(rng.integers(len(partners)))]
        child[a], child[b] = k, j
        done += 1
    return child if done == flips and child != list(genome) else None


# -- compressed variants ------------------------------------------------------------------------------------
class VariantBank:
    """Each (unit, spec)'s compressed linear weights, built once from the dense weights and dense-input
    calibration statistics; kept in memory, or as one safetensors file per variant under ``cache_dir``."""

    def __init__(self, loaded: Any, calib_ids: torch.Tensor | None, cache_dir: str | Path | None = None):
        from prunelens.model.adapters import linear_weight

        self.loaded, self.calib_ids = loaded, calib_ids
        adapter = loaded.adapter
        self.dense: dict[str, torch.Tensor] = {}
        for i in range(adapter.num_layers):
            for name, mod in adapter.linears(Unit(i, "block")).items():
                self.dense[name] = linear_weight(mod).detach()
        self.linears = {u.name: adapter.linears(u) for u in adapter.units()}  # while every unit is in place
        self._stats: dict[str, Any] = {}
        self._memory: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self.seconds = 0.0
        self.built = 0
        self.calibration_tokens = 0
        self.dir: Path | None = None
        if cache_dir is not None:
            key = {"model_id": loaded.model_id, "config_hash": loaded.config_hash,
                   "calibration": None if calib_ids is None else _hash_ids(calib_ids)}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            self.dir = Path(cache_dir) / digest
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "key.json").write_text(json.dumps(key, sort_keys=True))
            except OSError as exc:
                raise PrunelensError(f"cannot use {cache_dir} as the search's variant cache: {exc}") from None

    def prepare(self, kinds: set[str]) -> None:
        """Gather the calibration statistics of ``kinds`` now, while the model is dense."""
        for kind in sorted(kinds):
            self._stats_for(kind)

    def _stats_for(self, kind: str) -> Any:
        if kind not in self._stats:
            from prunelens.compression.calibration import collect_stats

            if self.calib_ids is None:
                raise PrunelensError("the search needs calibration windows to build its compressed variants")
            blocks = [Unit(i, "block") for i in range(self.loaded.adapter.num_layers)]
            t0 = time.time()
            self._stats[kind] = collect_stats(self.loaded, blocks, kind, self.calib_ids)
            self.seconds += time.time() - t0
            self.calibration_tokens += int(self.calib_ids.numel())
        return self._stats[kind]

    def _path(self, unit: str, spec: str) -> Path:
        assert self.dir is not None
        safe = hashlib.sha256(spec.encode()).hexdigest()[:16]
        return self.dir / unit / f"{safe}.safetensors"

    def weights(self, unit: str, method: Any) -> dict[str, torch.Tensor]:
        """Linear name -> the unit's compressed weight, shaped and typed like the module's parameter."""
        key = (unit, method.spec)
        if key in self._memory:
            return self._memory[key]
        if self.dir is not None and self._path(unit, method.spec).exists():
            from safetensors.torch import load_file

            return load_file(str(self._path(unit, method.spec)))
        out = self._build(unit, method)
        if self.dir is not None:
            from safetensors.torch import save_file

            path = self._path(unit, method.spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file(out, str(tmp), metadata={"unit": unit, "spec": method.spec})
            tmp.replace(path)
        else:
            self._memory[key] = out
        return out

    @torch.no_grad()
    def _build(self, unit: str, method: Any) -> dict[str, torch.Tensor]:
        stats = self._stats_for(method.calibration) if method.calibration != "none" else None
        t0 = time.time()
        out = {}
        for name, mod in self.linears[unit].items():  # the modules themselves, even while a drop swaps them out
            new = method.compress_weight(self.dense[name].float(), None if stats is None else stats[name])
            new = new.t() if type(mod).__name__ == "Conv1D" else new
            out[name] = new.to(dtype=mod.weight.dtype, device=mod.weight.device).contiguous()
        self.seconds += time.time() - t0
        self.built += 1
        return out


def _hash_ids(ids: Any) -> str:
    from prunelens.text.corpora import hash_tokens

    return hash_tokens(np.asarray(ids))


class Assembler:
    """Puts a genome's options into the model (weights swapped in, drops held) and back to dense."""

    def __init__(self, loaded: Any, combos: list[list[Combo]], bank: VariantBank):
        from prunelens.compression.methods import WeightMethod, parse_method

        self.loaded, self.combos, self.bank = loaded, combos, bank
        self.adapter = loaded.adapter
        self.installed: list[int | None] = [None] * len(combos)
        self.held: list[ExitStack | None] = [None] * len(combos)
        self.methods = {o.method: parse_method(o.method) for cs in combos for c in cs for o in c}
        self.modules = {i: self.adapter.linears(Unit(i, "block")) for i in range(len(combos))}
        self.original = {n: m.weight.data for mods in self.modules.values() for n, m in mods.items()}
        bank.prepare({m.calibration for m in self.methods.values()
                      if isinstance(m, WeightMethod) and m.calibration != "none"})  # on the dense model

    def _reset(self, i: int) -> None:
        stack = self.held[i]
        if stack is not None:
            stack.close()
            self.held[i] = None
        for name, mod in self.modules[i].items():
            mod.weight.data = self.original[name]
        self.installed[i] = None

    def install(self, genome: Sequence[int]) -> None:
        from prunelens.compression.methods import WeightMethod

        for i, k in enumerate(genome):
            if self.installed[i] == k:
                continue
            self._reset(i)
            for o in self.combos[i][k]:
                m = self.methods[o.method]
                if isinstance(m, WeightMethod):
                    for name, w in self.bank.weights(o.unit, m).items():
                        self.modules[i][name].weight.data = w
                else:
                    if self.held[i] is None:
                        self.held[i] = ExitStack()
                    self.held[i].enter_context(m.perturb(self.adapter, Unit.parse(o.unit)))  # type: ignore[union-attr]
            self.installed[i] = k

    def restore(self) -> None:
        for i in range(len(self.combos)):
            self._reset(i)


# -- fitness ---------------------------------------------------------------------------------------------
class Fitness:
    """Mean per-token KL(dense ‖ model) over fitness windows; the dense log-probabilities are computed once."""

    def __init__(self, loaded: Any, windows: torch.Tensor, batch_size: int = 8):
        self.loaded, self.windows, self.batch_size = loaded, torch.as_tensor(windows), batch_size
        self.forward_passes = 0  # sequences through the whole model
        self.tokens = 0
        self.dense = [self._logp(self.windows[s : s + 1]) for s in range(len(self.windows))]

    @torch.no_grad()
    def _logp(self, ids: torch.Tensor) -> torch.Tensor:
        device = next(self.loaded.model.parameters()).device
        logits = self.loaded.model(input_ids=ids.to(device), use_cache=False).logits
        self.forward_passes += int(ids.shape[0])
        self.tokens += int(ids.numel())
        return F.log_softmax(logits.float(), dim=-1).cpu()

    def __call__(self, order: Sequence[int], tokens: int | None = None) -> float:
        """KL over the windows in ``order``, the last one cut so that exactly ``tokens`` tokens count (None: all)."""
        rows: list[tuple[int, int]] = []
        left = math.inf if tokens is None else tokens
        length = int(self.windows.shape[1])
        for w in order:
            if left <= 0:
                break
            take = int(min(length, left))
            rows.append((int(w), take))
            left -= take
        total, count = 0.0, 0
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s : s + self.batch_size]
            width = max(t for _, t in chunk)
            ids = torch.stack([self.windows[w, :width] for w, _ in chunk])
            logq = self._logp(ids)
            for r, (w, take) in enumerate(chunk):
                p_log = self.dense[w][0, :take]
                kl = (p_log.exp() * (p_log - logq[r, :take])).sum(-1)
                total += float(kl.double().sum())
                count += take
        return total / max(count, 1)


# -- the search --------------------------------------------------------------------------------------------
@dataclass
class SearchSettings:
    generations: int = 30
    offspring: int = 12
    survivors: tuple[int, ...] = (3,)  # after each early selection stage
    tokens: tuple[int, ...] = (512,)  # tokens each early stage scores on (random windows)
    seed: int = 0
    max_flips: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        if len(self.survivors) != len(self.tokens):
            raise PrunelensError(f"survivors ({len(self.survivors)} stages) and tokens ({len(self.tokens)} stages) "
                                 "must list the same number of selection stages")
        if self.generations < 0 or self.offspring < 1 or self.max_flips < 1:
            raise PrunelensError("the search needs generations >= 0, offspring >= 1 and max_flips >= 1")
        prev = self.offspring
        for s, t in zip(self.survivors, self.tokens):
            if not 1 <= s <= prev:
                raise PrunelensError(f"survivors must shrink from the offspring count ({self.offspring}): "
                                     f"{self.survivors}")
            if t < 1:
                raise PrunelensError(f"every selection stage needs at least one token: {self.tokens}")
            prev = s


@dataclass
class SearchResult:
    genome: list[int]
    fitness: float
    seed_fitness: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)


def search(combos: list[list[Combo]], seed_genome: list[int], assembler: Assembler, fit: Fitness,
           settings: SearchSettings, on_candidate: Callable[[list[int]], None] | None = None) -> SearchResult:
    """The (1+λ) evolutionary search with multi-step selection (see the module docstring)."""
    rng = np.random.default_rng(settings.seed)
    savings = [[combo_saving(c) for c in cs] for cs in combos]
    spend = sum((savings[i][k] for i, k in enumerate(seed_genome)), Fraction(0))
    n_windows = len(fit.windows)
    t0 = time.time()
    every = list(range(n_windows))

    def score(genome: list[int], order: Sequence[int], tokens: int | None) -> float:
        if sum((savings[i][k] for i, k in enumerate(genome)), Fraction(0)) != spend:
            raise PrunelensError("internal error: a search candidate changed the budget")  # pragma: no cover
        if on_candidate is not None:
            on_candidate(list(genome))
        assembler.install(genome)
        return fit(order, tokens)

    parent = list(seed_genome)
    parent_fit = seed_fit = score(parent, every, None)
    trace = [{"generation": 0, "fitness": parent_fit, "improved": False}]
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.generations, desc="search", unit="gen", leave=False)
        bar.set_postfix(best=f"{parent_fit:.5g}")
    try:
        for g in range(1, settings.generations + 1):
            kids: list[list[int]] = []
            for _ in range(settings.offspring * 20):
                if len(kids) == settings.offspring:
                    break
                flips = min(int(rng.integers(1, settings.max_flips + 1)), int(rng.integers(1, settings.max_flips + 1)))
                child = mutate(parent, savings, rng, flips)
                if child is not None and child not in kids:
                    kids.append(child)
            if not kids:
                break  # no budget-neutral move exists: the seed is the only candidate
            for keep, tokens in zip(settings.survivors, settings.tokens):
                if len(kids) <= keep:
                    continue
                order = [int(w) for w in rng.permutation(n_windows)]
                fits = [score(k, order, tokens) for k in kids]
                ranked = np.argsort(fits, kind="stable")[:keep]
                kids = [kids[int(r)] for r in ranked]
            finals = [score(k, every, None) for k in kids]
            best = int(np.argmin(finals))
            improved = finals[best] < parent_fit
            if improved:
                parent, parent_fit = kids[best], finals[best]
            trace.append({"generation": g, "fitness": parent_fit, "improved": bool(improved)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{parent_fit:.5g}")
    finally:
        if bar is not None:
            bar.close()
        assembler.restore()
    cost = {"forward_passes": fit.forward_passes, "tokens": fit.tokens, "seconds": round(time.time() - t0, 3)}
    return SearchResult(parent, parent_fit, seed_fit, trace, cost)


# -- the allocator -------------------------------------------------------------------------------------------
def _stages(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in str(text).split("/") if v.strip())
    except ValueError:
        raise PrunelensError(f"search {what}={text!r}: expected whole numbers joined by / (e.g. 4/2)") from None
    return vals


def _search_space(ctx: Any, score: str, band: float | None) -> list[list[Combo]]:
    """Per layer, the knapsack's choices (dense, a block option, attention and/or MLP options)."""
    from prunelens.plan.allocation import layer_choices, store_options

    return layer_choices(ctx, store_options(ctx, score), band)


def _seed_genome(combos: list[list[Combo]], choices: list[Any]) -> list[int]:
    """The index of the knapsack's choice in each layer's options (added where the space lacks it)."""
    by_layer: dict[int, set[tuple[str, str]]] = {}
    for c in choices:
        by_layer.setdefault(Unit.parse(c.unit).layer, set()).add((c.unit, c.method))
    genome = []
    for i, cs in enumerate(combos):
        want = by_layer.get(i, set())
        hit = [k for k, c in enumerate(cs) if {(o.unit, o.method) for o in c} == want]
        if not hit:
            from prunelens.plan.allocation import UnitOption

            cs.append(tuple(UnitOption(c.unit, c.method, float(c.predicted_kl or 0.0), float(c.saving))
                            for c in choices if Unit.parse(c.unit).layer == i))
            hit = [len(cs) - 1]
        genome.append(hit[0])
    return genome


def _positive(v: int) -> str | None:
    return None if v >= 1 else "must be at least 1"


class SearchAllocator(Allocator):
    name = "search"
    description = ("EvoPress-style (1+lambda) evolutionary search over the store's levels, seeded by the knapsack: "
                   "fitness = KL(dense || assembled model) on the search split's windows; budget held exactly.")
    needs = "store"
    params = {
        "generations": Param(int, 30, "generations of the (1+lambda) search", check=lambda v: None if v >= 0 else
                             "generations must be >= 0"),
        "offspring": Param(int, 12, "offspring per generation", check=_positive),
        "survivors": Param(str, "3", "survivors after each early selection stage, joined by / (4/2)"),
        "tokens": Param(str, "512", "tokens each early selection stage scores on, joined by / (256/1024); the last "
                                    "stage scores the survivors and the parent on every fitness window"),
        "windows": Param(int, 8, "fitness windows (the search data split)", check=_positive),
        "window_len": Param(int, 256, "tokens per fitness window", check=_positive),
        "seed": Param(int, 0, "random seed (mutations, window order, fitness windows)"),
        "max_flips": Param(int, 3, "at most this many budget-neutral moves per mutation", check=_positive),
        "cache": Param(str, None, "directory for the compressed variants (default: memory)"),
        "calib_samples": Param(int, 32, "calibration windows for the compressed variants", check=_positive),
        "calib_len": Param(int, 256, "tokens per calibration window", check=_positive),
        "progress": Param(bool, True, "show a progress bar with the best fitness"),
        "resolution": Param(int, 8000, "the knapsack seed's budget grid",
                            check=lambda v: None if v >= 10 else "resolution must be at least 10"),
        "score": Param(str, "kl_pred", "the knapsack seed's score: kl_pred or kl",
                       check=lambda v: None if v in ("kl_pred", "kl") else "score must be kl_pred or kl"),
        "band": Param(float, None, "only levels within the target +- band (as the knapsack's band)",
                      check=lambda v: None if v >= 0 else "band must be >= 0"),
    }

    def allocate(self, ctx: Any) -> Allocation:
        from prunelens.plan.allocation import Choice, get_allocator
        from prunelens.text.corpora import token_windows

        settings = SearchSettings(self.generations, self.offspring, _stages(self.survivors, "survivors"),
                                  _stages(self.tokens, "tokens"), self.seed, self.max_flips, self.progress)
        knap = get_allocator("knapsack", resolution=self.resolution, score=self.score, band=self.band)
        seeded = knap.allocate(ctx)
        combos = _search_space(ctx, self.score, self.band)
        genome = _seed_genome(combos, seeded.choices)
        loaded = ctx.model()
        if loaded.tokenizer is None:
            raise PrunelensError("the search needs the model's tokenizer for its fitness windows")
        t0 = time.time()
        calib = ctx.calibration(self.calib_samples, self.calib_len)
        windows = torch.as_tensor(token_windows(loaded.tokenizer, self.windows, self.window_len, split="search",
                                                seed=self.seed))
        bank = VariantBank(loaded, calib, self.cache)
        assembler = Assembler(loaded, combos, bank)
        fit = Fitness(loaded, windows)
        result = search(combos, genome, assembler, fit, settings)
        choices = [Choice(o.unit, o.method, o.predicted_kl, o.saving)
                   for cs, k in zip(combos, result.genome) for o in cs[k]]
        cost = {**result.cost, "seconds_total": round(time.time() - t0, 3), "variants_built": bank.built,
                "variant_seconds": round(bank.seconds, 3), "calibration_tokens": bank.calibration_tokens}
        return Allocation(choices, {
            "predicted_kl_sum": sum(c.predicted_kl for c in choices if c.predicted_kl is not None),
            "seed": {"allocator": "knapsack", "predicted_kl_sum": seeded.info.get("predicted_kl_sum"),
                     "fitness": result.seed_fitness,
                     "units": [{"unit": c.unit, "method": c.method} for c in seeded.choices]},
            "fitness": result.fitness, "fitness_trace": [t["fitness"] for t in result.trace],
            "generations_improved": [t["generation"] for t in result.trace if t["improved"]],
            "search_cost": cost,
            "search_data": {"fitness": {"split": "search", "windows": self.windows, "length": self.window_len,
                                        "seed": self.seed, "hash": _hash_ids(windows)},
                            "calibration": {"split": "calib", "samples": int(calib.shape[0]),
                                            "length": int(calib.shape[1]), "hash": _hash_ids(calib)}},
            "options": sum(len(cs) for cs in combos)})

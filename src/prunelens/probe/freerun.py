"""Greedy (or seeded sampled) decoding with the model's own KV cache, watching chosen layers' last-position outputs.

Called inside a ``Method.perturb`` context, the perturbed model generates its own tokens and
every layer (a pruned attention included) reads a cache that it wrote itself.

With a ``Sampler`` the next token is ``argmax(z / T + g)`` (the Gumbel-max form of sampling
from ``softmax(z / T)``), ``g`` drawn per row from a generator seeded by (seed, sample index):
the dense and the perturbed model read the same noise at every step, so they differ only
through the model (and a change that does nothing samples the same tokens). The noise is drawn on the
logits' device: a GPU's stream differs from a CPU's for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from prunelens.model.adapters import Adapter
from prunelens.probe.capture import MidStream, position_ids_for


@dataclass(frozen=True)
class Sampler:
    """Seeded sampling at ``temperature``: row ``r`` of a decode that starts at sample ``offset`` uses seed
    (seed, offset + r)."""

    temperature: float
    seed: int

    def generators(self, offset: int, rows: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
        """One generator per row on ``device`` (the logits' device: the noise never crosses to the host)."""
        out = []
        for r in range(rows):
            g = torch.Generator(device=device)
            g.manual_seed((self.seed * 1_000_003 + offset + r) % (2**63 - 1))
            out.append(g)
        return out

    @staticmethod
    def gumbel(gens: list[torch.Generator], vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """[rows, vocab] standard Gumbel noise, one stream per row (float32, on ``device``, the generators')."""
        u = torch.stack([torch.rand(vocab, generator=g, dtype=torch.float64, device=device) for g in gens])
        return (-torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))).float()

    def pick(self, logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        g = self.gumbel(gens, logits.shape[-1], logits.device)
        return (logits.float() / self.temperature + g).argmax(-1, keepdim=True)


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, S]
    watched: dict[int, torch.Tensor]  # layer -> [B, S, d] output at the last position of each step
    mid: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, S, d] stream after attention


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older signature
        return DynamicCache()


@torch.no_grad()
def greedy_decode(
    adapter: Adapter,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    steps: int,
    watch: Sequence[int] = (),
    mid: Sequence[int] = (),
    sampler: Sampler | None = None,
    offset: int = 0,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Decoded:
    """``steps`` greedy tokens after ``prompt_ids`` (left-padded, ``prompt_mask`` or None) with a KV cache.

    Step ``s`` is the prediction after the prompt and the first ``s`` generated tokens;
    ``watched[i][:, s]`` is layer ``i``'s output at that position, ``mid[i][:, s]`` the residual
    stream between its attention and MLP. With ``sampler`` the tokens are sampled (rows are
    samples ``offset, offset + 1, ...`` for the seeds). ``logits_fn`` (for a bf16/fp16 model): the next token is
    chosen from ``logits_fn(last layer's output)`` in float32 instead of the model's own logits, which are rounded
    to the model's dtype (bf16 keeps 8 bits: near-equal logits tie, and a tiny change flips the token).
    """
    model = adapter.model
    gens: list[torch.Generator] = []
    cache = _new_cache(model)
    ids, mask = prompt_ids, prompt_mask
    positions = position_ids_for(mask)
    tokens = []
    mids = {i: MidStream(adapter, i, last_only=True) for i in mid}
    final = adapter.num_layers - 1
    watched = sorted(set(watch) | ({final} if logits_fn is not None else set()))
    with ExitStack() as stack, adapter.watching(watched, last_position=True) as seen:
        for m in mids.values():
            stack.enter_context(m)
        for s in range(steps):
            kwargs = {"cache": cache, "use_cache": True, "logits_to_keep": 1}
            if mask is not None and positions is not None:  # both or neither
                kwargs.update(attention_mask=mask, position_ids=positions if s == 0 else positions[:, -1:])
            out = model(input_ids=ids, **kwargs)
            last = out.logits[:, -1] if logits_fn is None else logits_fn(seen[final][-1])
            if sampler is not None and not gens:  # on the logits' device (known at the first step)
                gens = sampler.generators(offset, prompt_ids.shape[0], last.device)
            nxt = last.argmax(-1, keepdim=True) if sampler is None else sampler.pick(last, gens)
            nxt = nxt.to(prompt_ids.device)  # the next input, where the prompt is
            tokens.append(nxt)
            ids = nxt
            if mask is not None and positions is not None:
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    return Decoded(torch.cat(tokens, dim=1), {i: torch.stack(seen[i], dim=1) for i in watch},
                   {i: torch.stack(m.seen, dim=1) for i, m in mids.items()})

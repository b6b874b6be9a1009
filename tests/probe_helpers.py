"""Test-only methods and an independent, naive probe (full model re-run, float64 formulas)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from prunelens.compression.methods import Method, Param


class ScaleOutput(Method):
    """Scale a unit's output by (1 + eps) with a forward hook (test-only)."""

    name = "scale_out"
    params = {"eps": Param(float, 0.1)}

    @contextmanager
    def perturb(self, adapter, unit, stats=None):
        eps = self.eps

        def hook(_m, _args, out):
            if isinstance(out, tuple):
                return (out[0] * (1 + eps),) + tuple(out[1:])
            return out * (1 + eps)

        handle = adapter.module(unit).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


class ZeroOutput(ScaleOutput):
    """Replace a unit's output by zeros (test-only; eps = -1)."""

    name = "zero_out"
    params = {"eps": Param(float, -1.0)}


def one_minus_cos(a, b):
    d = a / np.linalg.norm(a) - b / np.linalg.norm(b)
    return d @ d / 2


def perp_pred(a, b):
    d = b - a
    u = a / np.linalg.norm(a)
    dp = d - (d @ u) * u
    return dp @ dp / (2 * a @ a)


def naive_metrics(h, h2, z, z2, temps):
    """Textbook formulas in float64 for one row: dict of scalars/lists (per T)."""
    h, h2, z, z2 = (np.asarray(torch.as_tensor(a).detach(), dtype=np.float64) for a in (h, h2, z, z2))
    dz = z2 - z
    out = {
        "cos_h": one_minus_cos(h, h2), "pred_h": perp_pred(h, h2), "rel_h": np.linalg.norm(h2 - h) / np.linalg.norm(h),
        "cos_z": one_minus_cos(z, z2), "pred_z": perp_pred(z, z2), "rel_z": np.linalg.norm(dz) / np.linalg.norm(z),
        "top1": float(np.argmax(z) == np.argmax(z2)),
        "cos_p": [], "pred_p": [], "rel_p": [], "kl": [], "kl_pred": [],
    }
    for t in temps:
        p = np.exp(z / t - np.max(z / t)); p /= p.sum()
        q = np.exp(z2 / t - np.max(z2 / t)); q /= q.sum()
        w = p**2 / (p**2).sum()
        out["cos_p"].append(one_minus_cos(p, q))
        out["pred_p"].append((w @ (dz - w @ dz) ** 2) / (2 * t * t))
        out["rel_p"].append(np.linalg.norm(q - p) / np.linalg.norm(p))
        out["kl"].append(np.sum(p * (np.log(p) - np.log(q))))
        out["kl_pred"].append((p @ (dz - p @ dz) ** 2) / (2 * t * t))
    return out


class NaiveProbe:
    """Re-runs the whole model per unit (``output_hidden_states``), no cached inputs, no KV cache."""

    def __init__(self, adapter, readout="norm"):
        self.adapter = adapter
        self.model = adapter.model
        self.readout_mode = readout

    @torch.no_grad()
    def hidden(self, ids):
        """(every layer's output [L][B, T, d], the last one pre-norm; model logits) from one full forward.

        Forward hooks on whatever module sits at each layer now (a swapped-in replacement too):
        transformers' ``output_hidden_states`` records by decoder-layer class and skips replacements.
        """
        outs = {}

        def hook(j):
            return lambda m, a, o: outs.__setitem__(j, o[0] if isinstance(o, tuple) else o)

        handles = [layer.register_forward_hook(hook(j)) for j, layer in enumerate(self.adapter.layers)]
        try:
            out = self.model(input_ids=ids, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return [outs[j] for j in range(len(outs))], out.logits

    def logits(self, h):
        mod = self.adapter.lm_head
        x = self.adapter.final_norm(h) if self.readout_mode == "norm" else h
        z = mod(x)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(z / cap) * cap if cap else z

    @torch.no_grad()
    def greedy(self, prompt, steps, layer):
        """Greedy tokens recomputing the whole prefix each step; layer/final outputs at the last position."""
        seq = prompt
        toks, local, final = [], [], []
        for _ in range(steps):
            hs, logits = self.hidden(seq)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            toks.append(nxt)
            local.append(hs[layer][:, -1])
            final.append(hs[-1][:, -1])
            seq = torch.cat([seq, nxt], dim=1)
        return torch.cat(toks, 1), torch.stack(local, 1), torch.stack(final, 1)


def single_thread():
    """A fixture body: tiny models run faster on one thread on a busy machine; restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""The short text results of ``compress`` and ``apply``: what was written and what it did to the model."""

from __future__ import annotations

from typing import Any

APPLY_KEYS = ("seconds", "dropped_blocks", "dropped_sublayers", "layers_after", "sparsity")


def compress_line(spec: str, path: Any, summary: dict) -> str:
    """``prunelens compress``: the checkpoint, the time, the sparsity or layer count, the perplexity change."""
    line = f"{spec}: wrote {path} in {summary['seconds']:.1f}s"
    if "sparsity" in summary and summary.get("layers"):
        line += f"; sparsity of compressed linears {summary['sparsity']:.3f}"
    if "layers_after" in summary:
        line += f"; layers {summary['layers_before']} -> {summary['layers_after']}"
    if summary.get("heldout_ppl_before") is not None:
        line += f"; held-out perplexity {summary['heldout_ppl_before']:.2f} -> {summary['heldout_ppl_after']:.2f}"
    return line


def shown(v: Any) -> str:
    """A summary value as text: floats to 4 digits, lists joined (``-`` when empty)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    return str(v)


def apply_lines(plan: Any, path: Any, summary: dict) -> list[str]:
    """``prunelens apply``: what was applied where, the checkpoint's size and zeros, the summary's headline values."""
    lines = [f"applied {plan.method} to {', '.join(plan.unit_names)} -> {path}"
             if len(plan.units) <= 12 else f"applied {plan.method} to {len(plan.units)} units -> {path}"]
    if plan.is_mixed:
        specs = sorted({spec for _, spec in plan.unit_methods()})
        lines.append(f"  {len(plan.units)} units, {len(specs)} method specs: {', '.join(specs[:6])}"
                     + (" ..." if len(specs) > 6 else ""))
    lines.append(f"  checkpoint {summary['checkpoint_bytes'] / 1e6:,.1f} MB (safetensors); zero weights "
                 f"{summary['zero_fraction']:.1%} of the decoder's linear weights stored, "
                 f"{summary['linear_zero_or_removed']:.1%} zero or removed")
    keep = {k: v for k, v in summary.items() if k in APPLY_KEYS}
    if keep:
        lines.append("  " + "; ".join(f"{k.replace('_', ' ')} {shown(v)}" for k, v in keep.items()))
    return lines

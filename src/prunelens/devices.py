"""``--device`` values: ``auto`` (the default) picks CUDA when it is there, else the CPU."""

from __future__ import annotations

DEVICE_HELP = ("auto (CUDA if available, else CPU), cpu, cuda, cuda:1, or map (spread over the GPUs with "
               "accelerate's device_map='auto').")


def resolve_device(device: str) -> tuple[str, str]:
    """``--device`` -> (what ``load_model`` takes, a short reason for the first output line).

    ``auto`` -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; ``map`` -> accelerate's
    ``device_map="auto"`` (``load_model``'s ``auto``); anything else is passed through.
    """
    value = device.strip().lower()
    if value == "auto":
        import torch

        if torch.cuda.is_available():
            return "cuda", "auto: CUDA is available"
        return "cpu", "auto: no CUDA device"
    if value == "map":
        return "auto", "accelerate device_map=auto"
    return device, "as asked"

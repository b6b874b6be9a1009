"""``--device`` values: ``auto`` (the default) picks CUDA when it is there, else the CPU."""

from __future__ import annotations

from prunelens.errors import PrunelensError

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


DTYPE_AUTO_HELP = ("auto (the default): the checkpoint's dtype, except that a float32 checkpoint runs in bfloat16 on "
                   "CUDA (float32 stays float32 on a CPU); or float32, bfloat16, float16.")
OOM_HINT = "lower --batch-size, use --dtype bfloat16, or spread the model with --device map and --max-memory"


class OutOfMemory(PrunelensError):
    """A device (or the host) ran out of memory; the message names where and what to lower."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure: ``torch.OutOfMemoryError``, ``MemoryError`` or the CPU
    allocator's ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def out_of_memory(where: str, exc: BaseException, hint: str = OOM_HINT) -> OutOfMemory:
    """The one-line error for an out-of-memory ``exc`` raised while doing ``where``."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutOfMemory(f"out of memory{' ' + where if where else ''} ({first[:160]}); {hint}")


def auto_dtype(checkpoint_dtype: str | None, device: str) -> str:
    """``--dtype auto``: the checkpoint's dtype, bfloat16 in place of float32 on CUDA (``device`` as ``load_model``
    takes it: ``cuda``, ``cuda:1``, ``auto`` = accelerate's map, which is on the GPUs when there are any)."""
    name = (checkpoint_dtype or "float32").replace("torch.", "")
    on_cuda = device.startswith("cuda")
    if device == "auto":
        import torch

        on_cuda = torch.cuda.is_available()
    if name in ("bfloat16", "float16"):
        return name
    return "bfloat16" if on_cuda else "float32"


def rank_device(device: str, world: int, local_rank: int) -> str:
    """The device of one rank under torchrun: ``cuda`` becomes ``cuda:LOCAL_RANK``; ``--device map`` (one model over
    every GPU) cannot be combined with several ranks (each rank would hold a full copy on every GPU)."""
    if world <= 1:
        return device
    if device == "auto":
        raise PrunelensError("--device map spreads one model over every GPU and cannot run under torchrun "
                             f"({world} ranks): use --device cuda (each rank on its LOCAL_RANK's GPU), or one process")
    if device == "cuda":
        return f"cuda:{local_rank}"
    return device


def parse_max_memory(text: str | None) -> dict[int | str, int | str] | None:
    """``--max-memory 0=20GiB,1=40GiB,cpu=64GiB`` -> accelerate's ``max_memory`` (GPU indices as ints)."""
    if not text:
        return None
    out: dict[int | str, int | str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, size = item.partition("=")
        key, size = key.strip(), size.strip()
        if not eq or not key or not size:
            raise PrunelensError(f"bad --max-memory item {item!r}: expected DEVICE=SIZE, e.g. 0=20GiB or cpu=64GiB")
        if key.startswith("cuda:"):
            key = key[5:]
        if not (key.isdigit() or key in ("cpu", "disk")):
            raise PrunelensError(f"bad --max-memory device {key!r}: a GPU index (0, 1, ...), cpu or disk")
        if not any(ch.isdigit() for ch in size):
            raise PrunelensError(f"bad --max-memory size {size!r}: e.g. 20GiB, 500MB or a number of bytes")
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out

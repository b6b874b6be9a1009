"""Speed of the weights fingerprint (``prunelens.model.loading.weights_fingerprint``) beside hashing every byte.

    flock /tmp/prunelens-heavy.lock python bench/fingerprint.py              # the Llama-3-8B twin (3.6 GiB bf16)
    python bench/fingerprint.py --random-gb 1                                # a random bf16 tensor set instead

The model is the 8B shape twin of bench/scale.py (built there, once, under /tmp/prunelens-twins) unless
--random-gb is given (tensors shaped like one 8B layer's, random bf16, that many GB). Prints GB/s of the
fingerprint (best of --repeat), of blake2b over every byte (the previous fingerprint's method, once), their ratio
and the seconds projected for 16 GB; then checks that one element changed in each of five random tensors changes
the fingerprint.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

LAYER_SHAPES = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]


def random_model(gb: float) -> torch.nn.Module:
    """A module holding random bf16 tensors shaped like Llama-3-8B layers, ``gb`` GB in all."""
    m = torch.nn.Module()
    g = torch.Generator().manual_seed(0)
    total, i = 0, 0
    while total < gb * 1e9:
        shape = LAYER_SHAPES[i % len(LAYER_SHAPES)]
        t = torch.empty(shape, dtype=torch.bfloat16)
        t.view(torch.int16).random_(-(2**15), 2**15 - 1, generator=g)
        m.register_parameter(f"w{i}", torch.nn.Parameter(t, requires_grad=False))
        total += t.numel() * 2
        i += 1
    return m


def full_hash(model: torch.nn.Module) -> str:
    """blake2b over every byte of every tensor (hashing on the host)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()))
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random-gb", type=float, default=None, help="a random bf16 tensor set of this size instead")
    ap.add_argument("--root", type=Path, default=Path("/tmp/prunelens-twins"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from prunelens.model.loading import weights_fingerprint

    if args.random_gb:
        model, what = random_model(args.random_gb), f"random bf16 tensors ({args.random_gb:g} GB)"
    else:
        from scale import build_twin

        from prunelens.model.loading import load_model

        args.root.mkdir(parents=True, exist_ok=True)
        model = load_model(str(build_twin("8b", args.root)), dtype="bfloat16", device="cpu").model
        what = "Llama-3-8B twin (4 layers, bf16)"
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    gb = nbytes / 1e9
    print(f"{what}: {gb:.2f} GB, {len(model.state_dict())} tensors, torch threads {torch.get_num_threads()}")
    fp = weights_fingerprint(model)  # warm: the pages are read in once
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        again = weights_fingerprint(model)
        best = min(best, time.perf_counter() - t0)
        assert again == fp
    t0 = time.perf_counter()
    full_hash(model)
    full = time.perf_counter() - t0
    print(f"fingerprint (block sums)   {best:7.3f} s  {gb / best:6.2f} GB/s  -> {16 / (gb / best):6.2f} s per 16 GB")
    print(f"blake2b of every byte      {full:7.3f} s  {gb / full:6.2f} GB/s  -> {16 / (gb / full):6.2f} s per 16 GB")
    print(f"ratio: {full / best:.1f}x faster")
    g = torch.Generator().manual_seed(1)
    names = [n for n, t in model.state_dict().items() if t.numel() > 1]
    for k in torch.randint(len(names), (5,), generator=g).tolist():
        flat = model.state_dict()[names[k]].view(-1)
        i = int(torch.randint(flat.numel(), (1,), generator=g))
        old = flat[i].clone()
        flat[i] = torch.nextafter(old.float(), torch.tensor(float("inf"))).to(flat.dtype) if old.is_floating_point() \
            else old + 1
        if torch.equal(flat[i], old):  # bf16: one float32 ulp may round back; move by a bf16 ulp
            flat.view(torch.int16)[i] += 1
        changed = weights_fingerprint(model) != fp
        flat[i] = old
        print(f"one element of {names[k]} changed at {i}: {'detected' if changed else 'NOT DETECTED'}")
        assert changed


if __name__ == "__main__":
    main()

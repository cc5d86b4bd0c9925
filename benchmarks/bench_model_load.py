"""Loading a fold model for inference: built on the meta device and filled from its checkpoint vs built (randomly
initialised) and then overwritten.

Usage: python benchmarks/bench_model_load.py [--archs resnet18 resnet152] [--repeats 5] [--threads 2]

Every tensor of a fold model comes from its checkpoint, so the random initialisation a plain build does first is
thrown away; ``load_run`` builds on the meta device and assigns the checkpoint's tensors instead. Per architecture the
table gives the median of the repeats of: reading the checkpoint file (``torch.load``, the same for both), the plain
build + ``load_state_dict``, and the meta build + ``load_state_dict(assign=True)``; both give the same outputs
(checked). An ensemble of five folds pays the difference five times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.models import build_model  # noqa: E402


def _median_seconds(function, repeats: int, *arguments) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _read(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def initialised_then_loaded(arch: str, state: dict):
    model = build_model(arch, 5)
    model.load_state_dict(state)
    return model


def meta_then_assigned(arch: str, state: dict):
    model = build_model(arch, 5, device="meta")
    model.load_state_dict(state, assign=True)
    return model


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet152"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'arch':<10} {'torch.load s':>12} {'init + load s':>13} {'meta + assign s':>15} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            path = Path(tmp) / f"{arch}.pt"
            torch.save({"model": build_model(arch, 5).state_dict()}, path)
            state = _read(path)
            x = torch.rand(1, 3, 64, 64)
            with torch.inference_mode():
                torch.testing.assert_close(initialised_then_loaded(arch, state).eval()(x),
                                           meta_then_assigned(arch, state).eval()(x))
            read = _median_seconds(_read, args.repeats, path)
            plain = _median_seconds(initialised_then_loaded, args.repeats, arch, state)
            meta = _median_seconds(meta_then_assigned, args.repeats, arch, state)
            print(f"{arch:<10} {read:>12.3f} {plain:>13.3f} {meta:>15.3f} {plain / meta:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

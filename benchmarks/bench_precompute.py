"""Cold and warm ``tmdafm precompute`` on one profile, per step, against the budgets of issue 7.

Usage::

    python benchmarks/bench_precompute.py [DATA] [--profile demo] [--out DIR] [--skip-cold]

Cold: every step into a fresh store (``--out``, default a temporary folder; an existing store is used as is with
``--skip-cold``). Warm: the same command again, once in this process and once as a new ``tmdafm precompute``
process (what a user waits for, imports included). The warm check (record + sizes + digests + structure) is compared
with the straightforward way to make sure a store is whole: reading every artifact back (``torch.load`` of every
checkpoint, every CSV / JSON / Parquet parsed), with their ratio. Budgets (2-core CPU, demo profile): cold <= 15
minutes (target 10), warm <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from tmdafm_core.pipeline import STEPS, precompute
from tmdafm_core.store import read_record


def read_everything(cache: Path) -> int:
    """The straightforward integrity check: read every artifact of the store back in full; returns files read."""
    import torch

    count = 0
    for path in cache.rglob("*"):
        if not path.is_file() or "diskcache" in path.parts or path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".csv":
            pd.read_csv(path)
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".parquet":
            pd.read_parquet(path)
        else:
            path.read_bytes()
        count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-cold", action="store_true", help="the store at --out is already built")
    args = parser.parse_args()
    cache = args.out or Path(tempfile.mkdtemp(prefix="bench_precompute_")) / "cache"
    print(f"store: {cache}  profile: {args.profile}  cores: {os.cpu_count()}  load avg at start: "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    rows = []
    if not args.skip_cold:
        start = time.perf_counter()
        results = precompute(cache, args.data, profile=args.profile, progress=True)
        cold = time.perf_counter() - start
        rows += [{"what": f"cold: {r.step}", "seconds": r.seconds, "status": r.status} for r in results]
        rows.append({"what": "cold: total", "seconds": cold, "status": f"budget 900 s, target 600 s, "
                                                                        f"{'OK' if cold <= 900 else 'OVER'}"})

    start = time.perf_counter()
    results = precompute(cache, args.data, profile=args.profile)
    warm = time.perf_counter() - start
    assert all(r.status == "from cache" for r in results), [r for r in results if r.status != "from cache"]
    rows.append({"what": "warm: precompute() in process", "seconds": warm, "status": "all from cache"})

    command = [sys.executable, "-m", "tmdafm_core.cli", "precompute", *([str(args.data)] if args.data else []),
               "--out", str(cache), "--profile", args.profile]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    warm_cli = time.perf_counter() - start
    rows.append({"what": "warm: tmdafm precompute (new process)", "seconds": warm_cli,
                 "status": f"budget 10 s, {'OK' if warm_cli <= 10 else 'OVER'}"})

    start = time.perf_counter()
    files = read_everything(cache)
    naive = time.perf_counter() - start
    rows.append({"what": f"straightforward check: read all {files} files", "seconds": naive,
                 "status": f"warm check is {naive / warm:.1f}x faster"})

    records = read_record(cache)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2 ** 20
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"store size {size:.0f} MiB; steps recorded: {sum(s in records for s in STEPS)}/{len(STEPS)}")
    for task in ("mtc", "mtl"):
        metrics = cache / "runs" / task / "metrics.json"
        if metrics.is_file():
            document = json.loads(metrics.read_text())
            print(f"{task}: test accuracy {100 * document['accuracy']['test']['mean']:.1f} %, macro-F1 "
                  f"{100 * document['f1_macro']['test']['mean']:.1f} % (mean over {document['folds']} folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

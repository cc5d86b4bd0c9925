"""Training throughput and single-image prediction latency of the training engine on this machine.

Training: images per second of ResNet18 training steps (forward, backward, Adam) at 128 and 224 px, batch 32,
class-balanced sampling and random H/V flips, comparing

* ``engine``: :mod:`tmdafm_core.training` (images preloaded once as one tensor, batched tensor flips and
  normalisation, channels-last model and inputs), and
* ``straightforward``: a torchvision-tutorial loop: a ``Dataset`` that reads each file per sample and applies PIL
  transforms (resize, flips, to-tensor, 3 channels, normalise), a ``DataLoader`` with a ``WeightedRandomSampler``,
  the model in the default memory layout.

Both run the same model, optimiser, batch size and number of steps; the engine's one-off preloading time is
reported separately (seconds to read and resize the 1026 images of the paper's data set once). ``engine bf16``
is the engine with ``precision="bf16"`` (CPU autocast), the straightforward loop stays float32.

Prediction: wall time of ``predict(run, [one 256 px image], cam=True)`` with a ResNet18 run (median of repeats).

Usage::

    python benchmarks/bench_training.py [--steps 3] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tmdafm_core.data import LabelSpace, load_image, read_dataset
from tmdafm_core.data.synthetic import write_synthetic_dataset
from tmdafm_core.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from tmdafm_core.training import (
    FoldData,
    InputBatches,
    TrainConfig,
    epoch_order,
    fit_fold,
    load_data,
    load_run,
    predict,
    save_checkpoint,
    train_one_epoch,
)

BATCH = 32
PAPER_IMAGES = 1026
clock = time.perf_counter  # --clock cpu: time.process_time with one thread, robust against other work


def engine_rate(manifest, labels, size: int, steps: int, precision: str = "fp32") -> tuple[float, float]:
    """(images/s of training steps, seconds to preload the manifest) for the engine."""
    start = clock()
    stored = load_data(manifest, image_size=size)
    preload_s = clock() - start
    class_index = np.array([labels.class_index(m) for m in manifest["material"]])
    torch.manual_seed(0)
    model = build_model("resnet18", len(labels.classes)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=7.5e-5)
    batches = InputBatches(stored, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=torch.device("cpu"))
    targets = torch.as_tensor(class_index)
    generator = torch.Generator().manual_seed(0)
    common = dict(task="mtc", element_matrix=None, batch_size=BATCH, flip_generator=generator,
                  n_classes=len(labels.classes), precision=precision)
    order = epoch_order(np.arange(len(manifest)), class_index, weighted=True, generator=generator)
    train_one_epoch(model, optimizer, nn.CrossEntropyLoss(), batches, targets, class_index, order[:BATCH],
                    **common)  # warm-up: allocator, kernels
    n = steps * BATCH
    order = np.resize(order, n)
    start = clock()
    train_one_epoch(model, optimizer, nn.CrossEntropyLoss(), batches, targets, class_index, order, **common)
    return n / (clock() - start), preload_s


def straightforward_rate(manifest, labels, size: int, steps: int) -> float:
    """Images/s of the textbook loop: per-sample file reads and PIL transforms through a DataLoader."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.Grayscale(num_output_channels=3),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])

    class Images(Dataset):
        def __len__(self):
            return len(manifest)

        def __getitem__(self, i):
            image, _ = load_image(manifest["path"].iloc[i])
            pil = Image.fromarray(np.round(image * 255).astype(np.uint8))
            return transform(pil), labels.class_index(manifest["material"].iloc[i])

    counts = manifest["material"].value_counts()
    weights = [1.0 / counts[m] for m in manifest["material"]]
    n = steps * BATCH
    sampler = WeightedRandomSampler(weights, num_samples=n + BATCH, replacement=True,
                                    generator=torch.Generator().manual_seed(0))
    loader = DataLoader(Images(), batch_size=BATCH, sampler=sampler)
    torch.manual_seed(0)
    model = build_model("resnet18", len(labels.classes))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=7.5e-5)
    criterion = nn.CrossEntropyLoss()
    start = None
    for step, (x, y) in enumerate(loader):
        if step == 1:  # the first batch is the warm-up, as for the engine
            start = clock()
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return n / (clock() - start)


def prediction_latency(manifest, labels, tmp: Path, repeats: int) -> tuple[float, float]:
    """(best, median) seconds of predict(run, [one 256 px image], cam=True) with a ResNet18 run at 256 px."""
    config = TrainConfig(weights="none", epochs=1, folds=2, image_size=256)
    run_dir = tmp / "run"
    run_dir.mkdir()
    few = manifest.iloc[:8].reset_index(drop=True)
    class_index = np.array([labels.class_index(m) for m in few["material"]])
    data = FoldData(load_data(few, image_size=256), class_index, labels,
                    {"train": np.arange(6), "val": np.arange(6, 8), "test": np.arange(6, 8)}, image_size=256)
    checkpoint = fit_fold(data, config, 0)
    save_checkpoint(checkpoint, run_dir / "fold0.pt")
    run = load_run(run_dir, fold=0)
    path = manifest["path"].iloc[0]
    predict(run, [path], cam=True)  # warm-up
    times = []
    for _ in range(repeats * 5):
        start = clock()
        predict(run, [path], cam=True)
        times.append(clock() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps of 32 images per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (best is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time with one torch thread, which other "
                             "processes on the machine do not inflate (figures are then per core)")
    args = parser.parse_args()
    global clock
    if args.clock == "cpu":
        clock = time.process_time
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_dataset(tmp / "data", n=96, size=256, seed=0)
        manifest = read_dataset(tmp / "data")
        labels = LabelSpace.from_materials(manifest["material"])
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, ResNet18, "
              f"batch {BATCH}, {args.steps} timed steps; best of {args.repeats} interleaved repeats")
        print(f"{'size':>5} {'straightforward':>16} {'engine fp32':>12} {'ratio':>6} {'engine bf16':>12} {'ratio':>6} "
              f"{'preload s/1026':>15}   (training images/s)")
        for size in (128, 224):
            plain, fp32, bf16, preload = [], [], [], []
            for _ in range(args.repeats):
                plain.append(straightforward_rate(manifest, labels, size, args.steps))
                rate, seconds = engine_rate(manifest, labels, size, args.steps, "fp32")
                fp32.append(rate)
                preload.append(seconds * PAPER_IMAGES / len(manifest))
                bf16.append(engine_rate(manifest, labels, size, args.steps, "bf16")[0])
            base = max(plain)
            print(f"{size:>5} {base:>16.1f} {max(fp32):>12.1f} {max(fp32) / base:>6.2f} {max(bf16):>12.1f} "
                  f"{max(bf16) / base:>6.2f} {min(preload):>15.1f}")
        best, median = prediction_latency(manifest, labels, tmp, args.repeats)
        print(f"predict one 256 px image with ResNet18 + CAM: best {best:.3f} s, median {median:.3f} s "
              "(target <= 0.3 s)")

if __name__ == "__main__":
    main()

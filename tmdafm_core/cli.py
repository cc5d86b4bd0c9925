"""The ``tmdafm`` command: parses arguments, calls the library, prints.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its options and ``_run_<name>(args)`` does the
work by calling ``tmdafm_core`` functions. Library errors that describe bad input (``ValueError``, ``OSError``)
become a one-line message on stderr and exit status 2; nothing here prints a traceback to the user.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _strict_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="treat a skipped (unreadable or unparseable) file as an error")
    _scan_options(parser)


def _scan_options(parser: argparse.ArgumentParser) -> None:
    """How instrument files (.spm, .gwy, ...) become images: levelled, then the central crop or the whole scan."""
    parser.add_argument("--crop-um", type=float, default=1.0, metavar="UM",
                        help="instrument files: side of the central crop taken after levelling (default: 1, the "
                             "paper's 1 x 1 um)")
    parser.add_argument("--no-crop", action="store_true", help="instrument files: use whole (levelled) scans")


def _crop(args) -> float | None:
    if args.no_crop:
        return None
    if not args.crop_um > 0:
        raise ValueError(f"--crop-um must be positive, got {args.crop_um}")
    return float(args.crop_um)


def _feature_table_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Column choices of a feature/embedding table (read_feature_table guesses the ones not given)."""
    parser.add_argument("--sample-col", help=f"{prefix}sample-id column (default: guessed)")
    parser.add_argument("--label-col", help=f"{prefix}material column (default: guessed)")
    parser.add_argument("--feature-cols", type=lambda s: [c for c in s.split(",") if c],
                        help=f"{prefix}comma list of feature columns, or one array column (default: guessed)")


def _report_skipped(manifest) -> None:
    for path, reason in manifest.attrs.get("skipped", []):
        _say(f"skipped {path}: {reason}")


# --- info -------------------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="counts per class x split, samples, image sizes; checks the data; for one "
                                    "instrument file: its channels, size and the crop it stands for")
    p.add_argument("data", type=Path, help="data set: TMD-AFM TIFF folder, class folders, manifest CSV, image folder, "
                                           "a folder of instrument files, or one instrument file")
    _strict_flag(p)


def _scan_summary(path: Path) -> str:
    from tmdafm_core.data.scans import crop_scan, height_channel, list_channels, read_scan

    channels = list_channels(path)
    # Read once: the channel just listed (None lets read_scan refuse a file without a height channel).
    scan = read_scan(path, channel=height_channel(channels))
    width_um, height_um = scan.size_um
    lines = [f"{path}: {scan.format} file, channels: {', '.join(channels)}", f"height channel: {scan.channel}",
             f"scan: {scan.height_nm.shape[1]} x {scan.height_nm.shape[0]} px, {width_um:.3g} x {height_um:.3g} um, "
             f"{scan.pixel_size_nm:.4g} nm/px"]
    try:
        crop = crop_scan(scan)[0]
        box = crop.provenance
        lines.append(f"as data: levelled ({box['levelling']}), central crop x {box['crop_x0_um']:.3g}-"
                     f"{box['crop_x1_um']:.3g} um, y {box['crop_y0_um']:.3g}-{box['crop_y1_um']:.3g} um, "
                     f"{crop.height_nm.shape[1]} px a side")
    except ValueError as exc:
        lines.append(f"as data: not usable with the defaults: {exc}")
    return "\n".join(lines)


def _run_info(args) -> int:
    from tmdafm_core.data import dataset_summary, read_dataset
    from tmdafm_core.data.scans import is_raw_scan

    if args.data.is_file() and is_raw_scan(args.data):
        print(_scan_summary(args.data))
        return 0
    manifest = read_dataset(args.data, strict=args.strict, crop_um=_crop(args))
    _report_skipped(manifest)
    print(dataset_summary(manifest))
    return 0


# --- prepare ----------------------------------------------------------------------------------------------------

def _add_prepare(sub) -> None:
    from tmdafm_core.data.levelling import PIPELINES

    p = sub.add_parser("prepare", help="level and crop a folder of instrument files (.spm, .gwy, .ibw, .jpk, ...) "
                                       "into TIFFs with manifest.csv and provenance")
    p.add_argument("raw", type=Path, help="folder of instrument files (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="output folder (new, empty, or an earlier prepare output)")
    p.add_argument("--tile", action="store_true", help="every non-overlapping crop (--crop-um) of each scan instead "
                                                       "of the central one (tiles share the scan's sample id)")
    p.add_argument("--channel", help="channel name (default: the height channel; `tmdafm info FILE` lists them)")
    p.add_argument("--levelling", choices=sorted(PIPELINES), default="default",
                   help="levelling pipeline (default: plane, row medians, scars, masked re-levelling, zero median)")
    p.add_argument("--labels", type=Path, metavar="CSV", help="columns source, material, sample_id[, split] "
                                                              "(default: labels from the file names)")
    _strict_flag(p)


def _run_prepare(args) -> int:
    from tmdafm_core.data.prepare import prepare_folder

    if args.no_crop and args.tile:
        raise ValueError("--tile cuts crops and --no-crop keeps whole scans: give one of them")
    manifest = prepare_folder(args.raw, args.out, crop_um=_crop(args), tile=args.tile,
                              channel=args.channel, levelling=args.levelling, labels=args.labels,
                              strict=args.strict)
    for path, reason in manifest.attrs["skipped"]:
        _say(f"skipped {path}: {reason}")
    print(f"wrote {len(manifest)} image(s) from {manifest['source_file'].nunique()} scan(s) to {args.out} "
          f"(manifest.csv records source file, channel, levelling and crop box)")
    return 0


# --- synth ------------------------------------------------------------------------------------------------------

def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic TMD-AFM-layout data set with ground truth (manifest.csv)")
    p.add_argument("out", type=Path, help="output folder (new, empty, or a previous synth output to overwrite)")
    p.add_argument("--n", type=int, default=1026, help="total number of images (default: 1026, the real data set)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels; every crop spans 1 um (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--preview", type=Path, metavar="PNG", help="also write a labelled montage of the images")


def _run_synth(args) -> int:
    from tmdafm_core.data.synthetic import write_synthetic_dataset

    manifest = write_synthetic_dataset(args.out, n=args.n, size=args.size, seed=args.seed, preview=args.preview,
                                       progress=True)
    counts = manifest.groupby(["material", "split"], sort=False).size().unstack(fill_value=0)
    print(f"wrote {len(manifest)} images of {manifest['sample_id'].nunique()} samples to {args.out}")
    print(counts.to_string())
    if args.preview is not None:
        print(f"preview: {args.preview}")
    return 0


# --- train / extract / train-features / predict ----------------------------------------------------------------

def _comma_list(text: str) -> list[str]:
    """argparse type of a comma-separated list: its stripped, non-empty parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _fold_choice(text: str):
    """argparse type of --fold: ``best``, ``all`` (where a command takes it) or a fold number."""
    if text in ("best", "all"):
        return text
    try:
        fold = int(text)
    except ValueError:
        fold = -1
    if fold < 0:
        raise argparse.ArgumentTypeError(f"takes a fold number (0, 1, ...) or best, got {text!r}")
    return fold


def _image_side(text: str) -> int:
    """argparse type of --image-size: a whole number of pixels (:func:`tmdafm_core.data.images.check_input_side`)."""
    from tmdafm_core.data.images import MAX_INPUT_PX, MIN_SIDE_PX, check_input_side

    try:
        return check_input_side(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a side in pixels from {MIN_SIDE_PX} to {MAX_INPUT_PX}, "
                                         f"got {text!r}") from None


def _number_list(kind):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") \
                from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values
    return parse


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed when it holds the same run)")
    p.add_argument("--task", choices=("mtc", "mtl"), default="mtc",
                   help="mtc: one material per image; mtl: element presence (default: mtc)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per fold (default: 60)")
    p.add_argument("--lr", type=_number_list(float), default=[7.5e-5],
                   help="Adam learning rate; a comma list runs a grid search (default: 7.5e-5)")
    p.add_argument("--batch-size", type=_number_list(int), default=[32],
                   help="images per batch; a comma list runs a grid search (default: 32)")
    p.add_argument("--dropout", type=_number_list(float), default=[0.0],
                   help="dropout of the head; a comma list runs a grid search (default: 0)")
    p.add_argument("--select", choices=("f1", "paper"), default="f1",
                   help="best epoch: f1 = best val macro-F1, ties lower val loss; paper = val F1 and loss both "
                        "at least as good (default: f1)")
    p.add_argument("--no-weighted-sampler", dest="weighted_sampler", action="store_false",
                   help="plain shuffling instead of class-balanced sampling")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="held-out share of samples when the data marks no test set (default: 0.1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast) (default: cpu)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "native"), default="auto",
                   help="auto: bf16 autocast on GPUs, float32 on CPUs; native: bf16 also on CPUs that compute it in "
                        "hardware (AVX512-BF16/AMX), float32 on others; bf16: always (default: auto)")
    p.add_argument("--schedule", choices=("constant", "warmup-cosine"), default="constant",
                   help="learning rate: constant (the paper) or warmup-cosine (default: constant)")
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adam",
                   help="adam (weight decay as L2, the paper) or adamw (decoupled decay) (default: adam)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="weight decay (train-features: with --no-tune) (default: 0)")
    p.add_argument("--ema-decay", type=float, default=0.0,
                   help="validate and keep an exponential moving average of the weights, updated per step with "
                        "this decay after the warm-up (e.g. 0.98 for ~300 steps; smooths a high learning rate's "
                        "epoch-to-epoch jumps); 0: the raw weights, as the paper (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, initialisation, sampling, flips (default: 0)")
    p.add_argument("--dask", metavar="ADDR", help="run the folds as tasks on this Dask scheduler")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="train although some images repeat others (same file or identical content)")


def _fit(data, args, **model_options) -> int:
    from tmdafm_core.training import format_metrics, grid_search

    options = dict(task=args.task, folds=args.folds, epochs=args.epochs, device=args.device,
                   precision=args.precision, schedule=args.schedule, optimizer=args.optimizer,
                   weight_decay=args.weight_decay, ema_decay=args.ema_decay, seed=args.seed,
                   select=args.select, weighted_sampler=args.weighted_sampler, test_fraction=args.test_fraction,
                   dask_address=args.dask, progress=True, allow_duplicates=args.allow_duplicates, **model_options)
    if len(args.lr) * len(args.dropout) * len(args.batch_size) > 1 and not model_options.get("tune"):
        table = grid_search(data, args.out, lr=args.lr, dropout=args.dropout, batch_size=args.batch_size, **options)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"grid: {args.out / 'grid.csv'}")
        return 0
    from tmdafm_core.training import cross_validate

    metrics = cross_validate(data, args.out, lr=args.lr[0], dropout=args.dropout[0], batch_size=args.batch_size[0],
                             **options)
    print(format_metrics(metrics))
    print(f"run: {args.out}")
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet18", help="resnet18|34|50|101|152 (default: resnet18)")
    p.add_argument("--weights", default="imagenet-v1",
                   help="imagenet-v1, imagenet-v2 (ResNet50/101/152), none (scratch), or a .pth state dict / run "
                        "checkpoint; ImageNet files come from $TORCH_HOME/hub/checkpoints (default: imagenet-v1)")
    p.add_argument("--image-size", type=_image_side, help="model input side in px (default: the images' size if all "
                                                  "equal and square, else 224)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune (or train from scratch) a ResNet with grouped cross-validation")
    p.add_argument("data", type=Path, help="labelled data set (TMD-AFM folder, class folders, manifest CSV)")
    _model_options(p)
    _training_options(p)
    _strict_flag(p)


def _run_train(args) -> int:
    from tmdafm_core.data import read_dataset

    manifest = read_dataset(args.data, strict=args.strict, crop_um=_crop(args))
    _report_skipped(manifest)
    return _fit(manifest, args, arch=args.arch, weights=args.weights, image_size=args.image_size)


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a ResNet backbone on unlabelled AFM images, for --weights",
                       description="Self-supervised (contrastive) pretraining on a folder of unlabelled images or "
                                   "instrument files, or on a synthetic corpus from the generator's whole parameter "
                                   "space (--synthetic N; it also allows --objective parameters). The output is a "
                                   "torchvision state dict: `tmdafm train ... --weights BACKBONE.pt`.")
    p.add_argument("data", type=Path, nargs="?", help="folder of unlabelled images / instrument files")
    p.add_argument("--out", type=Path, required=True, metavar="BACKBONE.pt", help="backbone file to write")
    p.add_argument("--synthetic", type=int, metavar="N", help="pretrain on N synthetic images instead of DATA")
    p.add_argument("--objective", choices=("contrastive", "parameters"), default="contrastive",
                   help="contrastive (SimCLR, any images) or parameters (regress the generator's physical "
                        "parameters; --synthetic only) (default: contrastive)")
    p.add_argument("--arch", default="resnet18", help="torchvision ResNet (default: resnet18)")
    p.add_argument("--image-size", type=int, default=64, help="input side in pixels (default: 64)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the images (default: 10)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of corpus, initialisation and views (default: 0)")
    _scan_options(p)


def _run_pretrain(args) -> int:
    from tmdafm_core.pretrain import (
        pretrain_backbone,
        read_unlabelled,
        save_backbone,
        synthetic_corpus,
        unlabelled_images,
    )

    if (args.data is None) == (args.synthetic is None):
        raise ValueError("give either DATA (a folder of unlabelled images) or --synthetic N, not both or neither")
    truth = None
    if args.synthetic is not None:
        images, truth = synthetic_corpus(args.synthetic, image_size=args.image_size, seed=args.seed,
                                         jobs=os.cpu_count() or 1)
    else:
        if args.objective == "parameters":
            raise ValueError("--objective parameters needs the generator's parameters: use it with --synthetic N")
        images, problems = read_unlabelled(unlabelled_images(args.data), image_size=args.image_size,
                                           crop_um=_crop(args))
        for line in problems:
            _say(line)
    _say(f"pretraining {args.arch} on {len(images)} images ({args.objective}, {args.epochs} epochs)")
    result = pretrain_backbone(images, arch=args.arch, objective=args.objective, truth=truth, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, device=args.device, seed=args.seed,
                               progress=lambda _message, epoch, total: _say(f"epoch {epoch}/{total}"))
    _say("loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in result["history"]))
    save_backbone(result, args.out)
    print(f"wrote {args.out} ({args.arch}, {result['objective']}, {result['seconds']:.0f} s); fine-tune from it with "
          f"`tmdafm train DATA --weights {args.out} --arch {args.arch}`")
    return 0


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="pooled features of a frozen backbone per image (feature-extraction mode)")
    p.add_argument("data", type=Path, help="data set (any supported source)")
    p.add_argument("--out", type=Path, required=True, metavar="TABLE", help="output .parquet or .csv")
    _model_options(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    _strict_flag(p)


def _run_extract(args) -> int:
    from tmdafm_core.data import read_dataset
    from tmdafm_core.training import extract, write_table

    if args.out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{args.out}: output table must end in .parquet or .csv")
    manifest = read_dataset(args.data, strict=args.strict, crop_um=_crop(args))
    _report_skipped(manifest)
    table = extract(manifest, arch=args.arch, weights=args.weights, image_size=args.image_size, device=args.device,
                    batch_size=args.batch_size, progress=True)
    write_table(table, args.out)
    n_features = sum(str(c).startswith("f") and str(c)[1:].isdigit() for c in table.columns)
    print(f"wrote {len(table)} images x {n_features} features to {args.out}")
    return 0


def _add_train_features(sub) -> None:
    p = sub.add_parser("train-features", help="train the paper's MLP head on a feature table, cross-validated",
                       description="By default each fold first chooses lr, weight decay and dropout on an inner "
                                   "grouped split of its own training images (the paper grid-searched its MLP per "
                                   "fold); --no-tune trains with --lr/--dropout/--weight-decay as given.")
    p.add_argument("table", type=Path, help="feature table (.parquet, .csv, or a trusted .pkl)")
    _feature_table_options(p)
    _training_options(p)
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="no inner grid search per fold (default: tune lr in 1e-3,3e-4,1e-4, weight decay in 0,1e-3, "
                        "dropout in 0,0.5)")


def _run_train_features(args) -> int:
    from tmdafm_core.data import read_feature_table

    table = read_feature_table(args.table, sample_col=args.sample_col, label_col=args.label_col,
                               feature_cols=args.feature_cols)
    for note in table.guessed:
        _say(note)
    if args.tune:
        return _fit(table, args, tune=True)
    return _fit(table, args)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="material and class/element probabilities per image, one row per image")
    p.add_argument("run", type=Path, help="run directory written by `tmdafm train`")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--fold", type=_fold_choice, default="all",
                   help="all: average the probabilities of every fold model and report their agreement (columns "
                        "agreement, spread); best: the fold with the best validation macro-F1; or a fold number "
                        "(default: all)")
    p.add_argument("--cam", type=Path, metavar="OUTDIR", help="write class-activation-map overlays (PNG) here")
    p.add_argument("--cam-kind", choices=("paper", "grad"), default="paper",
                   help="paper: summed last feature maps; grad: Grad-CAM of the predicted class (default: paper)")
    p.add_argument("--out", type=Path, metavar="CSV", help="also write the table to this CSV file")
    p.add_argument("--pixel-size-nm", type=float,
                   help="nm per pixel for every image (default: the files' own; an image without one, e.g. a PNG, "
                        "gets no field-of-view check in its novelty)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    _strict_flag(p)


def _scale_reason(run, result) -> str:
    """How many unfamiliar images are at another scale than the training images, for predict's summary line."""
    from tmdafm_core.novelty import SCALE_TOLERANCE, field_of_view_text, scale_novelty

    trained = (run.novelty or {}).get("field_of_view_nm")
    if trained is None:
        return ""
    scaled = int(((scale_novelty(trained, result.field_of_view_nm) > 1) & result.unfamiliar).sum())
    return (f"; {scaled} of them because their field of view is more than {SCALE_TOLERANCE}x outside the training "
            f"images' ({field_of_view_text(trained)})") if scaled else ""


def _run_predict(args) -> int:
    import numpy as np
    from PIL import Image

    from tmdafm_core.cam import overlay
    from tmdafm_core.data import load_image
    from tmdafm_core.store import write_atomic
    from tmdafm_core.training import load_ensemble, load_run, predict, predict_ensemble

    if args.pixel_size_nm is not None and not args.pixel_size_nm > 0:
        raise ValueError(f"--pixel-size-nm must be positive, got {args.pixel_size_nm}")
    options = dict(cam=args.cam_kind if args.cam else False, on_error="raise" if args.strict else "skip",
                   crop_um=_crop(args), pixel_size_nm=args.pixel_size_nm)
    if args.fold == "all":
        runs = load_ensemble(args.run, device=args.device)
        result = predict_ensemble(runs, [str(p) for p in args.images], **options)
    else:
        runs = [load_run(args.run, args.fold, device=args.device)]
        result = predict(runs[0], [str(p) for p in args.images], **options)
    for path, reason in result.skipped:
        _say(f"skipped {path}: {reason}")
    for note in result.notes:
        _say(note)
    table = result.to_frame().to_csv(index=False, float_format="%.4f")
    print(table, end="")
    if args.out:
        write_atomic(args.out, lambda tmp: tmp.write_text(table))
        _say(f"predictions: {args.out}")
    flagged = int(result.unfamiliar.sum())
    if flagged:
        _say(f"{flagged} of {len(result.images)} images are unlike the training images (unfamiliar): their "
             "predictions are unreliable" + _scale_reason(runs[0], result))
    if args.cam:
        args.cam.mkdir(parents=True, exist_ok=True)
        for path, heat in zip(map(Path, result.images), result.cams, strict=True):
            image, _ = load_image(path, crop_um=options["crop_um"])
            target = args.cam / f"{path.stem}_cam.png"
            Image.fromarray(overlay(image, heat)).save(target)
            Image.fromarray(np.round(heat * 255).astype(np.uint8)).save(args.cam / f"{path.stem}_heat.png")
        _say(f"class activation maps: {args.cam}")
    return 0


# --- import-model -----------------------------------------------------------------------------------------------

def _add_import_model(sub) -> None:
    p = sub.add_parser("import-model", help="a published / paper-layout state dict as one of our run directories",
                       description="Reads a torchvision ResNet state dict with the paper's head (fc.0 Linear(in, 100), "
                                   "fc.3 Linear(100, n)) or a plain fc, and writes a run directory that predict, "
                                   "latent and load_run use. Preprocessing as the paper: 8-bit images / 255, ImageNet "
                                   "mean/std, no resize unless --image-size.")
    p.add_argument("state_dict", type=Path, metavar="STATE_DICT", help="file written by torch.save(model.state_dict())")
    p.add_argument("--arch", required=True, help="resnet18|34|50|101|152 the state dict belongs to")
    p.add_argument("--task", choices=("mtc", "mtl"), required=True, help="class (mtc) or element (mtl) outputs")
    p.add_argument("--classes", type=_comma_list, required=True,
                   help="comma list of materials in the model's output order (MtC), or the materials it tells "
                        "apart (MtL), e.g. MoS2,WS2,WSe2,MoSe2,Mo-WSe2")
    p.add_argument("--elements", type=_comma_list,
                   help="MtL output order (default: the classes' elements in the paper's order Mo,W,S,Se)")
    p.add_argument("--image-size", type=_image_side, help="resize images to this side (default: each image's own size)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory to write (new or empty)")


def _run_import_model(args) -> int:
    from tmdafm_core.imported import import_model

    run = import_model(args.state_dict, args.out, arch=args.arch, task=args.task, classes=args.classes,
                       elements=args.elements, image_size=args.image_size)
    print(f"imported {args.state_dict} as {args.arch} {args.task} ({', '.join(args.classes)}) -> {run}")
    return 0


# --- reproduce --------------------------------------------------------------------------------------------------

def _add_reproduce(sub) -> None:
    from tmdafm_core.profiles import PROFILES

    p = sub.add_parser("reproduce", help="every table and figure of the paper the inputs allow, with the paper's "
                                         "numbering (CSV, HTML, PNG/SVG/PDF, index.html, README.md)")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA",
                   help="labelled data set; default: the profile's synthetic demo set")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (a rerun resumes)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="demo",
                   help="demo: 2-core CPU, from scratch; paper: the study's settings (ResNet152 V2, 60 epochs, "
                        "5 folds; GPU); tiny: a minute (default: demo)")
    p.add_argument("--cache", type=Path, metavar="CACHE", help="store to fill and reuse (default: DIR/store)")
    p.add_argument("--descriptors", choices=("physical", "paper"), help="descriptor set (default: the profile's)")
    p.add_argument("--run", action="append", type=Path, metavar="RUN", dest="runs",
                   help="existing run (tmdafm train or import-model, e.g. the paper's published model) to use as the "
                        "MtC or MtL run instead of training; repeat for both")
    p.add_argument("--formats", type=_comma_list, default="png,svg,pdf",
                   help="static figure formats, drawn with Chromium when found; '' for HTML and CSV only "
                        "(default: png,svg,pdf)")


def _run_reproduce(args) -> int:
    from tmdafm_core.profiles import named_profile
    from tmdafm_core.reproduce import reproduce

    if args.data is not None and not args.data.exists():
        raise FileNotFoundError(f"{args.data}: no such file or folder; give a data set folder or manifest CSV")
    made, missing = reproduce(args.data, args.out, profile=named_profile(args.profile, descriptors=args.descriptors),
                              cache=args.cache, formats=tuple(args.formats), progress=True, runs=args.runs)
    for artifact in made:
        print(f"{artifact.key:20s} {artifact.title}")
    for key, reason in missing.items():
        print(f"{key:20s} not made: {reason}")
    print(f"index: {args.out / 'index.html'}; settings: {args.out / 'README.md'}")
    return 0


# --- latent -----------------------------------------------------------------------------------------------------

def _add_latent(sub) -> None:
    p = sub.add_parser("latent", help="embeddings, PCA/UMAP projections and the latent-vs-descriptor tables",
                       description="tmdafm latent RUN DATA --out DIR  (embeds DATA with a trained run) or "
                                   "tmdafm latent TABLE --out DIR  (any embedding/feature table).")
    p.add_argument("source", type=Path, metavar="RUN|TABLE",
                   help="run directory from `tmdafm train`, or an embedding table (.parquet, .csv, trusted .pkl)")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA",
                   help="data set to embed (with RUN only): images for an image run, a feature table for a "
                        "`train-features` run")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--features", type=Path, metavar="CSV",
                   help="physical descriptors (`tmdafm features` output), joined on `image`; enables the tables")
    p.add_argument("--method", choices=("pca", "umap"), default="pca",
                   help="pca: PCA only; umap: PCA plus 2-D and 3-D UMAP (seeded; ~10 s for 1k images) "
                        "(default: pca)")
    p.add_argument("--fold", type=_fold_choice, default="best",
                   help="fold model of RUN: a number or best (best validation macro-F1)")
    p.add_argument("--latent", choices=("pre-relu", "post-relu"), default="pre-relu",
                   help="RUN's latent features: the head's hidden outputs before its ReLU (the paper's) or after "
                        "(default: pre-relu)")
    p.add_argument("--n-components", type=int, default=10, help="principal components (default: 10)")
    p.add_argument("--pca-solver", default="full", choices=("full", "covariance_eigh", "randomized", "auto",
                                                            "incremental"),
                   help="full: exact SVD; for 100k+ images covariance_eigh (exact), randomized or incremental "
                        "(default: full)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the R intervals (default: 1000)")
    p.add_argument("--cv-folds", type=int, default=5, help="folds of the cross-validated regression R (default: 5)")
    p.add_argument("--cv-by-sample", action="store_true",
                   help="keep each sample's images in one cross-validation fold (stricter regression_r_cv)")
    p.add_argument("--gallery-size", type=int, default=24, help="images per percentile gallery (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of UMAP, bootstrap, folds and galleries (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, to embed with RUN (default: cpu)")
    _feature_table_options(p, prefix="TABLE: ")
    _strict_flag(p)


def _run_latent(args) -> int:
    from tmdafm_core.latent import (
        analyse,
        fit_projection,
        read_descriptors,
        run_embeddings,
        split_embeddings,
        write_latent_outputs,
    )

    if args.fold == "all":
        raise ValueError("--fold all averages predictions; a latent space is one fold's: give best or a number")
    if args.features is not None and not args.features.is_file():  # before the (long) embedding
        raise FileNotFoundError(f"{args.features}: no such descriptor table (--features); make it with "
                                "`tmdafm features DATA --out CSV`")
    if args.source.is_dir():
        if args.data is None:
            raise ValueError(f"{args.source} is a run directory: give the DATA to embed after it")
        _say(f"embedding {args.data} with {args.source} (fold {args.fold})")
        embeddings = run_embeddings(args.source, args.data, fold=args.fold, device=args.device, strict=args.strict,
                                    progress=True, latent=args.latent, crop_um=_crop(args))
        for path, reason in embeddings.attrs["skipped"]:
            _say(f"skipped {path}: {reason}")
        args.out.mkdir(parents=True, exist_ok=True)
        embeddings.to_parquet(args.out / "embeddings.parquet", index=False)
        _say(f"fold {embeddings.attrs['fold']}: {len(embeddings)} embeddings -> {args.out / 'embeddings.parquet'}")
    else:
        if args.data is not None:
            raise ValueError(f"{args.source} is a table, not a run directory: DATA is only used with a RUN")
        from tmdafm_core.data import read_feature_table

        embeddings = read_feature_table(args.source, sample_col=args.sample_col, label_col=args.label_col,
                                        feature_cols=args.feature_cols)
        for note in embeddings.guessed:
            _say(note)
    descriptors = read_descriptors(args.features) if args.features is not None else None
    values, _ = split_embeddings(embeddings)
    if args.method == "umap":
        _say(f"fitting PCA and 2-D/3-D UMAP of {len(values)} x {values.shape[1]} embeddings")
    projection = fit_projection(values, n_components=args.n_components, umap=args.method == "umap",
                                pca_solver=args.pca_solver, seed=args.seed)
    tables = analyse(embeddings, descriptors, projection=projection, seed=args.seed, n_boot=args.n_boot,
                     cv_folds=args.cv_folds, cv_by_sample=args.cv_by_sample, gallery_size=args.gallery_size)
    written = write_latent_outputs(args.out, tables, projection=projection)
    variance = tables["explained_variance"]
    print(f"{len(values)} images x {values.shape[1]} dims; {len(variance)} PCs explain "
          f"{100 * variance['cumulative'].iloc[-1]:.1f} % of the variance")
    if "table5" in tables:
        for note in tables["table5"].attrs.get("notes", []):
            _say(note)
        print(tables["table5"].iloc[:, :7].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


# --- features ---------------------------------------------------------------------------------------------------

def _add_features(sub) -> None:
    p = sub.add_parser("features", help="the 14 physical image descriptors per image, as a CSV table")
    p.add_argument("data", type=Path, help="data set (any supported source)")
    p.add_argument("--out", type=Path, required=True, metavar="CSV", help="output table: image + 14 feature columns")
    p.add_argument("--pixel-size-nm", type=float, help="nm per pixel for every image (default: from the files or "
                                                       "manifest, else 1 um across the image)")
    p.add_argument("--jobs", type=int, help="local worker processes (default: all cores)")
    p.add_argument("--dask", metavar="ADDR", help="compute on this Dask scheduler instead of local processes")
    p.add_argument("--cache", type=Path, help="artifact store folder (default: $TMDAFM_CACHE or ./cache)")
    p.add_argument("--paper-pixels", action="store_true",
                   help="the paper's raw pixel-based numbers and definitions instead of resolution-aware ones")
    _strict_flag(p)


def _run_features(args) -> int:
    from tmdafm_core.data import read_dataset
    from tmdafm_core.features import FEATURE_COLUMNS, compute_table

    if args.out.suffix.lower() != ".csv":
        raise ValueError(f"{args.out}: the feature table is written as CSV; give a file name ending in .csv")
    if args.pixel_size_nm is not None and not args.pixel_size_nm > 0:
        raise ValueError(f"--pixel-size-nm must be positive, got {args.pixel_size_nm}")
    manifest = read_dataset(args.data, strict=args.strict, crop_um=_crop(args))
    _report_skipped(manifest)
    if args.pixel_size_nm is not None:
        manifest = manifest.assign(pixel_size_nm=float(args.pixel_size_nm))
    table = compute_table(manifest, jobs=args.jobs, dask_address=args.dask, cache=args.cache, progress=True,
                          paper_pixels=args.paper_pixels, strict=args.strict)
    _report_skipped(table)
    if table.empty:
        raise ValueError(f"{args.data}: no image could be measured; first: {table.attrs['skipped'][0][1]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pixel_sizes = manifest.drop_duplicates("image").set_index("image")["pixel_size_nm"]
    table.insert(1, "pixel_size_nm", table["image"].map(pixel_sizes).to_numpy())
    table[["image", "pixel_size_nm", *FEATURE_COLUMNS]].to_csv(args.out, index=False)
    print(f"wrote {len(table)} images x {len(FEATURE_COLUMNS)} features to {args.out}")
    return 0


# --- sequential / compare-archs / ablation -----------------------------------------------------------------------

_TRAINING_FLAGS = ("profile", "epochs", "folds", "image_size", "lr", "batch_size", "dropout", "device", "seed",
                   "arch")


def _experiment_options(p: argparse.ArgumentParser, *, single_model: bool = True, out_required: bool = True) -> None:
    """Training options of the experiments; unset ones come from --profile, then from the engine's defaults."""
    p.add_argument("--out", type=Path, required=out_required, metavar="DIR",
                   help="experiment folder (resumed when rerun)")
    p.add_argument("--profile", choices=("demo", "paper"),
                   help="demo: ResNet18 from scratch, 32 px, 3 epochs, 2 folds, 1 thread (minutes on a CPU); paper: "
                        "native size, 60 epochs, 5 folds, ResNet152 with ImageNet V2 weights (ResNet18 V1 for the "
                        "ablation, as the paper's Table 2), cuda. Explicit options override it")
    if single_model:
        p.add_argument("--arch", help="resnet18|34|50|101|152 (default: resnet18)")
        p.add_argument("--weights", help="base weights: imagenet-v1, imagenet-v2, none, or a .pth / run checkpoint "
                                         "(default: imagenet-v1)")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: 60)")
    p.add_argument("--folds", type=int, help="cross-validation folds (default: 5)")
    p.add_argument("--image-size", type=_image_side, help="model input side in px (default: the images' own size)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 7.5e-5)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 32)")
    p.add_argument("--dropout", type=float, help="dropout of the head (default: 0)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, help="seed of split, cuts, initialisation, sampling, flips (default: 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --profile demo, else torch's)")
    _strict_flag(p)


def _experiment_setup(args, **model):
    from tmdafm_core.data import read_dataset
    from tmdafm_core.experiments import profile_options

    options = profile_options(args.profile, epochs=args.epochs, folds=args.folds, image_size=args.image_size,
                              lr=args.lr, batch_size=args.batch_size, dropout=args.dropout, device=args.device,
                              seed=args.seed, threads=args.threads, **model)
    manifest = read_dataset(args.data, strict=args.strict, crop_um=_crop(args))
    _report_skipped(manifest)
    return manifest, options


def _add_sequential(sub) -> None:
    p = sub.add_parser("sequential", help="add classes one at a time: ImageNet vs Sequential starting weights, with "
                                          "a training-volume sweep of the new class (paper Figs. 4-5)")
    p.add_argument("data", type=Path, help="labelled data set (TMD-AFM folder, class folders, manifest CSV)")
    p.add_argument("--order", default="MoS2,WS2,WSe2,MoSe2,Mo-WSe2",
                   help="classes in the order they are added, comma-separated (default: the paper's)")
    p.add_argument("--volumes", default="full,64,32,16,8",
                   help="training images of the newly added class: 'full' and/or numbers (default: full,64,32,16,8)")
    p.add_argument("--task", choices=("mtc", "mtl", "both"), default="mtc", help="(default: mtc)")
    p.add_argument("--modes", type=_comma_list, default="imagenet,sequential",
                   help="imagenet and/or sequential (default: both)")
    p.add_argument("--head", choices=("reset", "keep"), default="reset",
                   help="Sequential MtC stages: reset = a fresh output layer (the paper's), keep = the previous "
                        "stage's rows of the known classes (default: reset)")
    p.add_argument("--volume-mode", choices=("paper", "train-samples"), default="paper",
                   help="paper = N random train+validation images of the new class; train-samples = N training "
                        "images per fold, whole samples first (default: paper)")
    _experiment_options(p)


def _run_sequential(args) -> int:
    from tmdafm_core.experiments import RESULTS_NAME, parse_volumes, results_table, sequential_study

    volumes = parse_volumes(args.volumes)  # bad volumes fail before the data are read
    manifest, options = _experiment_setup(args, arch=args.arch, weights=args.weights)
    results = sequential_study(manifest, args.out, order=args.order, volumes=volumes, task=args.task,
                               modes=tuple(args.modes), progress=True, head=args.head,
                               volume_mode=args.volume_mode, **options)
    print("test macro-F1 (%), mean ± std over folds")
    print(results_table(results).to_string(index=False))
    print(f"results: {args.out / RESULTS_NAME}")
    return 0


def _add_compare_archs(sub) -> None:
    p = sub.add_parser("compare-archs", help="architectures x weight versions beside their ImageNet top-1, and MtC vs "
                                             "MtL on the same folds (paper Tables 3-4)")
    p.add_argument("data", type=Path, help="labelled data set")
    p.add_argument("--archs", type=_comma_list, default="resnet18,resnet34,resnet50,resnet101,resnet152",
                   help="comma-separated architectures (default: all five)")
    p.add_argument("--weights", type=_comma_list, default="imagenet-v1,imagenet-v2",
                   help="comma-separated weight versions: imagenet-v1, imagenet-v2, none, or paths; V2 is skipped "
                        "for ResNet18/34 (default: imagenet-v1,imagenet-v2)")
    p.add_argument("--task", choices=("mtc", "mtl", "both"), default="both", help="(default: both)")
    _experiment_options(p, single_model=False)


def _run_compare_archs(args) -> int:
    from tmdafm_core.experiments import ARCHITECTURES_NAME, compare_architectures, task_comparison

    manifest, options = _experiment_setup(args)
    for swept in ("arch", "weights"):  # the profile's single model gives way to the sweep
        options.pop(swept, None)
    table = compare_architectures(manifest, args.out, archs=args.archs, weights=args.weights, task=args.task,
                                  progress=True, **options)
    for note in table.attrs.get("skipped", []):
        _say(f"skipped: {note}")
    columns = ["arch", "weights", "imagenet_top1", "task", "accuracy_val_mean", "accuracy_test_mean", "f1_val_mean",
               "f1_test_mean"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if table["task"].nunique() > 1:
        print("MtC vs MtL (test)")
        print(task_comparison(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"table: {args.out / ARCHITECTURES_NAME}")
    return 0


def _add_ablation(sub) -> None:
    p = sub.add_parser("ablation", help="fine-tune vs feature-extraction MLP vs scratch on the same folds "
                                        "(paper Table 2)")
    p.add_argument("data", type=Path, nargs="?", help="labelled data set (with --out DIR)")
    p.add_argument("--store", type=Path, metavar="CACHE",
                   help="instead of DATA --out: the store's data set, trained as its MtC run (which is the "
                        "fine-tuning arm); written to CACHE/ablation, shown on the app's /performance page")
    p.add_argument("--task", choices=("mtc", "mtl"), default="mtc", help="(default: mtc)")
    _experiment_options(p, out_required=False)


def _run_ablation(args) -> int:
    from tmdafm_core.experiments import store_ablation
    from tmdafm_core.layout import ABLATION_NAME, StoreLayout

    if args.store is not None:
        extra = [f"--{name.replace('_', '-')}" for name in _TRAINING_FLAGS if getattr(args, name) is not None]
        extra += ["DATA"] * (args.data is not None) + ["--out"] * (args.out is not None)
        extra += ["--task mtl"] * (args.task != "mtc")
        if extra:
            raise ValueError(f"--store trains as the store's MtC run, on its data: drop {', '.join(extra)}")
        table = store_ablation(args.store, weights=args.weights, progress=True)
        out = StoreLayout(args.store).ablation
    else:
        if args.data is None or args.out is None:
            raise ValueError("give DATA and --out DIR, or --store CACHE")
        table, out = _ablation_from_data(args), args.out
    wide = table.pivot_table(index="mode", columns="split", values=["accuracy_mean", "f1_mean"], sort=False)
    print(wide.to_string(float_format=lambda v: f"{100 * v:.1f}"))
    print(f"table: {out / ABLATION_NAME}")
    return 0


def _ablation_from_data(args):
    from tmdafm_core.experiments import PAPER_ABLATION_MODEL, ablation_study

    model = {"arch": args.arch, "weights": args.weights}
    if args.profile == "paper":
        model = {key: value if value is not None else PAPER_ABLATION_MODEL[key] for key, value in model.items()}
    manifest, options = _experiment_setup(args, **model)
    return ablation_study(manifest, args.out, task=args.task, progress=True, **options)


# --- precompute -------------------------------------------------------------------------------------------------

def _profile_value(field):
    """argparse type of one Profile field (tuples as comma lists)."""
    def parse(text: str):
        if field.name in ("order", "volumes", "umap_dims"):
            parts = _comma_list(text)
            if field.name == "order":
                return tuple(parts)
            return tuple(part if part == "full" else int(part) for part in parts)
        kind = str(field.type)
        if "None" in kind and text.lower() == "none":
            return None
        if "float" in kind:
            return float(text)
        if "int" in kind:
            return int(text)
        return text
    return parse


def _add_precompute(sub) -> None:
    from dataclasses import fields

    from tmdafm_core.layout import STEPS
    from tmdafm_core.profiles import PROFILE_FLAGS, PROFILES, Profile
    from tmdafm_core.store import default_cache_dir

    p = sub.add_parser("precompute", help="build everything the app shows into a store (resumable; no DATA: the "
                                          "synthetic demo set)",
                       description="Steps: " + " -> ".join(STEPS) + ". Finished steps are skipped while their "
                                   "inputs and settings are unchanged and their files are whole.")
    p.add_argument("data", type=Path, nargs="?", metavar="DATA",
                   help="labelled data set (TMD-AFM folder, class folders, manifest CSV); default: synthetic demo")
    p.add_argument("--out", type=Path, default=default_cache_dir(), metavar="CACHE",
                   help="the store (default: $TMDAFM_CACHE or ./cache)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="demo",
                   help="demo: ResNet18 pretrained on synthetic scans, then fine-tuned, on a 2-core CPU (about "
                        "14 min for 1026 images); paper: the study's settings (ImageNet weights in the torchvision "
                        "cache, 60 epochs, 5 folds) for a GPU; "
                        "tiny: 80 images, 1 epoch, under a minute (tests). Options below override it")
    p.add_argument("--steps", type=_comma_list,
                   help="comma list of steps to run (with the steps they read); default: all")
    p.add_argument("--no-crop", action="store_true", help="instrument files in DATA: use whole (levelled) scans "
                                                          "instead of their central --crop-um")
    p.add_argument("--run", action="append", type=Path, metavar="RUN", dest="runs",
                   help="use this existing run (tmdafm train or import-model output) as the store's run of its task "
                        "instead of training one; repeat for MtC and MtL")
    group = p.add_argument_group("profile overrides")
    for field in fields(Profile):
        if field.name == "name":
            continue
        flag = PROFILE_FLAGS.get(field.name, "--" + field.name.replace("_", "-"))
        group.add_argument(flag, dest=f"profile_{field.name}", type=_profile_value(field), metavar="X",
                           help=f"{field.name} (profile default: {getattr(PROFILES['demo'], field.name)} in demo)")


def _run_precompute(args) -> int:
    import dataclasses

    from tmdafm_core.pipeline import format_summary, precompute
    from tmdafm_core.profiles import PROFILES

    overrides = {key[len("profile_"):]: value for key, value in vars(args).items()
                 if key.startswith("profile_") and value is not None}
    if args.no_crop:
        overrides["scan_crop_um"] = None
    profile = dataclasses.replace(PROFILES[args.profile], **overrides)
    if args.data is not None and not args.data.exists():
        raise FileNotFoundError(f"{args.data}: no such file or folder; give a data set folder or manifest CSV")
    results = precompute(args.out, args.data, profile=profile, progress=True, steps=args.steps, runs=args.runs)
    print(format_summary(results, args.out))
    return 0


# --- app --------------------------------------------------------------------------------------------------------

#: Environment variable naming the precompute profile an empty store is filled with (default "demo").
PROFILE_ENV = "TMDAFM_PROFILE"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def add_app_arguments(p) -> None:
    """The app's options, shared by ``tmdafm app`` and ``python app.py``."""
    from tmdafm_core.profiles import PROFILES
    from tmdafm_core.store import default_cache_dir

    p.add_argument("--cache", type=Path, default=default_cache_dir(),
                   help="artifact store (default: $TMDAFM_CACHE or ./cache; the demo fills an empty one)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST}, this "
                                                        "machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get(PROFILE_ENV, "demo"),
                   help=f"precompute profile an empty store is filled with (default: ${PROFILE_ENV} or demo; "
                        "demo: about 14 min on 2 CPU cores, tiny: about a minute, to try the app; paper: only "
                        "the data set and thumbnails, train with `tmdafm precompute` on a GPU)")
    p.add_argument("--descriptors", choices=("physical", "paper"), default="physical",
                   help="descriptor definitions an empty store is built with: physical (resolution-aware, per µm² "
                        "and nm) or paper (the paper's pixel-based definitions exactly) (default: physical)")
    p.add_argument("--debug", action="store_true", help="Dash dev tools and reloading (for development)")


def app_profile(args):
    """The precompute profile the app's options name: ``--profile``, with ``--descriptors`` when not the default."""
    from tmdafm_core.profiles import named_profile

    if args.descriptors == "physical":
        return args.profile
    return named_profile(args.profile, descriptors=args.descriptors)


def _add_app(sub) -> None:
    add_app_arguments(sub.add_parser("app", help="serve the browser app over a store (same as `python app.py`)"))


def app_script() -> Path:
    """The app's ``app.py``: beside the package in a source checkout (editable install), else the copy an installed
    wheel carries in ``tmdafm_core/_app/`` (with ``pages/`` and ``assets/`` beside it)."""
    package = Path(__file__).resolve().parent
    for script in (package.parent / "app.py", package / "_app" / "app.py"):
        if script.is_file() and (script.parent / "pages").is_dir():
            return script
    raise FileNotFoundError(f"{package}: the app (app.py, pages/, assets/) is not with this installation; reinstall "
                            "tmdafm (`pip install .`), or run `python app.py` in the source checkout")


def _load_app_module():
    import importlib.util

    script = app_script()
    if str(script.parent) not in sys.path:  # app.py imports pages/ beside it, whatever the working folder
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location("app", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module  # Dash finds the app's folder (pages/, assets/) through its module
    spec.loader.exec_module(module)
    return module


def _run_app(args) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    _load_app_module().serve(args.cache, host=args.host, port=args.port, debug=args.debug, profile=app_profile(args))
    return 0


# --- registry ---------------------------------------------------------------------------------------------------

_COMMANDS = {
    "info": (_add_info, _run_info),
    "prepare": (_add_prepare, _run_prepare),
    "synth": (_add_synth, _run_synth),
    "train": (_add_train, _run_train),
    "pretrain": (_add_pretrain, _run_pretrain),
    "extract": (_add_extract, _run_extract),
    "train-features": (_add_train_features, _run_train_features),
    "predict": (_add_predict, _run_predict),
    "import-model": (_add_import_model, _run_import_model),
    "reproduce": (_add_reproduce, _run_reproduce),
    "features": (_add_features, _run_features),
    "latent": (_add_latent, _run_latent),
    "app": (_add_app, _run_app),
    "precompute": (_add_precompute, _run_precompute),
    "sequential": (_add_sequential, _run_sequential),
    "compare-archs": (_add_compare_archs, _run_compare_archs),
    "ablation": (_add_ablation, _run_ablation),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmdafm",
        description="Classify AFM images of 2-D TMD films with fine-tuned ResNets and relate their latent space "
                    "to physical image descriptors.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = _COMMANDS[args.command]
    try:
        return run(args) or 0
    except KeyboardInterrupt:
        _say("tmdafm: interrupted")
        return 130
    except (ValueError, OSError) as exc:
        _say(f"tmdafm {args.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

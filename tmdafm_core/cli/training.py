"""``tmdafm train``, ``pretrain``, ``extract``, ``train-features``, ``predict`` and ``import-model``: one run
and what is done with it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .options import (
    comma_list,
    crop,
    feature_table_options,
    fold_choice,
    image_side,
    number_list,
    report_skipped,
    say,
    scan_options,
    strict_flag,
)


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="run directory (resumed when it holds the same run)")
    p.add_argument("--task", choices=("mtc", "mtl"), default="mtc",
                   help="mtc: one material per image; mtl: element presence (default: mtc)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per fold (default: 60)")
    p.add_argument("--lr", type=number_list(float), default=[7.5e-5],
                   help="Adam learning rate; a comma list runs a grid search (default: 7.5e-5)")
    p.add_argument("--batch-size", type=number_list(int), default=[32],
                   help="images per batch; a comma list runs a grid search (default: 32)")
    p.add_argument("--dropout", type=number_list(float), default=[0.0],
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
    p.add_argument("--image-size", type=image_side, help="model input side in px (default: the images' size if all "
                                                  "equal and square, else 224)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune (or train from scratch) a ResNet with grouped cross-validation")
    p.add_argument("data", type=Path, help="labelled data set (TMD-AFM folder, class folders, manifest CSV)")
    _model_options(p)
    _training_options(p)
    strict_flag(p)


def _run_train(args) -> int:
    from tmdafm_core.data import read_dataset

    manifest = read_dataset(args.data, strict=args.strict, crop_um=crop(args))
    report_skipped(manifest)
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
    scan_options(p)


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
                                           crop_um=crop(args))
        for line in problems:
            say(line)
    say(f"pretraining {args.arch} on {len(images)} images ({args.objective}, {args.epochs} epochs)")
    result = pretrain_backbone(images, arch=args.arch, objective=args.objective, truth=truth, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, device=args.device, seed=args.seed,
                               progress=lambda _message, epoch, total: say(f"epoch {epoch}/{total}"))
    say("loss per epoch: " + ", ".join(f"{loss:.4f}" for loss in result["history"]))
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
    strict_flag(p)


def _run_extract(args) -> int:
    from tmdafm_core.data import read_dataset
    from tmdafm_core.training import extract, write_table

    if args.out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{args.out}: output table must end in .parquet or .csv")
    manifest = read_dataset(args.data, strict=args.strict, crop_um=crop(args))
    report_skipped(manifest)
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
    feature_table_options(p)
    _training_options(p)
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="no inner grid search per fold (default: tune lr in 1e-3,3e-4,1e-4, weight decay in 0,1e-3, "
                        "dropout in 0,0.5)")


def _run_train_features(args) -> int:
    from tmdafm_core.data import read_feature_table

    table = read_feature_table(args.table, sample_col=args.sample_col, label_col=args.label_col,
                               feature_cols=args.feature_cols)
    for note in table.guessed:
        say(note)
    if args.tune:
        return _fit(table, args, tune=True)
    return _fit(table, args)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="material and class/element probabilities per image, one row per image")
    p.add_argument("run", type=Path, help="run directory written by `tmdafm train`")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--fold", type=fold_choice, default="all",
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
    strict_flag(p)


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
                   crop_um=crop(args), pixel_size_nm=args.pixel_size_nm)
    if args.fold == "all":
        runs = load_ensemble(args.run, device=args.device)
        result = predict_ensemble(runs, [str(p) for p in args.images], **options)
    else:
        runs = [load_run(args.run, args.fold, device=args.device)]
        result = predict(runs[0], [str(p) for p in args.images], **options)
    for path, reason in result.skipped:
        say(f"skipped {path}: {reason}")
    for note in result.notes:
        say(note)
    table = result.to_frame().to_csv(index=False, float_format="%.4f")
    print(table, end="")
    if args.out:
        write_atomic(args.out, lambda tmp: tmp.write_text(table))
        say(f"predictions: {args.out}")
    flagged = int(result.unfamiliar.sum())
    if flagged:
        say(f"{flagged} of {len(result.images)} images are unlike the training images (unfamiliar): their "
             "predictions are unreliable" + _scale_reason(runs[0], result))
    if args.cam:
        args.cam.mkdir(parents=True, exist_ok=True)
        for path, heat in zip(map(Path, result.images), result.cams, strict=True):
            image, _ = load_image(path, crop_um=options["crop_um"])
            target = args.cam / f"{path.stem}_cam.png"
            Image.fromarray(overlay(image, heat)).save(target)
            Image.fromarray(np.round(heat * 255).astype(np.uint8)).save(args.cam / f"{path.stem}_heat.png")
        say(f"class activation maps: {args.cam}")
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
    p.add_argument("--classes", type=comma_list, required=True,
                   help="comma list of materials in the model's output order (MtC), or the materials it tells "
                        "apart (MtL), e.g. MoS2,WS2,WSe2,MoSe2,Mo-WSe2")
    p.add_argument("--elements", type=comma_list,
                   help="MtL output order (default: the classes' elements in the paper's order Mo,W,S,Se)")
    p.add_argument("--image-size", type=image_side, help="resize images to this side (default: each image's own size)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory to write (new or empty)")


def _run_import_model(args) -> int:
    from tmdafm_core.imported import import_model

    run = import_model(args.state_dict, args.out, arch=args.arch, task=args.task, classes=args.classes,
                       elements=args.elements, image_size=args.image_size)
    print(f"imported {args.state_dict} as {args.arch} {args.task} ({', '.join(args.classes)}) -> {run}")
    return 0


#: Subcommands of this module: name -> (declare its options, run it).
COMMANDS = {
    "train": (_add_train, _run_train),
    "pretrain": (_add_pretrain, _run_pretrain),
    "extract": (_add_extract, _run_extract),
    "train-features": (_add_train_features, _run_train_features),
    "predict": (_add_predict, _run_predict),
    "import-model": (_add_import_model, _run_import_model),
}

"""``tmdafm reproduce``, ``latent``, ``features``, ``sequential``, ``compare-archs`` and ``ablation``: the
paper's analyses and experiments."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import comma_list, crop, feature_table_options, fold_choice, image_side, report_skipped, say, strict_flag

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
    p.add_argument("--formats", type=comma_list, default="png,svg,pdf",
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
    p.add_argument("--fold", type=fold_choice, default="best",
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
    feature_table_options(p, prefix="TABLE: ")
    strict_flag(p)


def _run_latent(args) -> int:
    from tmdafm_core.embeddings import fit_projection, run_embeddings, split_embeddings
    from tmdafm_core.latent import analyse, read_descriptors, write_latent_outputs

    if args.fold == "all":
        raise ValueError("--fold all averages predictions; a latent space is one fold's: give best or a number")
    if args.features is not None and not args.features.is_file():  # before the (long) embedding
        raise FileNotFoundError(f"{args.features}: no such descriptor table (--features); make it with "
                                "`tmdafm features DATA --out CSV`")
    if args.source.is_dir():
        if args.data is None:
            raise ValueError(f"{args.source} is a run directory: give the DATA to embed after it")
        say(f"embedding {args.data} with {args.source} (fold {args.fold})")
        embeddings = run_embeddings(args.source, args.data, fold=args.fold, device=args.device, strict=args.strict,
                                    progress=True, latent=args.latent, crop_um=crop(args))
        for path, reason in embeddings.attrs["skipped"]:
            say(f"skipped {path}: {reason}")
        args.out.mkdir(parents=True, exist_ok=True)
        embeddings.to_parquet(args.out / "embeddings.parquet", index=False)
        say(f"fold {embeddings.attrs['fold']}: {len(embeddings)} embeddings -> {args.out / 'embeddings.parquet'}")
    else:
        if args.data is not None:
            raise ValueError(f"{args.source} is a table, not a run directory: DATA is only used with a RUN")
        from tmdafm_core.data import read_feature_table

        embeddings = read_feature_table(args.source, sample_col=args.sample_col, label_col=args.label_col,
                                        feature_cols=args.feature_cols)
        for note in embeddings.guessed:
            say(note)
    descriptors = read_descriptors(args.features) if args.features is not None else None
    values, _ = split_embeddings(embeddings)
    if args.method == "umap":
        say(f"fitting PCA and 2-D/3-D UMAP of {len(values)} x {values.shape[1]} embeddings")
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
            say(note)
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
    strict_flag(p)


def _run_features(args) -> int:
    from tmdafm_core.data import read_dataset
    from tmdafm_core.features import FEATURE_COLUMNS, compute_table

    if args.out.suffix.lower() != ".csv":
        raise ValueError(f"{args.out}: the feature table is written as CSV; give a file name ending in .csv")
    if args.pixel_size_nm is not None and not args.pixel_size_nm > 0:
        raise ValueError(f"--pixel-size-nm must be positive, got {args.pixel_size_nm}")
    manifest = read_dataset(args.data, strict=args.strict, crop_um=crop(args))
    report_skipped(manifest)
    if args.pixel_size_nm is not None:
        manifest = manifest.assign(pixel_size_nm=float(args.pixel_size_nm))
    table = compute_table(manifest, jobs=args.jobs, dask_address=args.dask, cache=args.cache, progress=True,
                          paper_pixels=args.paper_pixels, strict=args.strict)
    report_skipped(table)
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
    p.add_argument("--image-size", type=image_side, help="model input side in px (default: the images' own size)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: 7.5e-5)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 32)")
    p.add_argument("--dropout", type=float, help="dropout of the head (default: 0)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, help="seed of split, cuts, initialisation, sampling, flips (default: 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --profile demo, else torch's)")
    strict_flag(p)


def _experiment_setup(args, **model):
    from tmdafm_core.data import read_dataset
    from tmdafm_core.experiments import profile_options

    options = profile_options(args.profile, epochs=args.epochs, folds=args.folds, image_size=args.image_size,
                              lr=args.lr, batch_size=args.batch_size, dropout=args.dropout, device=args.device,
                              seed=args.seed, threads=args.threads, **model)
    manifest = read_dataset(args.data, strict=args.strict, crop_um=crop(args))
    report_skipped(manifest)
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
    p.add_argument("--modes", type=comma_list, default="imagenet,sequential",
                   help="imagenet and/or sequential (default: both)")
    p.add_argument("--head", choices=("reset", "keep"), default="reset",
                   help="Sequential MtC stages: reset = a fresh output layer (the paper's), keep = the previous "
                        "stage's rows of the known classes (default: reset)")
    p.add_argument("--volume-mode", choices=("paper", "train-samples"), default="paper",
                   help="paper = N random train+validation images of the new class; train-samples = N training "
                        "images per fold, whole samples first (default: paper)")
    _experiment_options(p)


def _run_sequential(args) -> int:
    from tmdafm_core.sequential import RESULTS_NAME, parse_volumes, results_table, sequential_study

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
    p.add_argument("--archs", type=comma_list, default="resnet18,resnet34,resnet50,resnet101,resnet152",
                   help="comma-separated architectures (default: all five)")
    p.add_argument("--weights", type=comma_list, default="imagenet-v1,imagenet-v2",
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
        say(f"skipped: {note}")
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


#: Subcommands of this module: name -> (declare its options, run it).
COMMANDS = {
    "reproduce": (_add_reproduce, _run_reproduce),
    "features": (_add_features, _run_features),
    "latent": (_add_latent, _run_latent),
    "sequential": (_add_sequential, _run_sequential),
    "compare-archs": (_add_compare_archs, _run_compare_archs),
    "ablation": (_add_ablation, _run_ablation),
}

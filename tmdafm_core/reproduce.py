"""``tmdafm reproduce``: every table and figure of the paper that the inputs allow, in one folder.

:func:`reproduce` fills the store (:func:`tmdafm_core.pipeline.precompute`, resumable, reused when done), runs the
two experiments the store's steps do not make (the Table 2 ablation, into the store's ``ablation`` folder where the
app shows it, or with the paper profile the paper's ResNet18 under ``DIR/runs``; and, where ImageNet weights are in
the torchvision cache, the Table 3 architecture comparison under ``DIR/runs``; both resumable), then writes each
artifact under the paper's number:

=========  ======================================================================================================
table1     images per material and partition (train / validation of fold 0 / test), samples
table2     fine-tuning vs feature-extraction MLP vs training from scratch
table3     architectures x ImageNet weight versions beside their ImageNet top-1
table4     MtC vs MtL (MtL by our decoding and by the paper's strict rule)
table5     most negative / most positive Pearson R of each descriptor with the PCs, regression R
figure3    test confusion matrices (MtC, MtL)
figure4    macro-F1 against the new class's training volume, ImageNet vs Sequential
figure5    latent PCA of each sequential stage (Sequential mode), Procrustes-aligned
figure6-9  the latent analysis in the order DESIGN.md lists it: Pearson R (descriptors x PCs), cosine similarity
           of descriptors and PCs, cosine similarity of the descriptors' regression directions, percentile
           galleries of the strongest descriptors
figureS1   PCA of the frozen backbone's features before fine-tuning
figureS12  images embedded along two descriptors' regression directions
=========  ======================================================================================================

Tables are CSV; figures are an interactive HTML page, the plotted data as CSV and, where a Chromium browser is
found, PNG, SVG and PDF. ``index.html`` links everything; ``README.md`` says which settings made each artifact and
what could not be made and why (S13 among them: its content is not recorded in our notes of the paper).
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .store import write_json

PAPER_ONLY_UNKNOWN = {"figureS13": "its content is not recorded in DESIGN.md (our notes of the paper), so it is not "
                                   "guessed; compare with the publication's supplement"}


class NotMade(Exception):
    """An artifact the inputs do not allow; the message says why."""


@dataclass
class Artifact:
    """One written table or figure: ``key`` (paper number), title, files (relative to DIR), settings, notes."""

    key: str
    title: str
    files: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


@dataclass
class _Context:
    out: Path
    store: Path
    profile: object
    manifest: pd.DataFrame
    formats: tuple
    progress: object
    state: dict

    @property
    def options(self) -> dict:
        from .pipeline import with_backbone

        return with_backbone(self.store, self.profile.train_options)


def _say(ctx: _Context, message: str) -> None:
    if ctx.progress is True:
        import sys

        print(message, file=sys.stderr, flush=True)
    elif callable(ctx.progress):
        ctx.progress(message)


# --- writers ----------------------------------------------------------------------------------------------------

def _write_table(ctx: _Context, name: str, frame: pd.DataFrame) -> str:
    frame.to_csv(ctx.out / f"{name}.csv", index=False)
    return f"{name}.csv"


def _write_figure(ctx: _Context, name: str, figure, data: pd.DataFrame | None, title: str) -> list[str]:
    """HTML + data CSV always; PNG/SVG/PDF when a browser is found, redrawn only when the figure changed."""
    from .export import StaticExportUnavailable, figure_html, static_images

    files = [f"{name}.html"]
    (ctx.out / f"{name}.html").write_text(figure_html(figure, title=title))
    if data is not None:
        files.append(_write_table(ctx, f"{name}_data", data))
    if not ctx.formats or "_static_unavailable" in ctx.state:
        return files
    digest = hashlib.sha256(figure.to_json().encode()).hexdigest()
    wanted = [f"{name}.{fmt}" for fmt in ctx.formats]
    if ctx.state.get(name) != digest or not all((ctx.out / f).is_file() for f in wanted):
        try:
            images = static_images(figure, ctx.formats)
        except StaticExportUnavailable as exc:
            ctx.state["_static_unavailable"] = str(exc)  # one browser for all figures: do not try each again
            return files
        for fmt, content in images.items():
            (ctx.out / f"{name}.{fmt}").write_bytes(content)
        ctx.state[name] = digest
    return files + wanted


# --- tables -----------------------------------------------------------------------------------------------------

def _table1(ctx: _Context) -> Artifact:
    from .results import split_table

    table = split_table(ctx.manifest).reset_index().rename(columns={"index": "material"})
    table.insert(1, "train", table["train_pool"] - table.get("val_fold_0", 0))
    table.insert(2, "val", table.get("val_fold_0", 0))
    columns = ["material", "train", "val", "test", "images", "samples"]
    table = table[[c for c in columns if c in table.columns]]
    return Artifact("table1", "Images per material and partition", [_write_table(ctx, "table1", table)],
                    notes=["val = the validation part of fold 0 (each fold has its own; the paper lists one split)"])


def _run_settings(options: dict, **model) -> dict:
    keep = ("arch", "weights", "epochs", "folds", "lr", "batch_size", "dropout", "image_size", "seed")
    return {k: v for k, v in {**options, **model}.items() if k in keep}


def _table2(ctx: _Context) -> Artifact:
    from .experiments import PAPER_ABLATION_MODEL, ablation_study, store_ablation, store_ablation_options

    _say(ctx, "table 2: fine-tuning vs feature extraction vs scratch")
    if ctx.profile.training == "paper":  # the paper's Table 2 model (ResNet18, ImageNet V1), beside the store
        rest = {k: v for k, v in ctx.options.items() if k not in ("arch", "weights")}
        table = ablation_study(ctx.manifest, ctx.out / "runs" / "ablation", task="mtc", **PAPER_ABLATION_MODEL,
                               **rest)
        settings = _run_settings(rest, **PAPER_ABLATION_MODEL)
    else:  # the store's own Table 2, as its MtC run trains (which is the fine-tuning arm); the app shows it too
        try:
            options = store_ablation_options(ctx.store)
        except ValueError as exc:  # no pretrained start, or an MtC run given without scores (--run)
            raise NotMade(f"Table 2 contrasts pretrained weights with training from scratch; {exc} (the demo "
                          "profile has its AFM-pretrained backbone; --profile paper uses ImageNet weights in the "
                          "torchvision cache)") from None
        table = store_ablation(ctx.store, progress=ctx.progress is True)
        settings = _run_settings(options)
    files = [_write_table(ctx, "table2", table)]
    return Artifact("table2", "Fine-tuning vs feature-extraction MLP vs scratch (MtC)", files, settings)


def _missing_imagenet_files(archs, versions) -> list[str]:
    from .models import imagenet_weights, weights_cache_file

    missing = []
    for arch in archs:
        for version in versions:
            try:
                path = weights_cache_file(imagenet_weights(arch, version))
            except ValueError:
                continue  # no V2 for ResNet18/34: not part of the table
            if not path.is_file():
                missing.append(str(path))
    return missing


def _table3_4(ctx: _Context) -> list[Artifact]:
    from .experiments import compare_architectures, task_comparison
    from .models import ARCHITECTURES

    artifacts = []
    options = dict(ctx.options)
    if options.get("weights") == "none":
        raise NotMade("Table 3 compares ImageNet weight versions; this profile trains from scratch "
                      "(use --profile paper with the weights in the torchvision cache)")
    missing = _missing_imagenet_files(ARCHITECTURES, ("imagenet-v1", "imagenet-v2"))
    if missing:
        raise NotMade(f"ImageNet weights not in the torchvision cache: {', '.join(Path(m).name for m in missing)} "
                      f"(put them into {Path(missing[0]).parent})")
    rest = {k: v for k, v in options.items() if k not in ("arch", "weights")}
    _say(ctx, "table 3: architectures x weights")
    table = compare_architectures(ctx.manifest, ctx.out / "runs" / "architectures", task="both", **rest)
    artifacts.append(Artifact("table3", "Architectures and ImageNet weight versions", [
        _write_table(ctx, "table3", table)], _run_settings(rest)))
    artifacts.append(Artifact("table4-architectures", "MtC vs MtL per architecture and weights", [
        _write_table(ctx, "table4_architectures", task_comparison(table))], _run_settings(rest)))
    return artifacts


def _stored_run_settings(store: Path) -> dict:
    """What made the store's MtC / MtL runs, from their config.json (trained or imported)."""
    settings = {}
    for task in ("mtc", "mtl"):
        path = store / "runs" / task / "config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            keep = ("mode", "arch", "weights", "epochs", "folds", "lr", "batch_size", "image_size", "source")
            settings[task] = ", ".join(f"{k}={config[k]}" for k in keep if config.get(k) not in (None, ""))
    return settings


def _table4(ctx: _Context) -> Artifact:
    from .results import metrics_table

    table = metrics_table(ctx.store)
    if table.empty:
        raise NotMade("the store holds no MtC/MtL runs")
    return Artifact("table4", "MtC vs MtL: accuracy and macro-F1 per partition (mean, sample std over folds)",
                    [_write_table(ctx, "table4", table)], _stored_run_settings(ctx.store),
                    ["MtL (paper rule) scores the MtL models by the paper's strict decoding"])


def _table5(ctx: _Context) -> Artifact:
    from .results import latent_tables

    files = []
    for task in ("mtc", "mtl"):
        tables = latent_tables(ctx.store, task)
        if tables and "table5" in tables:
            files.append(_write_table(ctx, f"table5_{task}", tables["table5"]))
    if not files:
        raise NotMade("the store holds no latent analysis with descriptors")
    return Artifact("table5", "Descriptors against the latent PCs (Pearson R extremes, regression R)", files,
                    {"latent": "pre-relu", "descriptors": ctx.profile.descriptors})


# --- figures ----------------------------------------------------------------------------------------------------

def _figure3(ctx: _Context) -> Artifact:
    from .figures import confusion_figure
    from .results import TASK_NAMES, confusion

    files = []
    for task in ("mtc", "mtl"):
        matrix = confusion(ctx.store, task)
        if matrix is not None:
            title = f"{TASK_NAMES[task]} test confusion (% of test images, mean over folds)"
            files += _write_figure(ctx, f"figure3_{task}", confusion_figure(matrix, title=title),
                                   matrix.reset_index(), title)
    if not files:
        raise NotMade("the store holds no MtC/MtL runs")
    return Artifact("figure3", "Test confusion matrices", files, _stored_run_settings(ctx.store))


def _figure4(ctx: _Context) -> Artifact:
    from .figures import sequential_figure
    from .results import sequential_results, sequential_semantics

    table = sequential_results(ctx.store)
    if table is None:
        raise NotMade("the store holds no sequential study")
    title = "Macro-F1 against the new class's training volume"
    return Artifact("figure4", title, _write_figure(ctx, "figure4", sequential_figure(table), table, title),
                    {**_run_settings(ctx.options), "volumes": list(map(str, ctx.profile.volumes)),
                     **sequential_semantics(ctx.store)})


def _figure5(ctx: _Context) -> Artifact:
    from .selection import stage_panels

    files = []
    for task in ("mtc", "mtl"):
        figure, data = stage_panels(ctx.store, task, "sequential")
        if figure is not None:
            files += _write_figure(ctx, f"figure5_{task}", figure, data, f"Latent PCA per stage ({task})")
    if not files:
        raise NotMade("the store holds no per-stage projections")
    return Artifact("figure5", "Latent space of each sequential stage (PC1-PC2, Procrustes-aligned)", files,
                    {"latent": "pre-relu"})


def _latent_figures(ctx: _Context) -> list[Artifact]:
    from .figures import correlation_heatmap, cosine_heatmap
    from .results import latent_tables

    tables = latent_tables(ctx.store, "mtc")
    if not tables or "correlation" not in tables:
        raise NotMade("the store holds no MtC latent analysis with descriptors")
    settings = {"latent": "pre-relu", "descriptors": ctx.profile.descriptors, "task": "mtc"}
    specs = [
        ("figure6", "Pearson R of each descriptor with each PC",
         lambda t: correlation_heatmap(t["correlation"], title="Pearson R, descriptors x PCs"), "correlation"),
        ("figure7", "Cosine similarity of descriptors and PCs",
         lambda t: cosine_heatmap(t["cosine_descriptors_pcs"], x_title="principal component",
                                  title="Cosine similarity, descriptors x PCs"), "cosine_descriptors_pcs"),
        ("figure8", "Cosine similarity of the descriptors' regression directions",
         lambda t: cosine_heatmap(t["cosine_regression_directions"], x_title="descriptor",
                                  title="Cosine similarity of regression directions"), "cosine_regression_directions"),
    ]
    artifacts = []
    for key, title, build, source in specs:
        artifacts.append(Artifact(key, title, _write_figure(ctx, key, build(tables), tables[source], title), settings))
    artifacts.append(_figure9(ctx, tables, settings))
    return artifacts


def _figure9(ctx: _Context, tables: dict, settings: dict, *, descriptors: int = 3, per_row: int = 8) -> Artifact:
    """Montage of the images at or above the 75th / at or below the 25th percentile of the strongest descriptors."""
    from PIL import Image, ImageDraw

    from .data import afm_colours, load_image
    from .data.images import scan_crops

    table5 = tables["table5"]
    strength = table5[["min_r", "max_r"]].abs().max(axis=1)
    names = list(table5.loc[strength.sort_values(ascending=False).index, "descriptor"][:descriptors])
    galleries = tables.get("galleries") or {}
    paths = ctx.manifest.set_index("image")["path"]
    crops = dict(zip(ctx.manifest["image"], scan_crops(ctx.manifest), strict=True))
    tile = 96
    rows = []
    for name in names:
        for side in ("high", "low"):
            entry = (galleries.get(name) or {}).get(side) or {}
            images = [i for i in entry.get("images", [])[:per_row] if i in paths.index]
            rows.append((name, side, images))
    if not any(images for _, _, images in rows):
        raise NotMade("the store's galleries list no images")
    label_width = 180
    montage = Image.new("RGB", (label_width + tile * per_row, tile * len(rows)), "white")
    draw = ImageDraw.Draw(montage)
    for r, (name, side, images) in enumerate(rows):
        draw.text((6, r * tile + tile // 2 - 14), name, fill="black")
        draw.text((6, r * tile + tile // 2 + 2), ">= 75th percentile" if side == "high" else "<= 25th percentile",
                  fill="black")
        for c, image in enumerate(images):
            height, _ = load_image(paths[image], crop_um=crops[image])
            montage.paste(Image.fromarray(afm_colours(height)).resize((tile, tile)),
                          (label_width + c * tile, r * tile))
    montage.save(ctx.out / "figure9.png")
    listing = pd.DataFrame([{"descriptor": n, "side": s, "images": " ".join(i)} for n, s, i in rows])
    notes = [f"rows, top to bottom: {', '.join(f'{n} {s}' for n, s, _ in rows)} (high: >= 75th percentile, "
             "low: <= 25th)"]
    return Artifact("figure9", "Percentile galleries of the strongest descriptors",
                    ["figure9.png", _write_table(ctx, "figure9_images", listing)], settings, notes)


def _figure_s1(ctx: _Context) -> Artifact:
    from .embeddings import fit_projection
    from .figures import colour_spec, latent_scatter_figure
    from .training import extract

    options = ctx.options
    weights = options.get("weights", "none")
    size = options.get("image_size") or None
    _say(ctx, "figure S1: frozen backbone features")
    table = extract(ctx.manifest, arch=options.get("arch", "resnet18"), weights=weights, image_size=size,
                    device=options.get("device", "cpu"))
    values = table[[c for c in table.columns if c.startswith("f") and c[1:].isdigit()]].to_numpy(np.float32)
    scores = fit_projection(values, n_components=2, seed=ctx.profile.seed).transform(values)
    points = ctx.manifest[["image", "material"]].reset_index(drop=True).assign(PC1=scores[:, 0], PC2=scores[:, 1])

    colour = colour_spec(points["material"], kind="category", title="material")
    title = f"PCA of frozen {options.get('arch', 'resnet18')} features ({weights}) before fine-tuning"
    figure = latent_scatter_figure(points, x="PC1", y="PC2", colour=colour, title=title)
    notes = [] if weights != "none" else ["no pretrained weights in this profile: the frozen network is random"]
    return Artifact("figureS1", title, _write_figure(ctx, "figureS1", figure, points, title),
                    {"arch": options.get("arch", "resnet18"), "weights": weights}, notes)


def _figure_s12(ctx: _Context) -> Artifact:
    from .figures import colour_spec, latent_scatter_figure
    from .latent import fit_linear, max_scale, read_descriptors
    from .results import latent_tables
    from .selection import coordinate_columns

    tables = latent_tables(ctx.store, "mtc")
    features_path = ctx.store / "features.csv"
    if not tables or "table5" not in tables or not features_path.is_file():
        raise NotMade("the store holds no MtC latent analysis with descriptors")
    projection = tables["projection"]
    pcs = coordinate_columns(projection)["pca"]
    table5 = tables["table5"].sort_values("regression_r", ascending=False)
    first, second = list(table5["descriptor"][:2])
    descriptors = max_scale(read_descriptors(features_path).set_index("image")[[first, second]])
    joined = projection.join(descriptors, on="image").dropna(subset=[first, second])
    scores = joined[pcs].to_numpy(np.float64)
    coef = fit_linear(scores, joined[[first, second]].to_numpy(np.float64))[1:]  # row 0: the intercepts
    directions = coef / np.linalg.norm(coef, axis=0)
    axes = dict(zip((first, second), (scores @ directions).T, strict=True))
    material = "label" if "label" in joined else "material"
    points = pd.DataFrame({"image": joined["image"], "material": joined[material],
                           f"along the {first} regression direction": axes[first],
                           f"along the {second} regression direction": axes[second]})
    colour = colour_spec(points["material"], kind="category", title="material")
    title = f"Images along the regression directions of {first} and {second} (MtC latent PCs)"
    figure = latent_scatter_figure(points, x=points.columns[2], y=points.columns[3], colour=colour, title=title)
    return Artifact("figureS12", title, _write_figure(ctx, "figureS12", figure, points, title),
                    {"latent": "pre-relu", "pcs": len(pcs), "descriptors": [first, second]},
                    ["the two descriptors with the highest regression R; directions fitted on PC scores by least "
                     "squares, unit length"])


_STEPS = (_table1, _table2, _table3_4, _table4, _table5, _figure3, _figure4, _figure5, _latent_figures,
          _figure_s1, _figure_s12)
_STEP_KEYS = {_table1: "table1", _table2: "table2", _table3_4: "table3", _table4: "table4", _table5: "table5",
              _figure3: "figure3", _figure4: "figure4", _figure5: "figure5", _latent_figures: "figure6-9",
              _figure_s1: "figureS1", _figure_s12: "figureS12"}


# --- index and README -------------------------------------------------------------------------------------------

def _index_html(made: list[Artifact], missing: dict[str, str]) -> str:
    items = []
    for artifact in made:
        links = " · ".join(f'<a href="{html.escape(f)}">{html.escape(Path(f).suffix[1:] or f)}</a>'
                           for f in artifact.files)
        preview = next((f for f in artifact.files if f.endswith(".png")), None)
        image = f'<br><img src="{html.escape(preview)}" style="max-width:480px">' if preview else ""
        items.append(f"<li><b>{html.escape(artifact.key)}</b> {html.escape(artifact.title)}: {links}{image}</li>")
    absent = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in missing.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>tmdafm: the paper's tables and figures"
            "</title></head><body><h1>The paper's tables and figures on these data</h1><ul>" + "".join(items)
            + "</ul><h2>Not made</h2><ul>" + absent + "</ul><p>Settings: README.md</p></body></html>\n")


def _readme(made: list[Artifact], missing: dict[str, str], profile, data, store: Path) -> str:
    lines = ["# The paper's tables and figures on these data", "",
             f"Made by `tmdafm reproduce` from {data or 'the synthetic demo data set'} with the `{profile.name}` "
             f"profile (store: `{store}`; descriptors: {profile.descriptors}; latent features: pre-ReLU).", ""]
    for artifact in made:
        lines.append(f"## {artifact.key}: {artifact.title}")
        lines.append("Files: " + ", ".join(f"`{f}`" for f in artifact.files))
        if artifact.settings:
            lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in artifact.settings.items()))
        lines += [f"Note: {note}" for note in artifact.notes]
        lines.append("")
    lines += ["## Not made", ""] + [f"- {k}: {v}" for k, v in missing.items()]
    return "\n".join(lines) + "\n"


# --- the command ------------------------------------------------------------------------------------------------

def reproduce(data, out_dir, *, profile="demo", cache=None, formats=("png", "svg", "pdf"), progress=None,
              runs=None) -> tuple[list[Artifact], dict[str, str]]:
    """Write every table and figure of the paper that the inputs allow into ``out_dir``.

    Parameters
    ----------
    data : str, Path or None
        Labelled data set (any ``read_dataset`` source); None: the profile's synthetic demo set.
    out_dir : str or Path
        Output folder (created; a rerun reuses its runs and skips redrawing unchanged figures).
    profile : str or Profile
        Precompute profile (:data:`tmdafm_core.pipeline.PROFILES`).
    cache : str or Path, optional
        The store to fill and read; default ``out_dir/store``.
    formats : sequence of {"png", "svg", "pdf"}
        Static image formats (drawn with a Chromium browser when one is found; empty: HTML and CSV only).
    progress : callable, optional
        ``progress(message)`` for each stage; ``True`` also shows precompute's bars.
    runs : sequence of path, optional
        Existing MtC / MtL run directories to use instead of training them (e.g. the paper's published models
        imported with ``tmdafm import-model``).

    Returns
    -------
    (list of Artifact, dict of key -> reason)
        What was written, and what could not be made and why.
    """
    from .layout import load_manifest
    from .pipeline import precompute
    from .profiles import resolve_profile

    profile = resolve_profile(profile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(cache) if cache is not None else out / "store"
    if callable(progress):
        progress("store: precompute " + profile.name)
    precompute(store, data, profile=profile, progress=progress if progress is True else None, runs=runs)
    state_path = out / "reproduce.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    state.pop("_static_unavailable", None)
    ctx = _Context(out, store, profile, load_manifest(store), tuple(formats), progress, state)
    made, missing = [], {}
    for step in _STEPS:
        try:
            result = step(ctx)
        except NotMade as exc:
            missing[_STEP_KEYS[step]] = str(exc)
            continue
        made += result if isinstance(result, list) else [result]
    missing.update(PAPER_ONLY_UNKNOWN)
    if "_static_unavailable" in ctx.state:
        missing["PNG/SVG/PDF of the figures"] = ctx.state.pop("_static_unavailable")
    (out / "index.html").write_text(_index_html(made, missing))
    (out / "README.md").write_text(_readme(made, missing, profile, data, store))
    write_json(state_path, ctx.state, indent=2, sort_keys=False)
    return made, missing


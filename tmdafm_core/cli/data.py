"""``tmdafm info``, ``prepare`` and ``synth``: look at a data set, tidy it, make a synthetic one."""

from __future__ import annotations

from pathlib import Path

from .options import crop, report_skipped, say, strict_flag

# --- info -------------------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="counts per class x split, samples, image sizes; checks the data; for one "
                                    "instrument file: its channels, size and the crop it stands for")
    p.add_argument("data", type=Path, help="data set: TMD-AFM TIFF folder, class folders, manifest CSV, image folder, "
                                           "a folder of instrument files, or one instrument file")
    strict_flag(p)


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
    manifest = read_dataset(args.data, strict=args.strict, crop_um=crop(args))
    report_skipped(manifest)
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
    strict_flag(p)


def _run_prepare(args) -> int:
    from tmdafm_core.data.prepare import prepare_folder

    if args.no_crop and args.tile:
        raise ValueError("--tile cuts crops and --no-crop keeps whole scans: give one of them")
    manifest = prepare_folder(args.raw, args.out, crop_um=crop(args), tile=args.tile,
                              channel=args.channel, levelling=args.levelling, labels=args.labels,
                              strict=args.strict)
    for path, reason in manifest.attrs["skipped"]:
        say(f"skipped {path}: {reason}")
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


#: Subcommands of this module: name -> (declare its options, run it).
COMMANDS = {
    "info": (_add_info, _run_info),
    "prepare": (_add_prepare, _run_prepare),
    "synth": (_add_synth, _run_synth),
}

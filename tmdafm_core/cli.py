"""The ``tmdafm`` command: parses arguments, calls the library, prints.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its options and ``_run_<name>(args)`` does the
work by calling ``tmdafm_core`` functions. Library errors that describe bad input (``ValueError``, ``OSError``)
become a one-line message on stderr and exit status 2; nothing here prints a traceback to the user.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _strict_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="treat a skipped (unreadable or unparseable) file as an error")


def _report_skipped(manifest) -> None:
    for path, reason in manifest.attrs.get("skipped", []):
        _say(f"skipped {path}: {reason}")


# --- info -------------------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="counts per class x split, samples, image sizes; checks the data")
    p.add_argument("data", type=Path, help="data set: TMD-AFM TIFF folder, class folders, manifest CSV, image folder")
    _strict_flag(p)


def _run_info(args) -> int:
    from tmdafm_core.data import dataset_summary, read_dataset

    manifest = read_dataset(args.data, strict=args.strict)
    _report_skipped(manifest)
    print(dataset_summary(manifest))
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


# --- registry ---------------------------------------------------------------------------------------------------

_COMMANDS = {
    "info": (_add_info, _run_info),
    "synth": (_add_synth, _run_synth),
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

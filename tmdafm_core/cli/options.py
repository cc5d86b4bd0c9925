"""Argument types and option groups that several ``tmdafm`` commands share."""

from __future__ import annotations

import argparse
import sys


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def strict_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="treat a skipped (unreadable or unparseable) file as an error")
    scan_options(parser)


def scan_options(parser: argparse.ArgumentParser) -> None:
    """How instrument files (.spm, .gwy, ...) become images: levelled, then the central crop or the whole scan."""
    parser.add_argument("--crop-um", type=float, default=1.0, metavar="UM",
                        help="instrument files: side of the central crop taken after levelling (default: 1, the "
                             "paper's 1 x 1 um)")
    parser.add_argument("--no-crop", action="store_true", help="instrument files: use whole (levelled) scans")


def crop(args) -> float | None:
    if args.no_crop:
        return None
    if not args.crop_um > 0:
        raise ValueError(f"--crop-um must be positive, got {args.crop_um}")
    return float(args.crop_um)


def feature_table_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """Column choices of a feature/embedding table (read_feature_table guesses the ones not given)."""
    parser.add_argument("--sample-col", help=f"{prefix}sample-id column (default: guessed)")
    parser.add_argument("--label-col", help=f"{prefix}material column (default: guessed)")
    parser.add_argument("--feature-cols", type=lambda s: [c for c in s.split(",") if c],
                        help=f"{prefix}comma list of feature columns, or one array column (default: guessed)")


def report_skipped(manifest) -> None:
    for path, reason in manifest.attrs.get("skipped", []):
        say(f"skipped {path}: {reason}")


def comma_list(text: str) -> list[str]:
    """argparse type of a comma-separated list: its stripped, non-empty parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def fold_choice(text: str):
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


def image_side(text: str) -> int:
    """argparse type of --image-size: a whole number of pixels (:func:`tmdafm_core.data.images.check_input_side`)."""
    from tmdafm_core.data.images import MAX_INPUT_PX, MIN_SIDE_PX, check_input_side

    try:
        return check_input_side(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a side in pixels from {MIN_SIDE_PX} to {MAX_INPUT_PX}, "
                                         f"got {text!r}") from None


def number_list(kind):
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

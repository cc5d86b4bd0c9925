"""``tmdafm precompute`` and ``app``: build a store and serve the browser app over it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .options import comma_list

# --- precompute -------------------------------------------------------------------------------------------------

def _profile_value(field):
    """argparse type of one Profile field (tuples as comma lists)."""
    def parse(text: str):
        if field.name in ("order", "volumes", "umap_dims"):
            parts = comma_list(text)
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
                        "17 min for 1026 images); paper: the study's settings (ImageNet weights in the torchvision "
                        "cache, 60 epochs, 5 folds) for a GPU; "
                        "tiny: 80 images, 1 epoch, under a minute (tests). Options below override it")
    p.add_argument("--steps", type=comma_list,
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
                        "demo: about 17 min on 2 CPU cores, tiny: about a minute, to try the app; paper: only "
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
    package = Path(__file__).resolve().parents[1]
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


#: Subcommands of this module: name -> (declare its options, run it).
COMMANDS = {
    "app": (_add_app, _run_app),
    "precompute": (_add_precompute, _run_precompute),
}

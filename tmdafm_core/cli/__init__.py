"""The ``tmdafm`` command: parses arguments, calls the library, prints.

The subcommands live by what they handle (:mod:`.data`, :mod:`.training`, :mod:`.studies`, :mod:`.store`; shared
option types in :mod:`.options`); each module's ``COMMANDS`` maps a name to a pair: ``_add_<name>(subparsers)``
declares its options and ``_run_<name>(args)`` does the work by calling ``tmdafm_core`` functions. Library errors
that describe bad input (``ValueError``, ``OSError``) become a one-line message on stderr and exit status 2; nothing
here prints a traceback to the user.
"""

from __future__ import annotations

import argparse
import signal
import threading

from . import data, store, studies, training
from .options import say
from .store import DEFAULT_HOST, DEFAULT_PORT, PROFILE_ENV, add_app_arguments, app_profile, app_script

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "PROFILE_ENV", "add_app_arguments", "app_profile", "app_script",
           "build_parser", "main"]

# --- registry ---------------------------------------------------------------------------------------------------

#: Every subcommand, in the order ``tmdafm --help`` lists them: name -> (declare its options, run it).
_COMMANDS = {**data.COMMANDS, **training.COMMANDS, **studies.COMMANDS, **store.COMMANDS}


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


class _Terminated(BaseException):
    """SIGTERM arrived (not an ``Exception``, so no ``except Exception`` on the way out swallows it)."""


def _end_on_sigterm(signum, frame):
    # A scheduler's or `timeout`'s SIGTERM reaches this process only, while Ctrl-C reaches its whole process group:
    # unwinding through the worker pools ends their processes (tmdafm_core.parallel), as it does for Ctrl-C.
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = _COMMANDS[args.command]
    handles_sigterm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _end_on_sigterm) if handles_sigterm else None
    try:
        return run(args) or 0
    except KeyboardInterrupt:
        say("tmdafm: interrupted")
        return 130
    except _Terminated:
        say(f"tmdafm {args.command}: stopped (SIGTERM); what finished is kept, and a rerun resumes")
        return 128 + signal.SIGTERM
    except (ValueError, OSError) as exc:
        say(f"tmdafm {args.command}: error: {exc}")
        return 2
    finally:
        if handles_sigterm:
            signal.signal(signal.SIGTERM, previous)

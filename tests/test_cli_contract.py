"""The `tmdafm` command contract (DESIGN.md): every subcommand has --help, and bad input is one line + exit 2."""

import pytest

from tmdafm_core.cli import _COMMANDS, main

from .processes import group_members, needs_proc

CONTRACT = ("synth", "info", "features", "extract", "train", "train-features", "sequential", "latent", "predict",
            "precompute", "app", "import-model")


def test_every_contract_command_exists():
    missing = [name for name in CONTRACT if name not in _COMMANDS]
    assert not missing, f"commands of the DESIGN.md contract not registered: {missing}"


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tmdafm " + command in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["info", "{missing}"],
    ["features", "{missing}", "--out", "{tmp}/f.csv"],
    ["train", "{missing}", "--out", "{tmp}/run", "--weights", "none"],
    ["extract", "{missing}", "--out", "{tmp}/t.parquet", "--weights", "none"],
    ["train-features", "{missing}.csv", "--out", "{tmp}/run"],
    ["sequential", "{missing}", "--out", "{tmp}/seq"],
    ["latent", "{missing}.csv", "--out", "{tmp}/lat"],
    ["predict", "{missing}", "{missing}.tif"],
    ["import-model", "{missing}.pth", "--arch", "resnet18", "--task", "mtc", "--classes", "MoS2,WS2", "--out",
     "{tmp}/run"],
])
def test_missing_input_is_one_line_exit_2(argv, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "does-not-exist", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"tmdafm {argv[0]}: error:"), err
    assert "does-not-exist" in err[0]


@needs_proc
def test_sigterm_ends_precompute_and_its_fold_workers(tmp_path):
    """A job scheduler or `timeout` sends SIGTERM to the command alone: its fold workers end with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "tmdafm_core.cli", "precompute", "--profile", "tiny", "--out", str(tmp_path / "c"),
            "--steps", "mtc", "--epochs", "200", "--fold-jobs", "2"]
    with log.open("w") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)

    def training() -> bool:  # the command and its two fold workers, in the MtC step
        return "mtc: computing" in log.read_text() and len(group_members(process.pid)) >= 3

    deadline = time.monotonic() + 120
    while not training() and time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    assert training(), "the fold workers never started"
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(process.pid) == []
    said = log.read_text()
    assert "tmdafm precompute: stopped (SIGTERM)" in said and "Traceback" not in said

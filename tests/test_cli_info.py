import subprocess
import sys

from tmdafm_core.cli import main


def test_info_prints_counts_and_checks(tmd_afm_folder, capsys):
    assert main(["info", str(tmd_afm_folder)]) == 0
    out = capsys.readouterr().out
    assert "images: 60   samples: 20" in out
    assert "MoS2" in out and "Mo-WSe2" in out and "48x48 px (60)" in out
    assert "checks: ok" in out


def test_info_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tmdafm info: error:") and "no such file" in err[0]


def test_info_strict_turns_skip_into_error(tmd_afm_folder, capsys):
    (tmd_afm_folder / "WS2_afm_bad_00.tif").write_bytes(b"junk")
    assert main(["info", str(tmd_afm_folder)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert main(["info", "--strict", str(tmd_afm_folder)]) == 2


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "tmdafm_core.cli", "info", "--help"], capture_output=True,
                            text=True, check=True)
    assert "--strict" in result.stdout

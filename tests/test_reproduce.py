"""tmdafm reproduce on the tiny profile: the paper's numbered artifacts, honest absences, and a resumable rerun."""

from __future__ import annotations

import pandas as pd
import pytest

from tmdafm_core.cli import main
from tmdafm_core.reproduce import reproduce

from .stores import STORE_PROFILE as PROFILE
from .stores import link_copy


@pytest.fixture(scope="module")
def reproduced(tiny_store, tmp_path_factory):
    """The paper's artifacts from a whole tiny store (reproduce's own store, ``out/store``, is a copy of the shared
    one: building it is precompute's part, tested in test_pipeline.py)."""
    out = tmp_path_factory.mktemp("reproduce") / "paper"
    link_copy(tiny_store[0], out / "store")
    made, missing = reproduce(None, out, profile=PROFILE, formats=())
    return out, made, missing


def test_every_artifact_the_store_allows_is_written_under_the_papers_number(reproduced):
    out, made, _ = reproduced
    keys = [a.key for a in made]
    assert keys == ["table1", "table4", "table5", "figure3", "figure4", "figure5", "figure6", "figure7", "figure8",
                    "figure9", "figureS1", "figureS12"]
    for artifact in made:
        for name in artifact.files:
            assert (out / name).is_file(), name
    table1 = pd.read_csv(out / "table1.csv")
    assert list(table1.columns[:4]) == ["material", "train", "val", "test"]
    assert table1.loc[table1["material"] == "total", "images"].item() == PROFILE.n
    table4 = pd.read_csv(out / "table4.csv")
    assert set(table4["task"]) == {"MtC", "MtL", "MtL (paper rule)"}
    assert (out / "figure9.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_what_cannot_be_made_is_said_with_the_reason(reproduced):
    out, _, missing = reproduced
    assert "no pretrained weights" in missing["table2"]
    assert "ImageNet weight versions" in missing["table3"]
    assert "figureS13" in missing
    readme = (out / "README.md").read_text()
    assert "## Not made" in readme and "table2" in readme and "profile" in readme
    index = (out / "index.html").read_text()
    assert 'href="figure4.html"' in index and "Not made" in index


def test_a_rerun_trains_nothing_and_writes_the_same_tables(reproduced, monkeypatch):
    from tmdafm_core import training

    out, _, _ = reproduced
    before = (out / "table5_mtc.csv").read_text()
    calls = []
    monkeypatch.setattr(training.crossval, "fit_fold", lambda *args, **kwargs: calls.append(args))
    made, _ = reproduce(None, out, profile=PROFILE, formats=())
    assert calls == [] and len(made) == 12
    assert (out / "table5_mtc.csv").read_text() == before


def test_cli_reproduce_refuses_a_missing_data_set(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err

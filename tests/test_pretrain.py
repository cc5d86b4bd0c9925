"""Pretraining a backbone on unlabelled images: views, loss, both objectives, the backbone file and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tmdafm_core import pretrain, results
from tmdafm_core.cli import main
from tmdafm_core.data import save_tiff
from tmdafm_core.data.synthetic import broad_params
from tmdafm_core.models import build_model


@pytest.fixture(scope="module")
def corpus():
    return pretrain.synthetic_corpus(8, size=32, image_size=32, seed=3)


def test_nt_xent_by_hand():
    # Two pairs of orthogonal unit vectors: each view's partner has similarity 1, the others 0 (or -1 for z2).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = z1.clone()
    t = 0.5
    # row 0 (z1[0]): partner z2[0] at 1/t, negatives z1[1] and z2[1] at 0
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert float(pretrain.nt_xent(z1, z2, temperature=t)) == pytest.approx(expected, rel=1e-5)


def test_views_keep_shape_and_are_seeded():
    x = torch.rand(4, 1, 32, 32)
    a = pretrain.random_views(x, torch.Generator().manual_seed(1))
    b = pretrain.random_views(x, torch.Generator().manual_seed(1))
    c = pretrain.random_views(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_broad_prior_covers_every_growth_mode():
    modes = {broad_params(seed).growth_mode for seed in range(60)}
    assert modes == {"isolated", "coalesced", "pyramids", "granular"}
    assert {broad_params(seed).material for seed in range(3)} == {"unlabelled"}


def test_synthetic_corpus_images_and_truth(corpus):
    images, truth = corpus
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert len(truth) == 8 and truth["sample_id"].nunique() == 4  # two crops per sample
    again, _ = pretrain.synthetic_corpus(8, size=32, image_size=32, seed=3)
    assert torch.equal(images, again)


def test_parameter_targets_are_standardised_and_skip_missing():
    truth = pd.DataFrame({"truth_domain_density_per_um2": [1.0, 10.0, 100.0],
                          "truth_terrace_spacing_nm": [np.nan, 50.0, 150.0]})
    targets, columns = pretrain.parameter_targets(truth)
    assert columns == ["truth_domain_density_per_um2", "truth_terrace_spacing_nm"]
    assert torch.allclose(targets[:, 0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)  # log scale
    assert torch.isnan(targets[0, 1]) and torch.isfinite(targets[1:, 1]).all()


@pytest.mark.parametrize("objective", pretrain.OBJECTIVES)
def test_pretrained_backbone_loads_as_weights(corpus, tmp_path, objective):
    images, truth = corpus
    result = pretrain.pretrain_backbone(images, objective=objective, truth=truth, epochs=2, batch_size=4,
                                        precision="fp32", seed=0)
    assert len(result["history"]) == 2 and all(np.isfinite(result["history"]))
    assert not any(k.startswith("fc.") for k in result["state_dict"])
    path = pretrain.save_backbone(result, tmp_path / "backbone.pt", title="AFM-pretrained (test)")
    assert torch.load(path, weights_only=True)["objective"] == objective
    assert results.base_arm_title(path) == "AFM-pretrained (test)"
    model = build_model("resnet18", 3, weights=path)
    assert torch.equal(model.backbone.conv1.weight, result["state_dict"]["conv1.weight"])
    again = pretrain.pretrain_backbone(images, objective=objective, truth=truth, epochs=2, batch_size=4,
                                       precision="fp32", seed=0)
    assert torch.equal(again["state_dict"]["conv1.weight"], result["state_dict"]["conv1.weight"])


def test_bad_pretraining_input_is_refused(corpus):
    images, _ = corpus
    with pytest.raises(ValueError, match="objective must be one of"):
        pretrain.pretrain_backbone(images, objective="byol")
    with pytest.raises(ValueError, match="needs truth"):
        pretrain.pretrain_backbone(images, objective="parameters")
    with pytest.raises(ValueError, match="shape"):
        pretrain.pretrain_backbone(images[:1])
    with pytest.raises(ValueError, match="unlabelled images take objective 'contrastive'"):
        pretrain.parameter_targets(pd.DataFrame({"x": [1.0]}))


def test_cli_pretrains_on_an_unlabelled_folder(tmp_path, capsys):
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        save_tiff(folder / f"scan_{i}.tif", rng.random((32, 32)).astype(np.float32), pixel_size_nm=30.0)
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "backbone.pt"
    code = main(["pretrain", str(folder), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "32"])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file() and "broken.png: skipped" in captured.err
    assert "--weights" in captured.out
    assert main(["pretrain", str(folder), "--out", str(out), "--objective", "parameters"]) == 2
    assert "use it with --synthetic N" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(out)]) == 2
    assert "either DATA" in capsys.readouterr().err

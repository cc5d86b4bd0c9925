"""tmdafm import-model: a model built and saved the paper's way predicts the same through our run directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import get_model

from tmdafm_core.cli import main
from tmdafm_core.imported import import_model
from tmdafm_core.training import embed, load_run, predict

CLASSES = ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")


def _paper_model(n_outputs: int, *, plain: bool = False, seed: int = 0) -> nn.Module:
    """A torchvision ResNet18 with the paper's head (or a plain fc), weights made non-trivial, in eval mode."""
    torch.manual_seed(seed)
    model = get_model("resnet18", weights=None)
    if plain:
        model.fc = nn.Linear(512, n_outputs)
    else:
        model.fc = nn.Sequential(nn.Linear(512, 100), nn.ReLU(), nn.Dropout(0.2), nn.Linear(100, n_outputs))
    for module in model.modules():  # BatchNorm statistics as after training, so folding them is exercised
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _paper_forward(model: nn.Module, path) -> torch.Tensor:
    """The paper's preprocessing: ToTensor (8-bit / 255), gray -> 3 channels, ImageNet mean/std, native size."""
    pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels)[None, None].repeat(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std)[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        pixels = (rng.random((64, 64)) * 200 + 20).astype(np.uint8)  # not spanning 0..255: /255 != min-max
        paths.append(folder / f"scan{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_paper_mtc_model_predicts_as_the_papers_forward_pass(tmp_path, images):
    model = _paper_model(5)
    torch.save(model.state_dict(), tmp_path / "mtc.pth")
    run_dir = import_model(tmp_path / "mtc.pth", tmp_path / "run", arch="resnet18", task="mtc", classes=CLASSES)
    run = load_run(run_dir)
    result = predict(run, [str(p) for p in images])
    for row, path in enumerate(images):
        logits = _paper_forward(model, path)
        np.testing.assert_allclose(result.class_probabilities[row], torch.softmax(logits, 0).numpy(), atol=1e-4)
    assert result.materials[0] == CLASSES[int(_paper_forward(model, images[0]).argmax())]
    # Latent features: fc.0's outputs before the ReLU, as the paper's feature tables.
    backbone = nn.Sequential(*list(model.children())[:-1])
    pixels = np.asarray(Image.open(images[1]), dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels)[None, None].repeat(1, 3, 1, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        latent = model.fc[0](backbone(x).flatten(1))[0].numpy()
    np.testing.assert_allclose(result.embeddings[1], latent, atol=1e-4)


def test_paper_mtl_model_and_a_plain_classifier(tmp_path, images):
    mtl = _paper_model(4, seed=1)
    torch.save(mtl.state_dict(), tmp_path / "mtl.pth")
    run = load_run(import_model(tmp_path / "mtl.pth", tmp_path / "mtl", arch="resnet18", task="mtl",
                                classes=CLASSES))
    assert run.labels.elements == ("Mo", "W", "S", "Se")
    result = predict(run, [str(images[0])])
    np.testing.assert_allclose(result.element_probabilities[0], torch.sigmoid(_paper_forward(mtl, images[0])),
                               atol=1e-4)
    plain = _paper_model(2, plain=True, seed=2)
    torch.save({"module." + k: v for k, v in plain.state_dict().items()}, tmp_path / "plain.pth")
    run = load_run(import_model(tmp_path / "plain.pth", tmp_path / "plain", arch="resnet18", task="mtc",
                                classes=("MoS2", "WS2"), image_size=64))
    result = predict(run, [str(images[2])])
    np.testing.assert_allclose(result.class_probabilities[0], torch.softmax(_paper_forward(plain, images[2]), 0),
                               atol=1e-4)
    assert result.embeddings.shape == (1, 512)  # no 100-d head: the pooled backbone features
    manifest = pd.DataFrame({"path": [str(p) for p in images], "pixel_size_nm": 4.0, "height": 64, "width": 64})
    np.testing.assert_allclose(embed(run, manifest)[2], result.embeddings[0], atol=1e-4)


def test_bad_imports_say_what_is_wrong(tmp_path):
    model = _paper_model(5)
    torch.save(model.state_dict(), tmp_path / "mtc.pth")
    with pytest.raises(ValueError, match="5 outputs but 2 classes"):
        import_model(tmp_path / "mtc.pth", tmp_path / "a", arch="resnet18", task="mtc", classes=("MoS2", "WS2"))
    with pytest.raises(ValueError, match="check --arch"):
        import_model(tmp_path / "mtc.pth", tmp_path / "b", arch="resnet50", task="mtc", classes=CLASSES)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "headless.pth")
    with pytest.raises(ValueError, match="no classifier head recognised"):
        import_model(tmp_path / "headless.pth", tmp_path / "c", arch="resnet18", task="mtc", classes=CLASSES)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable state dict"):
        import_model(tmp_path / "junk.pth", tmp_path / "d", arch="resnet18", task="mtc", classes=CLASSES)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        import_model(tmp_path / "mtc.pth", tmp_path / "full", arch="resnet18", task="mtc", classes=CLASSES)


def test_cli_import_then_predict(tmp_path, images, capsys):
    torch.save(_paper_model(5).state_dict(), tmp_path / "mtc.pth")
    assert main(["import-model", str(tmp_path / "mtc.pth"), "--arch", "resnet18", "--task", "mtc", "--classes",
                 ",".join(CLASSES), "--out", str(tmp_path / "run")]) == 0
    assert main(["predict", str(tmp_path / "run"), str(images[0])]) == 0
    captured = capsys.readouterr()
    assert "p_Mo-WSe2" in captured.out and "scan0.png" in captured.out
    # No validation or training images came with it: its probabilities are raw and its novelty unknown, and it says so.
    assert "an imported model has no validation images to calibrate on" in captured.err
    assert captured.out.splitlines()[-1].endswith(",,")
    assert main(["import-model", str(tmp_path / "mtc.pth"), "--arch", "resnet18", "--task", "mtc", "--classes",
                 "MoS2,WS2", "--out", str(tmp_path / "run2")]) == 2


def test_precompute_uses_an_imported_run_instead_of_training(tmp_path, monkeypatch):
    import dataclasses

    from tmdafm_core import pipeline, results, training

    torch.save(_paper_model(5).state_dict(), tmp_path / "mtc.pth")
    run_dir = import_model(tmp_path / "mtc.pth", tmp_path / "run", arch="resnet18", task="mtc", classes=CLASSES)
    calls = []
    monkeypatch.setattr(training.crossval, "fit_fold", lambda *args, **kwargs: calls.append(args))
    profile = dataclasses.replace(pipeline.PROFILES["tiny"], umap_dims=())
    store = tmp_path / "store"
    statuses = {r.step: r.status for r in pipeline.precompute(store, profile=profile, steps=["latent-mtc"],
                                                             runs=[run_dir])}
    assert statuses["mtc"] == "computed" and calls == []  # copied, not trained
    assert json.loads((store / "runs" / "mtc" / "config.json").read_text())["mode"] == "imported"
    table = results.predictions(store, "mtc")
    assert len(table) == profile.n and set(table["predicted"]) <= set(CLASSES)
    assert results.run_metrics(store, "mtc") is None  # no invented scores
    again = {r.step: r.status for r in pipeline.precompute(store, profile=profile, steps=["latent-mtc"],
                                                          runs=[run_dir])}
    assert again["mtc"] == again["latent-mtc"] == "from cache"
    with pytest.raises(ValueError, match="not a run directory"):
        pipeline.precompute(store, profile=profile, steps=["mtc"], runs=[tmp_path])

"""ResNet builders, the paper's head, offline weight resolution and MtL decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import get_model

from tmdafm_core.data import LabelSpace
from tmdafm_core.models import (
    LATENT_DIM,
    build_feature_mlp,
    build_model,
    class_log_scores,
    imagenet_weights,
    weights_cache_file,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache, and a network that fails loudly if anything tries to download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def test_head_and_outputs_have_the_papers_shape():
    model = build_model("resnet18", 5, weights="none", dropout=0.25).eval()
    hidden, relu = model.head.hidden
    assert (hidden.in_features, hidden.out_features) == (512, LATENT_DIM)
    assert isinstance(relu, torch.nn.ReLU)
    assert model.head.dropout.p == 0.25
    assert (model.head.out.in_features, model.head.out.out_features) == (LATENT_DIM, 5)
    x = torch.randn(2, 3, 64, 64)
    logits, latent, maps, statistics = model.forward_all(x)
    assert logits.shape == (2, 5) and latent.shape == (2, LATENT_DIM) and maps.shape == (2, 512, 2, 2)
    assert statistics.shape == (2, 2 * 64)  # resnet18's first stage has 64 channels: their means, then stds
    b = model.backbone
    with torch.no_grad():
        first = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
    torch.testing.assert_close(statistics[:, :64], first.mean(dim=(2, 3)))
    torch.testing.assert_close(statistics[:, 64:], first.std(dim=(2, 3), correction=0))
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(model.embed(x), latent)


def test_latent_features_are_the_hidden_layer_before_its_relu_as_in_the_paper():
    torch.manual_seed(0)
    model = build_model("resnet18", 5, weights="none").eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model.head.hidden[0](model.backbone_features(x))
        pre = model.embed(x)
        post = model.embed(x, latent="post-relu")
        from_forward = model.forward_all(x, latent="post-relu").latent
        logits = model.head.out(torch.relu(expected))
    torch.testing.assert_close(pre, expected)
    assert (pre < 0).any() and (post >= 0).all()
    torch.testing.assert_close(post, torch.relu(pre))
    torch.testing.assert_close(from_forward, post)
    torch.testing.assert_close(model(x), logits)  # the classifier still sees the ReLU


def test_unknown_latent_kind_is_refused():
    model = build_model("resnet18", 2, weights="none").eval()
    with pytest.raises(ValueError, match="pre-relu"):
        model.embed(torch.zeros(1, 3, 32, 32), latent="relu")


def test_wide_backbones_feed_2048_features_to_the_head():
    model = build_model("resnet50", 4)
    assert model.head.in_features == 2048 and model.head.n_outputs == 4


def test_imagenet_weights_come_from_the_cache_without_download(torch_home):
    reference = get_model("resnet18", weights=None).state_dict()
    path = weights_cache_file(imagenet_weights("resnet18", "imagenet-v1"))
    assert path == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference, path)
    model = build_model("resnet18", 5, weights="imagenet-v1")
    torch.testing.assert_close(model.backbone.conv1.weight, reference["conv1.weight"])
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, reference["layer4.1.bn2.running_var"])
    assert "IMAGENET1K_V1" in model.weights_source


def test_missing_imagenet_weights_name_the_file_and_folder(torch_home):
    with pytest.raises(FileNotFoundError) as error:
        build_model("resnet50", 5, weights="imagenet-v2")
    message = str(error.value)
    assert "resnet50-11ad3fa6.pth" in message and str(torch_home / "hub" / "checkpoints") in message
    assert "--weights none" in message and "\n" not in message


def test_v2_weights_do_not_exist_for_resnet18():
    with pytest.raises(ValueError, match="resnet18 has no ImageNet V2 weights.*imagenet-v1"):
        build_model("resnet18", 5, weights="imagenet-v2")


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'"):
        build_model("resnet19", 5)


def test_dropout_out_of_range_is_refused():
    with pytest.raises(ValueError, match="dropout must be in"):
        build_model("resnet18", 5, dropout=1.0)


def test_zero_outputs_are_refused():
    with pytest.raises(ValueError, match="n_outputs"):
        build_model("resnet18", 0)


def test_weights_path_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_model("resnet18", 5, weights=str(tmp_path / "nope.pth"))


def test_weights_path_takes_a_torchvision_state_dict(tmp_path):
    reference = get_model("resnet18", weights=None).state_dict()
    torch.save(reference, tmp_path / "r18.pth")
    model = build_model("resnet18", 3, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(get_model("resnet34", weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="not a state dict of this ResNet"):
        build_model("resnet18", 3, weights=str(tmp_path / "r34.pth"))


def test_a_meta_build_checks_weights_and_takes_a_whole_state_without_initialising(tmp_path):
    torch.save(get_model("resnet34", weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="not a state dict of this ResNet"):
        build_model("resnet18", 3, weights=str(tmp_path / "r34.pth"), device="meta")
    reference = build_model("resnet18", 3)
    model = build_model("resnet18", 3, device="meta")
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(reference.state_dict(), assign=True)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), reference.eval()(x))
    with pytest.raises(ValueError, match="device must be None or 'meta'"):
        build_model("resnet18", 3, device="cpu")


def test_a_run_checkpoint_starts_a_model_with_more_classes(tmp_path):
    """Sequential training: backbone and hidden layer carry over; the output layer of a new size starts fresh."""
    previous = build_model("resnet18", 4)
    torch.save({"model": previous.state_dict(), "arch": "resnet18"}, tmp_path / "fold0.pt")
    model = build_model("resnet18", 5, weights=str(tmp_path / "fold0.pt"))
    torch.testing.assert_close(model.backbone.conv1.weight, previous.backbone.conv1.weight)
    torch.testing.assert_close(model.head.hidden[0].weight, previous.head.hidden[0].weight)
    assert model.head.out.out_features == 5
    with pytest.raises(ValueError, match="use --arch resnet18"):
        build_model("resnet34", 5, weights=str(tmp_path / "fold0.pt"))


def test_feature_mlp_is_the_head():
    mlp = build_feature_mlp(512, 5)
    x = torch.randn(3, 512)
    assert mlp(x).shape == (3, 5) and mlp.embed(x).shape == (3, LATENT_DIM)


def test_mtl_decoding_picks_the_most_likely_valid_material():
    labels = LabelSpace.from_materials(["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"])
    matrix = labels.element_matrix
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(scale=3.0, size=(64, 4)), dtype=torch.float32)
    # Invalid combinations too: all elements present, none present, Mo+W+S.
    logits[:3] = torch.tensor([[5.0, 5.0, 5.0, 5.0], [-5.0, -5.0, -5.0, -5.0], [4.0, 4.0, 4.0, -4.0]])
    decoded = class_log_scores(logits, element_matrix=matrix).argmax(dim=1).numpy()
    p = torch.sigmoid(logits).numpy()
    likelihood = np.stack([np.prod(np.where(row == 1, p, 1 - p), axis=1) for row in matrix], axis=1)
    np.testing.assert_array_equal(decoded, likelihood.argmax(axis=1))
    assert set(decoded) <= set(range(len(labels.classes)))
    # A confident valid vector decodes to its material.
    for c, row in enumerate(matrix):
        confident = torch.as_tensor(np.where(row == 1, 6.0, -6.0)[None], dtype=torch.float32)
        assert class_log_scores(confident, element_matrix=matrix).argmax().item() == c


def test_mtc_scores_are_log_softmax():
    logits = torch.randn(5, 3)
    torch.testing.assert_close(class_log_scores(logits).exp().sum(dim=1), torch.ones(5))
    assert class_log_scores(logits).argmax(1).tolist() == logits.argmax(1).tolist()

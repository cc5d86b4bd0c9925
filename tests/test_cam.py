"""Class activation maps: the paper's summed feature maps and Grad-CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tmdafm_core.cam import activation_map, grad_cam, maps_to_cam, overlay
from tmdafm_core.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 3).eval()


def test_paper_map_is_summed_feature_maps_over_their_maximum():
    maps = torch.zeros(1, 4, 2, 2)
    maps[0, :, 0, 0] = 1.0  # hot corner: sum 4
    maps[0, 0, 1, 1] = 2.0  # sum 2
    cam = maps_to_cam(maps, size=(2, 2))
    np.testing.assert_allclose(cam[0].numpy(), [[1.0, 0.0], [0.0, 0.5]], atol=1e-6)


def test_paper_map_is_at_image_size_in_unit_range(model):
    cam = activation_map(model, torch.randn(2, 3, 64, 64), size=(96, 80))
    assert cam.shape == (2, 96, 80)
    assert float(cam.min()) >= 0.0 and torch.allclose(cam.flatten(1).amax(1), torch.ones(2))


def test_upsampled_peak_stays_where_the_feature_map_peaks():
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, :, 3, 0] = 1.0  # bottom-left cell
    cam = maps_to_cam(maps, size=(64, 64))[0]
    row, col = np.unravel_index(int(cam.argmax()), cam.shape)
    assert row >= 48 and col < 16


def test_grad_cam_matches_hooked_gradients(model):
    """Grad-CAM from grad_cam equals the textbook version computed with a hook on the last residual stage."""
    x = torch.randn(1, 3, 64, 64)
    predicted = int(model(x).argmax())  # the predicted class has a non-zero map
    captured = {}

    def keep(_, __, output):
        output.retain_grad()
        captured["maps"] = output

    handle = model.backbone.layer4.register_forward_hook(keep)
    try:
        torch.log_softmax(model(x), dim=1)[0, predicted].backward()  # MtC class score: its log-probability
    finally:
        handle.remove()
        model.zero_grad()
    maps, gradients = captured["maps"].detach(), captured["maps"].grad
    expected = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * maps).sum(1))
    expected = torch.nn.functional.interpolate(expected[:, None], size=(64, 64), mode="bilinear")[:, 0]
    assert expected.max() > 0
    expected = expected / expected.max()
    cam, target = grad_cam(model, x, target=predicted)
    assert target.tolist() == [predicted]
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-4)


def test_grad_cam_explains_the_predicted_class_by_default(model):
    x = torch.randn(2, 3, 32, 32)
    cam, target = grad_cam(model, x)
    assert cam.shape == (2, 32, 32) and target.tolist() == model(x).argmax(1).tolist()
    assert model.training is False


def test_grad_cam_for_mtl_uses_the_element_matrix(model):
    matrix = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32)  # 2 materials over 3 elements
    cam, target = grad_cam(model, torch.randn(1, 3, 32, 32), element_matrix=matrix)
    assert cam.shape == (1, 32, 32) and target.item() in (0, 1)


def test_grad_cam_rejects_a_class_out_of_range(model):
    with pytest.raises(ValueError, match="target class must be in 0..2"):
        grad_cam(model, torch.randn(1, 3, 32, 32), target=3)


def test_overlay_blends_heat_over_the_image():
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    rgb = overlay(image, np.zeros((32, 32)), alpha=0.0)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(image * 255).astype(np.uint8))
    hot = overlay(image, np.ones((32, 32)), alpha=1.0)
    assert (hot == hot[0, 0]).all()


def test_overlay_needs_matching_shapes():
    with pytest.raises(ValueError, match="one shape"):
        overlay(np.zeros((4, 4)), np.zeros((4, 5)))

"""Preprocessing: windowing, the model frame, and exact coordinate round trips."""
import numpy as np
import pytest
import torch

from RadSAMLib.preprocess import SliceFrame, Window, mask_prompt_logits
from conftest import dice


def test_window_maps_soft_tissue_to_unit_range():
    w = Window()
    out = w.apply(np.array([-1000, -160, 40, 240, 3000]))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    with pytest.raises(ValueError):
        Window(100, 100)


@pytest.mark.parametrize("shape", [(101, 122), (512, 512), (128, 37), (3, 300)])
def test_points_round_trip_exactly(shape):
    f = SliceFrame(shape, 256)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (50, 2)) * [shape[1] - 1, shape[0] - 1]
    np.testing.assert_allclose(f.model_to_slice(f.slice_to_model(pts)), pts, atol=1e-9)
    # the longest side fills the frame: its first and last pixel centres map inside [0, 255]
    edge = f.slice_to_model([[max(shape) - 1, max(shape) - 1]])[0]
    assert 254 < edge.max() < 256


def test_image_frame_keeps_aspect_and_pads_bottom_right():
    f = SliceFrame((101, 122), 256)
    assert f.resized_shape == (212, 256)
    img = f.image_to_model(np.ones((101, 122), np.float32))
    assert img.shape == (3, 256, 256)
    assert torch.all(img[:, :212, :] > 0.99) and torch.all(img[:, 212:, :] == 0)


@pytest.mark.parametrize("shape", [(101, 122), (128, 128), (60, 200)])
def test_mask_to_model_and_back_is_faithful(shape):
    f = SliceFrame(shape, 256)
    m = np.zeros(shape, bool)
    m[shape[0] // 4: shape[0] // 2, shape[1] // 3: shape[1] // 3 * 2] = True
    back = f.logits_to_slice(mask_prompt_logits(f.mask_to_model(m))[None])[0] > 0
    assert back.shape == shape
    assert dice(back.numpy(), m) > 0.97
    # quarter-resolution frame (SAM ViT's mask prompt) also lines up
    q = f.mask_to_model(m, size=64)
    assert q.shape == (64, 64)


def test_box_edges_are_pixel_edges():
    f = SliceFrame((100, 100), 200)   # scale 2: pixel x covers model [2x, 2x+1]
    np.testing.assert_allclose(f.box_to_model((10, 20, 30, 40)), [20, 40, 61, 81])

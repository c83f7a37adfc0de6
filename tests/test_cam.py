"""Grad-CAM: the heat map points at the evidence, and the model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from h2a.inference.cam import COLORMAPS, grad_cam, overlay
from h2a.models import create_model

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")

SQ = 16  # square side = one cell of tiny_cnn's 4x4 feature map
BRIGHT, DARK = 2.0, -2.0


def _place(x: torch.Tensor, cell: int, value: float) -> None:
    r, c = divmod(cell, 4)
    x[0, r * SQ:(r + 1) * SQ, c * SQ:(c + 1) * SQ] += value


def _batch(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images, each with a dark distractor square; half also hold a bright square.

    The target is "a bright square is present", so the output depends on that one region
    wherever it lies, and a correct CAM must point at it and not at the distractor.
    """
    x = 0.3 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    y = torch.zeros(n)
    for i in range(n):
        cells = torch.randperm(16, generator=gen)[:2].tolist()
        _place(x[i], cells[0], DARK)
        if i % 2 == 0:
            _place(x[i], cells[1], BRIGHT)
            y[i] = 1.0
    return x, y


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """tiny_cnn trained for a few seconds to tell whether a bright square is present."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create_model("tiny_cnn", "sex", dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        x, y = _batch(gen, 32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _batch(gen, 64)
    with torch.no_grad():
        acc = ((model(x) > 0).float() == y).float().mean().item()
    assert acc > 0.9, f"toy model failed to learn (accuracy {acc:.2f})"
    return model


def _scene(bright: tuple[int, int] | None, dark: tuple[int, int]) -> torch.Tensor:
    x = torch.zeros(1, 1, SIZE, SIZE)
    _place(x[0], dark[0] * 4 + dark[1], DARK)
    if bright is not None:
        _place(x[0], bright[0] * 4 + bright[1], BRIGHT)
    return x


@pytest.mark.parametrize(("bright", "dark"), [((1, 2), (3, 0)), ((2, 0), (0, 3)), ((3, 3), (1, 1))])
def test_cam_peak_lies_on_the_evidence(trained, bright, dark):
    x = _scene(bright, dark)
    with torch.no_grad():
        assert trained(x).item() > 0  # the model sees the evidence
    cam = grad_cam(trained, x)
    assert cam.shape == (1, SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    r, c = np.unravel_index(np.argmax(cam[0]), cam[0].shape)
    r0, c0 = bright[0] * SQ, bright[1] * SQ
    assert r0 <= r < r0 + SQ and c0 <= c < c0 + SQ, f"CAM peak at {(r, c)}, square at {(r0, c0)}"
    # the map is concentrated there: the square outweighs the rest, distractor included
    inside = cam[0, r0:r0 + SQ, c0:c0 + SQ].mean()
    mask = np.ones_like(cam[0], dtype=bool)
    mask[r0:r0 + SQ, c0:c0 + SQ] = False
    assert inside > 3 * cam[0][mask].mean()
    d0, e0 = dark[0] * SQ, dark[1] * SQ
    assert inside > 3 * cam[0, d0:d0 + SQ, e0:e0 + SQ].mean()


def test_cam_batch_eval_state_and_no_leftovers(trained):
    model = trained
    model.train()  # grad_cam evaluates in eval mode and restores the caller's mode
    layer = model.cam_target_layer
    hooks = (len(layer._forward_hooks), len(layer._backward_hooks), len(layer._forward_pre_hooks))
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    bn = model.backbone[0][1]
    running = bn.running_mean.clone()
    x = torch.cat([_scene((1, 2), (3, 0)), _scene(None, (3, 3))])
    with torch.no_grad():  # the caller's no_grad does not stop it
        cam = grad_cam(model, x)
    assert cam.shape == (2, SIZE, SIZE)
    assert ((cam >= 0) & (cam <= 1)).all()
    assert model.training
    assert (len(layer._forward_hooks), len(layer._backward_hooks), len(layer._forward_pre_hooks)) == hooks
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads):  # parameter .grad untouched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert torch.equal(bn.running_mean, running)  # no BN statistics updated
    model.eval()
    with torch.inference_mode():
        again = grad_cam(model, x[0])  # (C, H, W) accepted; inference tensors too
    assert again.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(again[0], cam[0], atol=1e-5)


def test_cam_concurrent_calls_on_one_model(trained):
    """Streamlit sessions share one cached model across threads: results must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    scenes = [_scene((1, 2), (3, 0)), _scene((2, 0), (0, 3)), _scene((3, 3), (1, 1))] * 3
    serial = [grad_cam(trained, s) for s in scenes]
    with ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda s: grad_cam(trained, s), scenes))
    for a, b in zip(serial, parallel):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cam_with_sex_input_and_frozen_model():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", "boneage", use_sex=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 1, 48, 40)
    cam = grad_cam(model, x, torch.tensor([0.0, 1.0]))
    assert cam.shape == (2, 48, 40)
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="pass sex"):
        grad_cam(model, x)


def test_cam_negative_shows_the_other_side(trained):
    x = _scene((1, 2), (3, 0))
    pos = grad_cam(trained, x)
    neg = grad_cam(trained, x, negative=True)
    assert pos.shape == neg.shape
    assert not np.allclose(pos, neg)


def test_overlay_shapes_and_types():
    gray = (np.arange(80 * 60) % 256).astype(np.uint8).reshape(80, 60)
    cam = np.random.default_rng(0).random((80, 60)).astype(np.float32)
    rgb = overlay(gray, cam)
    assert rgb.shape == (80, 60, 3) and rgb.dtype == np.uint8
    # float gray in [0, 1] gives the same picture; a CAM at another size is resized
    same = overlay(gray.astype(np.float32) / 255.0, cam)
    assert np.abs(same.astype(int) - rgb.astype(int)).max() <= 1
    small = overlay(gray, cam[::4, ::4], alpha=0.7, colormap="inferno")
    assert small.shape == (80, 60, 3)
    # alpha 0 is the radiograph itself
    plain = overlay(gray, cam, alpha=0.0)
    assert np.array_equal(plain[..., 0], gray) and np.array_equal(plain[..., 2], gray)
    # jet: high CAM is red, low CAM is blue
    hot = overlay(np.zeros((4, 4), np.uint8), np.ones((4, 4)), alpha=1.0)
    cold = overlay(np.zeros((4, 4), np.uint8), np.zeros((4, 4)), alpha=1.0)
    assert hot[0, 0, 0] > hot[0, 0, 2] and cold[0, 0, 2] > cold[0, 0, 0]
    assert "jet" in COLORMAPS
    with pytest.raises(ValueError, match="colormap"):
        overlay(gray, cam, colormap="rainbow-unicorn")
    with pytest.raises(ValueError, match="alpha"):
        overlay(gray, cam, alpha=1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cam_on_cuda_under_autocast():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", "boneage").cuda().eval()
    x = torch.randn(2, 1, 64, 64)  # a CPU tensor is moved to the model's device
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        cam = grad_cam(model, x, torch.tensor([1.0, 0.0]))
    assert cam.shape == (2, 64, 64) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1

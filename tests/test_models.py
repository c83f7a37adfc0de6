"""Model registry: every architecture (H2A's own and timm's) builds, runs, trains and folds;
weights come from the documented sources; the timm Lite0 matches the hand-written one."""

from __future__ import annotations

import pytest
import torch

from h2a.models import (
    H2AModel,
    ModelInfo,
    PretrainedWeightsUnavailable,
    create_model,
    fold_batchnorm,
    freeze_first,
    list_models,
    model_info,
    pretrained_weights_path,
    set_drop_path,
)
from h2a.models import weights as weights_mod

B = 2
TIMM_NAMES = ("convnext_atto", "resnet18", "efficientnetv2_rw_s")
SCALABLE = ("inception_v3", "tiny_cnn")  # width_mult applies (checked against the registry below)
# every architecture at width 1 (inception_v3 is timm's there), plus the hand-written
# width-scaled trunks narrowed (inception_v3 below width 1 is the seeds' ablation trunk)
CASES = [pytest.param(n, 1.0, id=n) for n in list_models()] + [
    pytest.param(n, 0.25, id=f"{n}-w0.25") for n in SCALABLE]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _size(name: str) -> int:
    return max(64, model_info(name).min_size + 21)  # inception_v3 needs >= 75 px -> 96


@pytest.fixture(autouse=True)
def _isolated_offline(tmp_path, monkeypatch):
    """Never read or write the real workspace (pretrained files live there) and never
    touch the network: the hub probe says unreachable."""
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights_mod, "hub_reachable", lambda timeout=2.0: False)
    import h2a.models.timm_backbones as tb

    monkeypatch.setattr(tb, "hub_reachable", lambda timeout=2.0: False)


def test_registry_lists_h2a_and_timm_names():
    names = list_models()
    for expected in ("tiny_cnn", "inception_v3", "efficientnet_lite0", *TIMM_NAMES):
        assert expected in names
    for name in names:
        info = model_info(name)
        assert isinstance(info, ModelInfo) and info.name == name and info.num_features > 0
    lite = model_info("efficientnet_lite0")
    assert lite.pretrained_available and not lite.needs_weights_file and lite.has_drop_path
    assert lite.norm(1) == ((0.5,), (0.5,))  # from timm's tf_efficientnet_lite0 config
    assert model_info("resnet18").norm(3)[0] == (0.485, 0.456, 0.406)
    assert not model_info("resnet50").pretrained_available  # nothing in the tmp workspace
    assert str(pretrained_weights_path("resnet50")) in model_info("resnet50").weights_hint
    assert model_info("inception_v3").width_scalable and not model_info("inception_v3").has_drop_path
    assert not model_info("convnext_atto").width_scalable
    assert {n for n in names if model_info(n).width_scalable} == set(SCALABLE)
    assert model_info("inception_v3").norm(1) == ((0.5,), (0.5,))  # timm's inception_v3 config
    # any timm name works even if not listed
    assert model_info("regnetx_002").source == "timm"
    with pytest.raises(ValueError, match="did you mean convnext_atto"):
        create_model("convnxt_atto")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_net_at_all")
    with pytest.raises(ValueError, match="unknown task"):
        create_model("tiny_cnn", task="age")
    with pytest.raises(ValueError, match="fixed width"):
        create_model("resnet18", width_mult=0.5)


@pytest.mark.parametrize("use_sex", [True, False])
@pytest.mark.parametrize(("name", "width"), CASES)
def test_forward_backward(name: str, width: float, use_sex: bool):
    torch.manual_seed(0)
    model = create_model(name, "boneage", use_sex=use_sex, width_mult=width)
    assert isinstance(model, H2AModel)
    assert (model.arch, model.task, model.use_sex) == (name, "boneage", use_sex)
    if width == 1.0:
        assert model.num_features == model_info(name).num_features
    size = _size(name)
    x = torch.randn(B, 1, size, size)
    sex = torch.tensor([0.0, 1.0]) if use_sex else None
    model.train()
    out = model(x, sex)
    assert out.shape == (B,) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        fmap = model.forward_features(x)
        again = model.forward_head(fmap, sex)
        emb = model.embed(x)
    assert fmap.ndim == 4 and fmap.shape[:2] == (B, model.num_features)
    assert emb.shape == (B, model.num_features) and again.shape == (B,)
    assert torch.isfinite(fmap).all() and torch.isfinite(again).all()
    # forward_features is, by contract, the output of cam_target_layer (what Grad-CAM explains)
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


def test_sex_task_and_three_channels():
    model = create_model("convnext_atto", "sex", in_chans=3)
    assert model.use_sex is False
    assert model(torch.randn(B, 3, 64, 64)).shape == (B,)


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
    model.eval()
    with torch.no_grad():
        torch.nn.init.constant_(model.sex_branch[0].weight, 1.0)
        assert not torch.allclose(model(x, torch.zeros(B)), model(x, torch.ones(B)))


def test_width_mult_scales_hand_written_trunks():
    from h2a.models import InceptionV3Trunk

    assert create_model("tiny_cnn", width_mult=0.5).num_features == 64
    full = create_model("inception_v3", use_sex=False)
    half = create_model("inception_v3", use_sex=False, width_mult=0.5)
    assert type(full.backbone.model).__name__ == "InceptionV3"  # timm's at width 1
    assert isinstance(half.backbone, InceptionV3Trunk)  # the ablation's hand-written trunk
    assert sum(p.numel() for p in half.parameters()) < 0.5 * sum(p.numel() for p in full.parameters())
    for model in (full, half):
        with pytest.raises(ValueError, match="75 px"):
            model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="only for width_mult=1.0"):
        create_model("inception_v3", pretrained=True, width_mult=0.5)


def test_inception_v3_matches_torchvision_layout():
    """At width 1 the hand-written trunk has torchvision's (and timm's) names and shapes:
    what runs saved before timm's inception_v3 hold."""
    import timm
    from torchvision.models.inception import Inception3

    from h2a.models import InceptionV3Trunk

    tv = Inception3(aux_logits=False, init_weights=False).state_dict()
    mine = {k: v.shape for k, v in InceptionV3Trunk(in_chans=3).state_dict().items()}
    assert {k: v.shape for k, v in tv.items() if not k.startswith("fc.")} == mine
    with torch.device("meta"):
        tm = timm.create_model("inception_v3", num_classes=0, global_pool="").state_dict()
    assert {k: v.shape for k, v in tm.items()} == mine


def test_old_inception_run_state_dict_loads(tmp_path):
    """A run saved when width 1 was the hand-written trunk (torchvision names directly under
    backbone.) loads strictly into today's inception_v3 (timm's) and predicts the same."""
    from h2a.models import Backbone, InceptionV3Trunk

    torch.manual_seed(0)
    config = {"name": "inception_v3", "task": "boneage", "use_sex": True, "in_chans": 1,
              "width_mult": 1.0, "dropout": 0.2}
    trunk = InceptionV3Trunk(in_chans=1, width_mult=1.0)
    with torch.no_grad():  # trained-looking BN statistics, so a misplaced tensor shows
        for bn in (m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    old = H2AModel("inception_v3", "boneage", Backbone(trunk, trunk.num_features, cam_target="Mixed_7c"),
                   use_sex=True, dropout=0.2, config=config).eval()
    torch.save(old.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert "backbone.Conv2d_1a_3x3.conv.weight" in state  # the old layout
    model = create_model(**old.config)
    model.load_state_dict(state, strict=True)
    model.eval()
    assert type(model.backbone.model).__name__ == "InceptionV3"
    x, sex = torch.randn(2, 1, 96, 96), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        assert (model.forward_features(x) - old.forward_features(x)).abs().max().item() < 1e-4
        assert (model(x, sex) - old(x, sex)).abs().max().item() < 1e-4


# --------------------------------------------------------------------------- Lite0 on timm


def _reference_lite0(in_chans: int = 1):
    """Today's hand-written trunk with the package weights, stem summed to grey."""
    from tests.lite0_reference import EfficientNetLite0Trunk

    state = weights_mod.read_state_dict(weights_mod.lite0_package_file(), "efficientnet_lite0")
    ref = EfficientNetLite0Trunk(in_chans=3)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")}, strict=True)
    if in_chans == 1:
        ref._conv_stem.weight = torch.nn.Parameter(ref._conv_stem.weight.sum(1, keepdim=True))
        ref._conv_stem.in_channels = 1
    return ref.eval()


def test_lite0_remap_matches_hand_written_trunk():
    torch.manual_seed(0)
    ref = _reference_lite0()
    model = create_model("efficientnet_lite0", pretrained=True, use_sex=False).eval()
    assert type(model.backbone.model).__name__ == "EfficientNet"  # timm's
    x = torch.randn(4, 1, 96, 112)  # odd-ish sizes exercise TF "SAME" asymmetric padding
    with torch.no_grad():
        diff = (ref(x) - model.forward_features(x)).abs().max().item()
    assert diff < 1e-4


def test_old_lite0_run_state_dict_loads():
    """Runs saved before timm have the hand-written trunk's keys under backbone.: they load."""
    ref = _reference_lite0()
    new = create_model("efficientnet_lite0", use_sex=True).eval()
    old = {f"backbone.{k}": v for k, v in ref.state_dict().items()}
    old.update({k: v for k, v in new.state_dict().items() if not k.startswith("backbone.")})
    model = create_model("efficientnet_lite0", use_sex=True)
    model.load_state_dict(old, strict=True)
    model.eval()
    x, sex = torch.randn(2, 1, 64, 64), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        assert (model.forward_features(x) - ref(x)).abs().max().item() < 1e-4
        assert torch.isfinite(model(x, sex)).all()


def test_old_resnet_run_state_dict_loads():
    """The pre-timm resnet trunk had torchvision's names directly under backbone.; timm's
    ResNet uses the same names, so old runs load."""
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    tv.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model = create_model("resnet18", use_sex=False)
    old = {f"backbone.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    old.update({k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")})
    model.load_state_dict(old, strict=True)
    assert torch.equal(model.backbone.model.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)


# --------------------------------------------------------------------------- weights sources


def test_offline_without_weights_names_the_file():
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        create_model("convnext_atto", pretrained=True)
    msg = str(err.value)
    assert str(pretrained_weights_path("convnext_atto")) in msg
    assert ".safetensors" in msg and "--weights" in msg and "--no-pretrained" in msg
    with pytest.raises(PretrainedWeightsUnavailable, match="inception_v3"):
        create_model("inception_v3", pretrained=True)


def test_workspace_weights_file_loads_and_adapts_to_grey():
    import timm

    path = pretrained_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)  # RGB, with classifier
    torch.save(reference.state_dict(), path)
    assert model_info("resnet18").pretrained_available
    model = create_model("resnet18", pretrained=True, in_chans=1)
    net = model.backbone.model
    assert torch.equal(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.allclose(net.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    # a file for another architecture is refused with a message, not a traceback from torch
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not match"):
        create_model("resnet18", pretrained=True)


def test_inception_v3_torchvision_weights_file_loads():
    """torchvision's inception_v3 file (auxiliary classifier included) loads into timm's
    inception_v3 from the workspace, stem summed to grey."""
    from torchvision.models.inception import Inception3

    torch.manual_seed(3)
    tv = Inception3(aux_logits=True, init_weights=False)
    path = pretrained_weights_path("inception_v3")
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    assert model_info("inception_v3").pretrained_available
    net = create_model("inception_v3", pretrained=True).backbone.model
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, tv.Mixed_7c.branch_pool.conv.weight)
    assert torch.allclose(net.Conv2d_1a_3x3.conv.weight, tv.Conv2d_1a_3x3.conv.weight.sum(1, keepdim=True))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_flag_file_loads(tmp_path, suffix: str):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("convnext_atto", pretrained=False)
    path = tmp_path / f"convnext_atto{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    else:
        torch.save(reference.state_dict(), path)
    model = create_model("convnext_atto", pretrained=True, weights=str(path))
    net = model.backbone.model
    assert torch.equal(net.stages[3].blocks[1].mlp.fc2.weight, reference.stages[3].blocks[1].mlp.fc2.weight)
    assert net.stem[0].weight.shape[1] == 1
    # without pretrained, --weights is not read
    assert not torch.equal(create_model("convnext_atto", weights=str(path)).backbone.model.stem[0].weight,
                           net.stem[0].weight)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        create_model("convnext_atto", pretrained=True, weights=str(tmp_path / "missing.pth"))


def test_lite0_workspace_file_in_either_layout(tmp_path):
    """A Lite0 file in lukemelas or timm layout, from --weights, loads like the package's."""
    pkg = create_model("efficientnet_lite0", pretrained=True, use_sex=False).eval()
    timm_file = tmp_path / "lite0_timm.pth"
    torch.save(pkg.backbone.model.state_dict(), timm_file)
    again = create_model("efficientnet_lite0", pretrained=True, use_sex=False, weights=str(timm_file)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(pkg.forward_features(x), again.forward_features(x))


# --------------------------------------------------------------------------- knobs


def test_set_drop_path_scales_stochastic_depth_and_only_acts_in_training():
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", dropout=0.0)
    from timm.layers import DropPath

    layers = [m for m in model.modules() if isinstance(m, DropPath)]
    assert set_drop_path(model, 0.4) == len(layers) == 15  # 16 blocks, the first never drops
    assert layers[0].drop_prob == pytest.approx(0.4 / 16)
    assert layers[-1].drop_prob == pytest.approx(0.4 * 15 / 16)
    x, sex = torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x, sex), model(x, sex))  # random blocks skipped
        assert set_drop_path(model, 0.0) == 15
        assert torch.equal(model(x, sex), model(x, sex))  # nothing random left
    assert set_drop_path(create_model("convnext_atto"), 0.1) > 0
    assert set_drop_path(create_model("tiny_cnn"), 0.1) == 0
    assert set_drop_path(create_model("inception_v3", width_mult=0.25), 0.1) == 0


@pytest.mark.parametrize(("name", "width"), [("efficientnet_lite0", 1.0), ("convnext_atto", 1.0), ("tiny_cnn", 0.25),
                                           ("inception_v3", 1.0), ("inception_v3", 0.25)])
def test_freeze_first(name: str, width: float):
    model = create_model(name, width_mult=width)
    assert freeze_first(model, 0) == 0
    assert freeze_first(model, 2) == 2
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("head."))
    if name == "efficientnet_lite0":  # stem conv + BN and the first block
        assert {n.split(".")[2] for n in frozen} == {"conv_stem", "bn1", "blocks"}
        assert all(n.startswith("backbone.model.blocks.0.0.") for n in frozen if ".blocks." in n)
    if name == "inception_v3":  # the stem convolutions (timm's groups; the hand-written trunk's first two)
        stem = {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"}
        assert {n.split(".")[-3] for n in frozen} <= stem


@pytest.mark.parametrize(("name", "width"), CASES)
def test_fold_batchnorm_keeps_eval_outputs(name: str, width: float):
    """Folding removes every BatchNorm (timm's BatchNormAct2d keeps its activation) and
    changes no eval-mode prediction. In float64: deep nets with random BN statistics
    amplify float32 rounding block after block, which would hide a real folding error."""
    torch.manual_seed(0)
    model = create_model(name, "boneage", width_mult=width)
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # statistics and affine terms far from the identity, so a wrong fold shows
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    model.eval().double()
    size = _size(name)
    x, sex = torch.randn(3, 1, size, size, dtype=torch.float64), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        before_map = model.forward_features(x)
        before = model(x, sex)
        assert fold_batchnorm(model.backbone, x[:1]) == len(bns)
        after_map = model.forward_features(x)
        after = model(x, sex)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules())
    scale = before_map.abs().max().item()
    assert (before_map - after_map).abs().max().item() <= 1e-4 * max(scale, 1.0)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * max(before.abs().max().item(), 1.0))


def test_fold_keeps_timm_activation():
    """BatchNormAct2d = BN + ReLU6 in Lite0: after folding the ReLU6 must still clip."""
    model = create_model("efficientnet_lite0", use_sex=False).eval()
    fold_batchnorm(model.backbone, torch.zeros(1, 1, 64, 64))
    assert isinstance(model.backbone.model.bn1, torch.nn.ReLU6)
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 1, 64, 64) * 10)
    assert fmap.min() >= 0 and fmap.max() <= 6

"""PreprocessConfig, prepare (geometry + contrast), augmentation, the model-input transform,
saved configs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from h2a.data.preprocess import (
    PHOTOMETRIC_FIELDS,
    PreprocessConfig,
    list_configs,
    load_config,
    prepare,
    save_config,
    standardize_intensity,
)
from h2a.data.transforms import (
    Photometric,
    add_noise,
    array_input,
    augment_samples,
    augmentation,
    blur_or_sharpen,
    downscale_upscale,
    gamma_contrast,
    geometric_augmentation,
    input_norm,
    jpeg_roundtrip,
    to_input,
)
from h2a.models import model_info


def tall_white(h: int = 200, w: int = 100) -> np.ndarray:
    return np.ones((h, w), dtype=np.float32)


def low_contrast(h: int = 240, w: int = 120, seed: int = 0) -> np.ndarray:
    """A dim, flat image (values 0.40-0.50) with some structure, tall so padding appears."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.40 + 0.05 * (yy / h) + 0.03 * (xx / w) + rng.uniform(0, 0.02, (h, w))
    return img.astype(np.float32)


# ---------------------------------------------------------------- geometry

@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
@pytest.mark.parametrize("shape", [(200, 100), (100, 200), (37, 53), (2000, 1500), (64, 64)])
def test_every_resize_mode_gives_a_square_uint8(mode, shape):
    cfg = PreprocessConfig(size=64, resize=mode)
    out = prepare(np.random.default_rng(1).random(shape, dtype=np.float32), cfg)
    assert out.shape == (64, 64) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_pad_keeps_aspect_with_black_bars_on_the_sides():
    out = prepare(tall_white(), PreprocessConfig(size=64, resize="pad"))
    # 200x100 -> 64x32 content centred: columns 16..47 white, the rest black.
    assert (out[:, :16] == 0).all() and (out[:, 48:] == 0).all()
    assert (out[:, 16:48] == 255).all()


def test_pad_wide_image_gets_bars_top_and_bottom():
    out = prepare(tall_white(100, 200), PreprocessConfig(size=64, resize="pad"))
    assert (out[:16] == 0).all() and (out[48:] == 0).all() and (out[16:48] == 255).all()


def test_crop_fills_and_keeps_the_centre():
    img = tall_white(200, 100)
    img[:50] = 0.0  # top and bottom quarters black: outside the centred 100x100 square
    img[150:] = 0.0
    out = prepare(img, PreprocessConfig(size=64, resize="crop"))
    assert (out == 255).all()
    squashed = prepare(img, PreprocessConfig(size=64, resize="squash"))
    assert (squashed[:10] == 0).all() and (squashed[-10:] == 0).all()


def test_squash_fills_everything():
    assert (prepare(tall_white(), PreprocessConfig(size=64, resize="squash")) == 255).all()


def test_prepare_accepts_uint8_and_channel_axis():
    u8 = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    cfg = PreprocessConfig(size=64, resize="squash")
    assert np.array_equal(prepare(u8, cfg), u8)
    assert np.array_equal(prepare(u8[:, :, None], cfg), u8)
    with pytest.raises(ValueError, match="2-D grayscale"):
        prepare(np.zeros((4, 4, 3), np.float32), cfg)


# ---------------------------------------------------------------- contrast

@pytest.mark.parametrize("contrast", ["hist_eq", "clahe"])
def test_contrast_raises_std_of_low_contrast_image_and_ignores_padding(contrast):
    img = low_contrast()
    plain = prepare(img, PreprocessConfig(size=128, resize="pad"))
    enhanced = prepare(img, PreprocessConfig(size=128, resize="pad", contrast=contrast))
    # 240x120 -> content 128x64 in columns 32..95
    content = (slice(None), slice(32, 96))
    assert (enhanced[:, :32] == 0).all() and (enhanced[:, 96:] == 0).all()
    # CLAHE is clip-limited (2.0) by design, so it raises contrast less than hist_eq.
    gain = 3.0 if contrast == "hist_eq" else 1.1
    assert enhanced[content].std() > gain * plain[content].std()
    # The enhancement is computed on the content alone, as if there were no padding.
    inner = np.ascontiguousarray(plain[content])
    if contrast == "hist_eq":
        expected = cv2.equalizeHist(inner)
    else:
        expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(inner)
    assert np.array_equal(enhanced[content], expected)
    # ... which differs from equalising the padded square (the bug this design avoids).
    if contrast == "hist_eq":
        assert not np.array_equal(cv2.equalizeHist(plain)[content], expected)


def test_contrast_applies_in_squash_and_crop_too():
    img = low_contrast()
    for mode in ("squash", "crop"):
        a = prepare(img, PreprocessConfig(size=64, resize=mode))
        for contrast, gain in (("hist_eq", 3.0), ("clahe", 1.1)):
            b = prepare(img, PreprocessConfig(size=64, resize=mode, contrast=contrast))
            assert b.std() > gain * a.std()


# ---------------------------------------------------------------- config

def test_cache_key_only_follows_deterministic_fields():
    base = PreprocessConfig()
    same = [
        PreprocessConfig(flip=False, shift=0.0, rotation=0.0, zoom=0.0),
        PreprocessConfig(normalize="per_image"),
        PreprocessConfig(clahe_clip=4.0, clahe_grid=4),  # CLAHE params unused without CLAHE
    ]
    for cfg in same:
        assert cfg.cache_key() == base.cache_key()
    different = [
        PreprocessConfig(size=128),
        PreprocessConfig(resize="crop"),
        PreprocessConfig(contrast="hist_eq"),
        PreprocessConfig(contrast="clahe"),
    ]
    keys = {cfg.cache_key() for cfg in different} | {base.cache_key()}
    assert len(keys) == len(different) + 1
    clahe = PreprocessConfig(contrast="clahe")
    assert PreprocessConfig(contrast="clahe", clahe_clip=3.0).cache_key() != clahe.cache_key()
    assert PreprocessConfig(contrast="clahe", clahe_grid=4).cache_key() != clahe.cache_key()
    assert len(base.cache_key()) <= 16
    # int given for a float field hashes like the float
    assert PreprocessConfig(contrast="clahe", clahe_clip=2).cache_key() == clahe.cache_key()


def test_dict_round_trip_ignores_unknown_keys():
    cfg = PreprocessConfig(size=320, resize="crop", contrast="clahe", clahe_clip=3.5,
                           normalize="per_image", flip=False, zoom=0.2)
    d = json.loads(json.dumps(cfg.to_dict()))
    d["future_field"] = 1
    assert PreprocessConfig.from_dict(d) == cfg
    assert PreprocessConfig.from_dict({"size": 128.0}).size == 128


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"size": 0}, "size .*must be an integer from 16 to 2048"),
        ({"size": "256"}, "size .*must be an integer"),
        ({"size": 100.5}, "size .*must be an integer"),
        ({"resize": "stretch"}, "resize .*must be one of squash, pad, crop"),
        ({"contrast": "gamma"}, "contrast must be one of none, hist_eq, clahe"),
        ({"clahe_clip": 0}, "clahe_clip .*must be a number > 0 and <= 100"),
        ({"clahe_grid": 0}, "clahe_grid .*must be an integer from 1 to 64"),
        ({"normalize": "zscore"}, "normalize .*must be one of imagenet, per_image"),
        ({"flip": "yes"}, "flip .*must be true or false"),
        ({"shift": 0.9}, "shift .*must be a number from 0 to 0.5"),
        ({"rotation": -5}, "rotation .*must be a number from 0 to 180"),
        ({"zoom": 1.5}, "zoom .*must be a number >= 0 and < 1"),
        ({"zoom": float("nan")}, "zoom .*must be a number"),
    ],
)
def test_from_dict_rejects_bad_values_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_dict(bad)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as info:
        PreprocessConfig.from_dict({"resize": "x", "contrast": "y"})
    assert "resize" in str(info.value) and "contrast" in str(info.value)


def test_from_dict_needs_a_mapping():
    with pytest.raises(ValueError, match="mapping"):
        PreprocessConfig.from_dict([1, 2])


# ---------------------------------------------------------------- model input (h2a.data.transforms)

@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18"])
def test_imagenet_norm_comes_from_the_architecture(arch):
    """The mean/std are the architecture's registry values (Lite0: 0.5/0.5), not a constant."""
    norm = input_norm(arch, PreprocessConfig(normalize="imagenet"))
    mean, std = model_info(arch).norm(1)
    assert norm == (pytest.approx(mean[0]), pytest.approx(std[0]))
    x = torch.full((2, 1, 8, 8), 128, dtype=torch.uint8)
    y = to_input(x, norm)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y, torch.full_like(y, (128 / 255 - norm[0]) / norm[1]), atol=1e-6)


def test_lite0_input_is_not_normalised_with_the_grey_imagenet_constants():
    assert input_norm("efficientnet_lite0", PreprocessConfig()) == (pytest.approx(0.5), pytest.approx(0.5))
    y = to_input(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), input_norm("efficientnet_lite0", PreprocessConfig()))
    assert torch.allclose(y.flatten(), torch.tensor([-1.0, 1.0]))


def test_per_image_gives_zero_mean_unit_std_per_sample():
    assert input_norm("efficientnet_lite0", PreprocessConfig(normalize="per_image")) is None
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8, generator=g)
    x[1] = x[1] // 4  # a darker sample must be normalised on its own stats
    y = to_input(x, None)
    for i in range(3):
        assert abs(y[i].mean().item()) < 1e-5
        assert abs(y[i].std().item() - 1) < 1e-4
    flat = to_input(torch.full((1, 1, 8, 8), 7, dtype=torch.uint8), None)
    assert torch.isfinite(flat).all() and (flat == 0).all()


def test_array_input_matches_to_input_for_images_and_batches():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    norm = input_norm("efficientnet_lite0", PreprocessConfig())
    cpu = torch.device("cpu")
    one = array_input(batch[0], norm, cpu)
    many = array_input(batch, norm, cpu)
    assert one.shape == (1, 1, 8, 8) and many.shape == (3, 1, 8, 8)
    assert torch.equal(many, to_input(torch.from_numpy(batch)[:, None], norm))
    assert torch.equal(one[0], many[0])


def test_to_input_leaves_its_input_untouched():
    u8 = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    before = u8.clone()
    for norm in (input_norm("efficientnet_lite0", PreprocessConfig()), None):
        y = to_input(u8, norm)
        assert torch.equal(u8, before) and y.dtype == torch.float32


# ---------------------------------------------------------------- augmentation

def test_augmentation_none_when_everything_is_off():
    assert augmentation(PreprocessConfig(flip=False, shift=0, rotation=0, zoom=0)) is None
    assert augmentation(PreprocessConfig(flip=True, shift=0, rotation=0, zoom=0)) is not None


def test_augmentation_keeps_shape_and_dtype_for_single_and_batch():
    tf = augmentation(PreprocessConfig(size=32))
    one = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)
    batch = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    for x in (one, batch):
        y = tf(x)
        assert y.shape == x.shape and y.dtype == torch.uint8


def test_augment_samples_deterministic_by_seed_and_varied():
    img = prepare(low_contrast(), PreprocessConfig(size=64, contrast="hist_eq"))
    cfg = PreprocessConfig(size=64)
    a = augment_samples(img, cfg, n=6, seed=7)
    b = augment_samples(img, cfg, n=6, seed=7)
    c = augment_samples(img, cfg, n=6, seed=8)
    assert len(a) == 6 and all(x.shape == (64, 64) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    distinct = {x.tobytes() for x in a}
    assert len(distinct) == 6
    assert all(not np.array_equal(x, img) for x in a)


def test_augment_samples_does_not_consume_global_rng():
    img = np.zeros((32, 32), np.uint8)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    augment_samples(img, PreprocessConfig(size=32), n=4, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_augment_samples_without_augmentation_returns_copies():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = augment_samples(img, PreprocessConfig(size=16, flip=False, shift=0, rotation=0, zoom=0), n=3)
    assert len(out) == 3 and all(np.array_equal(o, img) for o in out)


# ---------------------------------------------------------------- photometric augmentation

def radiograph_like(size: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 with a black border, smooth mid-tones and sharp edges (bones), like a prepared hand."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 90 + 60 * np.sin(xx / 7) * np.cos(yy / 11) + rng.normal(0, 3, (size, size))
    img[size // 4: 3 * size // 4, size // 3: size // 3 + 8] = 230  # a bright "bone" with hard edges
    img[:4] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def laplacian_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F).var())


def test_photometric_augmentation_is_off_by_default():
    cfg = PreprocessConfig()
    assert all(getattr(cfg, name) == 0 for name in PHOTOMETRIC_FIELDS)
    assert not cfg.photometric and Photometric.from_config(cfg) is None
    assert not any(isinstance(op, Photometric) for op in augmentation(cfg).transforms)
    off = PreprocessConfig(flip=False, shift=0, rotation=0, zoom=0)
    assert augmentation(off) is None
    on = PreprocessConfig(flip=False, shift=0, rotation=0, zoom=0, aug_jpeg=0.5)
    assert on.photometric and isinstance(augmentation(on).transforms[0], Photometric)


def test_gamma_below_one_brightens_mid_tones_and_above_darkens():
    img = radiograph_like()
    mid = (img > 60) & (img < 200)
    assert gamma_contrast(img, 0.6)[mid].mean() > img[mid].mean() + 10
    assert gamma_contrast(img, 1.6)[mid].mean() < img[mid].mean() - 10
    assert np.array_equal(gamma_contrast(img, 1.0), img)
    assert (gamma_contrast(img, 0.6)[img == 0] == 0).all()  # black stays black


def test_contrast_factor_spreads_or_narrows_the_grey_levels():
    img = radiograph_like()
    fg = img > 0
    assert gamma_contrast(img, 1.0, 1.4)[fg].std() > img[fg].std() * 1.2
    assert gamma_contrast(img, 1.0, 0.6)[fg].std() < img[fg].std() * 0.8


def test_blur_lowers_and_sharpening_raises_the_laplacian_variance():
    img = radiograph_like()
    assert laplacian_var(blur_or_sharpen(img, 1.0)) < 0.5 * laplacian_var(img)
    assert laplacian_var(blur_or_sharpen(img, -1.0)) > 1.2 * laplacian_var(img)
    assert np.array_equal(blur_or_sharpen(img, 0.01), img)


def test_downscale_upscale_loses_detail_and_keeps_the_shape():
    img = radiograph_like()
    for down in (cv2.INTER_NEAREST, cv2.INTER_AREA, cv2.INTER_CUBIC):
        out = downscale_upscale(img, 0.4, down, cv2.INTER_LINEAR)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert laplacian_var(out) < laplacian_var(img)
    assert downscale_upscale(img, 1.0) is img


def test_jpeg_q30_differs_but_keeps_the_mean():
    img = radiograph_like()
    out = jpeg_roundtrip(img, 30)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
    assert np.abs(out.astype(float) - img).mean() > 1.0
    assert abs(float(out.mean()) - float(img.mean())) < 1.5


def test_noise_raises_the_variance_and_spares_black():
    img = np.full((64, 64), 120, np.uint8)
    img[:8] = 0
    out = add_noise(img, np.random.default_rng(0).normal(0, 8, img.shape))
    assert out[8:].std() > 6 and img[8:].std() == 0
    assert (out[:8] == 0).all()


def test_photometric_per_image_deterministic_under_the_torch_seed():
    cfg = PreprocessConfig(size=48, flip=False, shift=0, rotation=0, zoom=0, aug_gamma=0.6, aug_contrast=0.3,
                           aug_blur=1.0, aug_downscale=0.5, aug_noise=8.0, aug_jpeg=0.5)
    tf = augmentation(cfg)
    one = torch.from_numpy(radiograph_like(48)).unsqueeze(0)
    batch = one.unsqueeze(0).repeat(4, 1, 1, 1)
    torch.manual_seed(3)
    a = tf(batch)
    torch.manual_seed(3)
    b = tf(batch)
    assert a.shape == batch.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    assert len({a[i].numpy().tobytes() for i in range(4)}) == 4  # each image its own draws
    assert not torch.equal(tf(one), one)


def test_training_dataset_applies_photometric_augmentation(tmp_path):
    from h2a.data.cache import CachedImageDataset, TensorCache

    imgs = np.stack([radiograph_like(32, seed=i) for i in range(3)])
    cfg = PreprocessConfig(size=32, flip=False, shift=0, rotation=0, zoom=0, aug_noise=20.0)
    cache = TensorCache(path=tmp_path, ids=["a", "b", "c"], images=imgs, ok=np.ones(3, bool), errors={},
                        config=cfg, fingerprint="x")
    ds = CachedImageDataset(cache, np.arange(3), transform=augmentation(cfg))
    torch.manual_seed(0)
    x = ds[1]["image"]
    torch.manual_seed(0)
    assert torch.equal(ds[1]["image"], x)
    assert x.dtype == torch.uint8 and not np.array_equal(x[0].numpy(), imgs[1])


def test_augment_samples_shows_photometric_only_when_asked():
    img = radiograph_like(48)
    cfg = PreprocessConfig(size=48, flip=False, shift=0, rotation=0, zoom=0, aug_gamma=0.8)
    assert geometric_augmentation(cfg) is None
    assert all(np.array_equal(s, img) for s in augment_samples(img, cfg, n=3))  # TTA: geometric only
    shown = augment_samples(img, cfg, n=3, seed=1, photometric=True)
    assert not all(np.array_equal(s, img) for s in shown)
    again = augment_samples(img, cfg, n=3, seed=1, photometric=True)
    assert all(np.array_equal(x, y) for x, y in zip(shown, again))


def test_photometric_options_round_trip_through_config_json_and_the_cli(tmp_path):
    import dataclasses

    from h2a.cli import build_parser
    from h2a.cli.train import train_config_from_args
    from h2a.engine.config import TrainConfig

    args = build_parser().parse_args([
        "train", "--data", "D", "--out", "O", "--aug-gamma", "0.6", "--aug-contrast", "0.2", "--aug-blur", "1",
        "--aug-downscale", "0.5", "--aug-noise", "6", "--aug-jpeg", "0.3", "--intensity", "percentile"])
    cfg = train_config_from_args(args)
    pp = cfg.preprocess
    assert (pp["aug_gamma"], pp["aug_contrast"], pp["aug_blur"], pp["aug_downscale"], pp["aug_noise"],
            pp["aug_jpeg"], pp["intensity"]) == (0.6, 0.2, 1.0, 0.5, 6.0, 0.3, "percentile")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    again = TrainConfig.from_dict(json.loads(path.read_text()))
    assert again == cfg and PreprocessConfig.from_dict(again.preprocess).to_dict() == pp
    saved = save_config("photo", PreprocessConfig.from_dict(pp), tmp_path)
    assert load_config("photo", saved.parent) == PreprocessConfig.from_dict(pp)
    # cache and cluster take the intensity option (it changes the cache) but no augmentation
    cache_args = build_parser().parse_args(["cache", "--data", "D", "--intensity", "percentile"])
    assert cache_args.intensity == "percentile" and not hasattr(cache_args, "aug_gamma")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "D", "--out", "O", "--aug-jpeg", "1.5"])
    with pytest.raises(ValueError, match="aug_noise"):
        PreprocessConfig(aug_noise=-1.0)


# ---------------------------------------------------------------- intensity standardisation

def test_cache_key_unchanged_without_intensity_standardisation_and_changed_with_it():
    # the key every cache built before the option existed carries (default config)
    assert PreprocessConfig().cache_key() == "5e3511dd00c3"
    base = PreprocessConfig(size=128, resize="squash")
    assert PreprocessConfig(size=128, resize="squash", intensity="none").cache_key() == base.cache_key()
    photo = PreprocessConfig(size=128, resize="squash", aug_gamma=0.6, aug_noise=5, aug_jpeg=0.5, aug_blur=1,
                             aug_contrast=0.2, aug_downscale=0.5)
    assert photo.cache_key() == base.cache_key()  # augmentation never enters the key
    assert "intensity" not in base.deterministic_dict()
    assert PreprocessConfig(size=128, resize="squash", intensity="percentile").cache_key() != base.cache_key()


def test_percentile_standardisation_stretches_a_dim_image_and_ignores_padding():
    img = low_contrast()  # values 0.40-0.50, tall: pad adds black bars
    plain = prepare(img, PreprocessConfig(size=64))
    std = prepare(img, PreprocessConfig(size=64, intensity="percentile"))
    content = std[:, 16:48]
    assert np.percentile(content, 99) >= 250 and np.percentile(content, 1) <= 5
    assert content.std() > 3 * plain[:, 16:48].std()
    assert (std[:, :8] == 0).all()  # the bars stay black and do not set the window
    flat = np.full((20, 20), 0.3, np.float32)
    assert np.array_equal(standardize_intensity(flat, "percentile"), flat)  # nothing to stretch
    with pytest.raises(ValueError, match="intensity"):
        standardize_intensity(flat, "zscore")


# ---------------------------------------------------------------- saved configs

def test_save_load_list_round_trip(tmp_path):
    cfg = PreprocessConfig(size=384, contrast="clahe", clahe_grid=4, normalize="per_image")
    path = save_config("hands_v2-clahe", cfg, directory=tmp_path)
    assert path == tmp_path / "hands_v2-clahe.json" and path.is_file()
    save_config("baseline", PreprocessConfig(), directory=tmp_path)
    assert list_configs(tmp_path) == ["baseline", "hands_v2-clahe"]
    assert load_config("hands_v2-clahe", directory=tmp_path) == cfg
    save_config("baseline", PreprocessConfig(size=128), directory=tmp_path)  # overwrite
    assert load_config("baseline", directory=tmp_path).size == 128
    assert not list(tmp_path.glob(".*.tmp"))


def test_default_directory_comes_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("H2A_WORKSPACE", str(tmp_path / "ws"))
    save_config("default", PreprocessConfig(size=96))
    assert (tmp_path / "ws" / "preprocess-configs" / "default.json").is_file()
    assert list_configs() == ["default"] and load_config("default").size == 96


@pytest.mark.parametrize("name", ["", "../evil", "a b", "x.json", "naïve", "a/b", "x" * 65])
def test_bad_names_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="letters, digits"):
        save_config(name, PreprocessConfig(), directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_loading_a_missing_or_broken_config_is_clear(tmp_path):
    save_config("one", PreprocessConfig(), directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="No preprocessing config named 'two'.*one"):
        load_config("two", directory=tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        load_config("broken", directory=tmp_path)
    (tmp_path / "badvalue.json").write_text('{"resize": "stretch"}')
    with pytest.raises(ValueError, match="resize .*must be one of"):
        load_config("badvalue", directory=tmp_path)
    assert list_configs(tmp_path) == ["badvalue", "broken", "one"]
    assert list_configs(tmp_path / "nothing-here") == []

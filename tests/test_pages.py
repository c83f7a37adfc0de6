"""AppTest: every page renders without an exception on the demo and on real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import FULLRES, REPO, THUMBS

PAGES = ["app_pages/home.py", "app_pages/population.py", "app_pages/preprocessing.py"]


def _app(monkeypatch, data_dir: Path | None) -> AppTest:
    if data_dir is None:
        monkeypatch.delenv("H2A_DATA_DIR", raising=False)
    else:
        if not data_dir.exists():
            pytest.skip(f"real data not present at {data_dir}")
        monkeypatch.setenv("H2A_DATA_DIR", str(data_dir))
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def _render(at: AppTest, page: str, allowed_errors: set[str] = frozenset()) -> AppTest:
    """Render a page; an error element is only allowed when it names an expected bad file."""
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for err in at.error:
        assert any(name in err.value for name in allowed_errors), err.value
    return at


def _tab_label(at: AppTest, prefix: str) -> str:
    return next(t.label for t in at.tabs if t.label.startswith(prefix))


def _open_tab(at: AppTest, label: str, allowed_errors: set[str] = frozenset()) -> None:
    """Select a population tab (lazy tabs run only the selected one) and render it."""
    at.session_state["pop_tab"] = label
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    for err in at.error:
        assert any(name in err.value for name in allowed_errors), err.value


@pytest.mark.parametrize("data", ["demo", "thumbs", "fullres"])
@pytest.mark.parametrize("page", PAGES)
def test_page_renders(monkeypatch, demo_dir, page: str, data: str) -> None:
    data_dir = {"demo": None, "thumbs": THUMBS, "fullres": FULLRES}[data]
    at = _render(_app(monkeypatch, data_dir), page)
    text = " ".join(m.value for m in at.markdown) + " ".join(t.value for t in at.title)
    if data == "demo":
        assert any("synthetic" in i.value.lower() for i in at.info), "demo data must be labelled synthetic"
    if page == "app_pages/population.py":
        labels = {m.label: m.value for m in at.metric}
        assert labels["Images"] != "0"
        assert len(at.get("plotly_chart")) == 2  # lazy tabs: the open one's charts only
        for tab in ("Splits", "Images", "Gallery", _tab_label(at, "Problems")):
            _open_tab(at, tab)
        _open_tab(at, "Images")
        assert len(at.get("plotly_chart")) >= 4  # resolutions and intensities
        _open_tab(at, "Gallery")
        assert len(at.get("image")) >= 1
    if page == "app_pages/preprocessing.py":
        assert "Augmented samples" in " ".join(s.value for s in at.subheader)
        assert len(at.get("image")) >= 1
    assert text


def test_population_problems_tab_lists_bad_rows(monkeypatch, tmp_path: Path) -> None:
    from tests.corpus import make_corpus

    root = tmp_path / "odd"
    img_dir = root / "boneage-training-dataset"
    img_dir.mkdir(parents=True)
    cases = make_corpus(img_dir)
    rows = ["id,boneage,male"]
    stems = [Path(c.filename).stem for c in cases]
    cases = [c for c in cases if stems.count(Path(c.filename).stem) == 1]  # ids are file stems
    for i, case in enumerate(cases, 1):
        stem = Path(case.filename).stem
        rows.append(f"{stem},{(37 * i) % 228 + 1},{'True' if i % 2 else 'False'}")
    rows.append("ghost,50,True")
    rows.append("bad-age,abc,False")
    (root / "boneage-training-dataset.csv").write_text("\n".join(rows) + "\n")
    bad_names = {c.filename for c in cases if not c.expect_ok}
    at = _render(_app(monkeypatch, root), "app_pages/population.py", bad_names)
    _open_tab(at, _tab_label(at, "Problems"), bad_names)
    frames = [df.value for df in at.dataframe]
    problems = next(f for f in frames if "problem" in f.columns and "item" in f.columns)
    text = "\n".join(problems["item"] + ": " + problems["problem"])
    assert "ghost.png not found" in text and "not a number" in text
    bad = [c for c in cases if not c.expect_ok]
    for case in bad:
        if Path(case.filename).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"):
            assert case.filename in text, case.filename
    _render(at, "app_pages/preprocessing.py", bad_names)


def test_preprocessing_config_saves_by_name(monkeypatch, demo_dir) -> None:
    from h2a.data.preprocess import list_configs, load_config

    at = _render(_app(monkeypatch, None), "app_pages/preprocessing.py")
    at.radio(key="pp_contrast").set_value("clahe").run()
    at.select_slider(key="pp_size").set_value(128).run()
    at.text_input(key="pp_save_name").set_value("clahe-128").run()
    at.button(key="pp_save").click().run()
    assert not at.exception
    assert "clahe-128" in list_configs()
    cfg = load_config("clahe-128")
    assert cfg.contrast == "clahe" and cfg.size == 128
    at.text_input(key="pp_save_name").set_value("../evil").run()
    at.button(key="pp_save").click().run()
    assert at.error and "name" in at.error[0].value.lower()


@pytest.mark.parametrize("arch, normalize", [("efficientnet_lite0", "imagenet"), ("resnet18", "imagenet"),
                                             ("efficientnet_lite0", "per_image")])
def test_preprocessing_page_shows_the_engines_model_input(monkeypatch, demo_dir, arch, normalize) -> None:
    """The displayed input statistics are exactly what h2a.data.transforms feeds the model."""
    import numpy as np
    import torch

    from h2a.data.datasets import load_dataset
    from h2a.data.imageio import read_image
    from h2a.data.preprocess import PreprocessConfig, prepare
    from h2a.data.transforms import array_input, input_norm

    at = _render(_app(monkeypatch, None), "app_pages/preprocessing.py")
    at.selectbox(key="pp_arch").set_value(arch).run()
    at.radio(key="pp_normalize").set_value(normalize).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = next(df.value for df in at.dataframe if "architecture" in df.value.columns).iloc[0]
    assert shown["architecture"] == arch and shown["normalize"] == normalize
    meta = load_dataset(demo_dir).meta
    path = meta.loc[meta["id"].astype(str) == str(shown["image"]), "path"].iloc[0]
    cfg = PreprocessConfig(normalize=normalize)  # the page's defaults
    x = array_input(prepare(read_image(path), cfg), input_norm(arch, cfg), torch.device("cpu"))[0, 0].numpy()
    for name, value in (("mean", x.mean()), ("sd", x.std()), ("min", x.min()), ("max", x.max())):
        assert shown[name] == pytest.approx(float(value), abs=1e-6), name
    if arch == "efficientnet_lite0" and normalize == "imagenet":  # Lite0 is fed 0.5/0.5, not the grey ImageNet stats
        assert shown["min"] >= -1.0 - 1e-6 and shown["max"] <= 1.0 + 1e-6
        grey = (prepare(read_image(path), cfg).astype(np.float32) / 255 - 0.449) / 0.226
        assert abs(shown["mean"] - grey.mean()) > 0.05


def test_preprocessing_picker_takes_a_typed_id_and_lists_few_options(monkeypatch, demo_dir) -> None:
    """The picker never sends every label to the browser; an exact id typed in is shown."""
    from h2a.data.datasets import load_dataset

    at = _render(_app(monkeypatch, None), "app_pages/preprocessing.py")
    ids = load_dataset(demo_dir).meta["id"].astype(str).tolist()
    assert len(ids) > 200
    picker = next(m for m in at.multiselect if m.key.startswith("pp_ids_"))
    assert len(picker.options) <= 204, "at most 200 matches plus the current picks"
    first = picker.value[0]
    wanted = next(i for i in reversed(ids) if i != first)
    at.text_input(key="pp_find").set_value(wanted).run()
    assert not at.exception, [e.value for e in at.exception]
    picker = next(m for m in at.multiselect if m.key.startswith("pp_ids_"))
    assert wanted in picker.value and first in picker.value
    assert any(m.value.startswith(f"#### {wanted} ") for m in at.markdown)
    at.text_input(key="pp_find").set_value(wanted[:-1]).run()  # part of an id lists matches, keeps the picks
    picker = next(m for m in at.multiselect if m.key.startswith("pp_ids_"))
    assert wanted in picker.value
    listed = [o for o in picker.options if not any(o.startswith(f"{v} ") for v in picker.value)]
    assert listed and all(o.split(" ")[0].lower().find(wanted[:-1].lower()) >= 0 for o in listed)

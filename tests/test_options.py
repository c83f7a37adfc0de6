"""Options declared once: every field has a declaration, the CLI is built from it, and the
args -> config -> config.json -> config round trip is lossless."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from h2a.cli import build_parser
from h2a.cli.train import train_config_from_args
from h2a.data.preprocess import PreprocessConfig
from h2a.engine.config import TrainConfig, TrainingError
from h2a.options import declaration, declarations, option, problems


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--data", "D", "--out", "O", *argv])


def _actions(command: str) -> list[argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices[command]._actions)


def _dests(command: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _actions(command)}


@pytest.mark.parametrize("cls", [TrainConfig, PreprocessConfig])
def test_every_field_is_declared_with_help_and_a_type(cls) -> None:
    decl = {d.name: d for d in declarations(cls)}
    assert set(decl) == {f.name for f in dataclasses.fields(cls)}
    for d in decl.values():
        assert d.opt.help and len(d.opt.help) > 8, d.name
        assert d.type in (bool, int, float, str, dict), (d.name, d.type)


def test_every_cli_field_appears_in_the_train_parser() -> None:
    actions = _dests("train")
    for cls in (TrainConfig, PreprocessConfig):
        for d in declarations(cls):
            if d.flag is None:
                assert d.name == "preprocess"  # built from the preprocessing flags
                continue
            assert d.name in actions, d.name
            assert actions[d.name].help, d.name
    # historic flag names survive
    flags = {s for a in _actions("train") for s in a.option_strings}
    for flag in ("--no-pretrained", "--pretrained", "--no-sex", "--time-budget", "--image-size", "--no-flip",
                 "--resume", "--config", "--weights", "--drop-path", "--bn-momentum", "--progressive-from"):
        assert flag in flags, flag


def test_preprocessing_flags_shared_by_cache_and_cluster_without_augmentation() -> None:
    for command in ("cache", "cluster"):
        actions = _dests(command)
        assert {"size", "resize", "contrast", "clahe_clip", "clahe_grid", "normalize", "config"} <= set(actions)
        assert "flip" not in actions and "zoom" not in actions


def test_historic_flags_still_map() -> None:
    args = _parse("--no-pretrained", "--no-sex", "--time-budget", "7.5", "--image-size", "96", "--no-flip",
                  "--device", "cpu")
    cfg = train_config_from_args(args)
    assert cfg.pretrained is False and cfg.use_sex is False and cfg.time_budget_min == 7.5
    assert cfg.preprocess["size"] == 96 and cfg.preprocess["flip"] is False and cfg.device == "cpu"
    assert train_config_from_args(_parse("--pretrained")).pretrained is True


def test_defaults_come_from_the_declarations() -> None:
    from h2a.settings import get_settings

    cfg = train_config_from_args(_parse())
    ref = TrainConfig(data="D", out="O")
    for d in declarations(TrainConfig):
        if d.name not in ("device", "preprocess"):
            assert getattr(cfg, d.name) == getattr(ref, d.name), d.name
    assert cfg.device == get_settings().device
    assert cfg.preprocess == PreprocessConfig(size=128).to_dict()  # train's own 128 px default


def test_round_trip_args_config_json_config(tmp_path) -> None:
    args = _parse("--task", "sex", "--arch", "tiny_cnn", "--no-pretrained", "--width-mult", "0.5",
                  "--dropout", "0.1", "--drop-path", "0.05", "--epochs", "3", "--time-budget", "2",
                  "--batch-size", "8", "--lr", "0.003", "--weight-decay", "0", "--optimizer", "sgd",
                  "--scheduler", "step", "--loss", "huber", "--init-from", "old-run", "--freeze", "2",
                  "--split", "dataset", "--val-fraction", "0.25", "--holdout-fraction", "0.1",
                  "--patience", "4", "--seed", "7", "--workers", "0", "--amp", "off", "--ema", "0.99",
                  "--bn-momentum", "0.05", "--progressive-from", "48", "--max-train-images", "100",
                  "--weights", "w.safetensors", "--image-size", "64", "--resize", "crop",
                  "--contrast", "clahe", "--clahe-clip", "3", "--clahe-grid", "4", "--normalize", "per_image",
                  "--shift", "0.1", "--rotation", "5", "--zoom", "0.2", "--device", "cpu")
    cfg = train_config_from_args(args)
    cfg.validate()
    assert (cfg.arch, cfg.weights, cfg.lr, cfg.progressive_from) == ("tiny_cnn", "w.safetensors", 0.003, 48)
    assert cfg.preprocess["contrast"] == "clahe" and cfg.preprocess["clahe_clip"] == 3.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(cfg)))
    again = TrainConfig.from_dict(json.loads(path.read_text()))
    assert again == cfg
    pp = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.preprocess)))
    assert pp.to_dict() == cfg.preprocess


@pytest.mark.parametrize("argv, flag", [
    (["--optimizer", "lion"], "--optimizer"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--ema", "1.5"], "--ema"),
    (["--bn-momentum", "0"], "--bn-momentum"),
    (["--image-size", "8"], "--image-size"),
    (["--resize", "stretch"], "--resize"),
    (["--zoom", "1"], "--zoom"),
    (["--batch-size", "many"], "--batch-size"),
])
def test_cli_rejects_bad_values_naming_the_flag(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err, err


@pytest.mark.parametrize("change, name", [
    ({"optimizer": "lion"}, "optimizer"),
    ({"lr": -1.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"epochs": 0}, "epochs"),
    ({"drop_path": 1.0}, "drop_path"),
    ({"split": "random"}, "split"),
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"task": "age"}, "task"),
    ({"pretrained": "yes"}, "pretrained"),
])
def test_config_rejects_bad_values_naming_the_option(change, name) -> None:
    cfg = TrainConfig(data="D", out="O", **change)
    with pytest.raises(TrainingError, match=rf"\b{name}\b"):
        cfg.validate()


def test_lr_message_says_learning_rate_and_all_problems_at_once() -> None:
    cfg = TrainConfig(data="D", out="O", lr=-1.0, epochs=0)
    with pytest.raises(TrainingError) as info:
        cfg.validate()
    assert "learning rate" in str(info.value) and "epochs" in str(info.value)


def test_cross_field_rules_stay_in_validate() -> None:
    with pytest.raises(TrainingError, match="progressive"):
        TrainConfig(data="D", out="O", progressive_from=256).validate()  # >= the 128 px image size
    with pytest.raises(TrainingError, match="preprocessing"):
        TrainConfig(data="D", out="O", preprocess={"size": 4}).validate()
    sex = TrainConfig(data="D", out="O", task="sex")
    sex.validate()
    assert sex.use_sex is False


def test_option_helper_on_a_new_dataclass() -> None:
    """The machinery is generic: any dataclass can declare its options the same way."""

    @dataclasses.dataclass
    class Demo:
        n: int = option(3, minimum=1, maximum=9, help="how many things")
        mode: str = option("a", choices=("a", "b"), help="which mode")
        on: bool = option(False, help="switch it on")
        limit: float | None = option(None, minimum=0.0, exclusive_min=True, help="optional positive limit")

    assert problems(Demo()) == []
    assert [p.split(" ")[0] for p in problems(Demo(n=0, mode="c", on=1, limit=0.0))] == ["n", "mode", "on", "limit"]
    assert declaration(Demo, "limit").optional and declaration(Demo, "n").range_words() == "from 1 to 9"
    p = argparse.ArgumentParser()
    from h2a.options import add_arguments, values_from_args

    add_arguments(p, Demo)
    assert values_from_args(Demo, p.parse_args(["--n", "4", "--on"])) == {"n": 4, "on": True}
    assert values_from_args(Demo, p.parse_args([])) == {}

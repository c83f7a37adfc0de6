"""Study spaces and presets without training: the YAML format, its errors, the presets' configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from h2a.studies.presets import PRESETS, RECIPE_BASE, get_preset
from h2a.studies.space import ALIASES, SpaceError, build_config, load_space, parse_space

GOOD = """
task: boneage
base: {arch: efficientnet_lite0, image_size: 128}
params:
  lr: {type: float, low: 1e-4, high: 3e-3, log: true}
  batch_size: {type: categorical, choices: [16, 32, 64]}
  freeze: {type: int, low: 0, high: 6, step: 2}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_yaml_space_parses_with_yaml_floats_and_aliases(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, GOOD))
    assert space.kind == "search" and space.task == "boneage"
    assert space.base == {"arch": "efficientnet_lite0", "size": 128}  # image_size -> PreprocessConfig.size
    lr = space.params["lr"]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-4, 3e-3, True)  # PyYAML reads 1e-4 as text
    assert space.params["batch_size"].choices == [16, 32, 64]
    assert parse_space(space.to_raw()).to_raw() == space.to_raw()  # what a study stores reads back the same
    cfg = build_config({**space.base, "lr": 1e-3, "rotation": 3.0}, data="d", out="o", task="boneage")
    assert cfg.preprocess["size"] == 128 and cfg.preprocess["rotation"] == 3.0 and cfg.lr == 1e-3


@pytest.mark.parametrize("text, named", [
    ("base: {arch: tiny_cnn}\nparams: {lr: [0.1]}\nbogus: 1\n", "'bogus'"),
    ("params: {learning_rate: {type: float, low: 0.1, high: 1}}\n", "params.learning_rate"),
    ("params: {lr: {type: float, low: 1, high: 0.1}}\n", "params.lr"),
    ("params: {lr: {type: float, low: 0.1, hi: 1}}\n", "params.lr.hi"),
    ("params: {lr: {type: float, low: -1, high: 1, log: true}}\n", "params.lr.low"),
    ("params: {batch_size: {type: categorical, choices: [16, 0]}}\n", "params.batch_size.choices"),
    ("arms: {with-sex: {use_sex: 'yes'}, without: {use_sex: false}}\n", "arms.with-sex.use_sex"),
    ("arms: {a: {freeze: 0}, b: {freeze: 2}}\nreference: c\n", "reference"),
    ("arms: {a: {freeze: 0}}\nseeds: [0, -1]\n", "seeds"),
    ("base: {rotation: 500}\narms: {a: {freeze: 0}}\n", "base.rotation"),
    ("arms: {a: {freeze: 0}}\nparams: {lr: [0.1]}\n", "not both"),
    ("task: age\narms: {a: {freeze: 0}}\n", "task"),
    ("arms: {a: {freeze: 0}}\npruning: {patience: 3}\n", "pruning.patience"),
])
def test_space_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SpaceError) as err:
        load_space(_write(tmp_path, text))
    assert named in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_cli_space_error_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from h2a.cli import main

    bad = _write(tmp_path, "arms: {with-sex: {use_sex: 'yes'}}\n")
    rc = main(["study", "run", "--name", "bad", "--data", str(tmp_path), "--space", str(bad), "--trial-minutes", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "arms.with-sex.use_sex" in err, err
    assert main(["study", "run", "--name", "bad", "--data", str(tmp_path), "--space", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_show_of_a_missing_study_is_one_line(capsys) -> None:
    from h2a.cli import main

    assert main(["study", "show", "no-such-study", "--json"]) == 2
    assert "no study named 'no-such-study'" in capsys.readouterr().err


def test_presets_are_the_recipe_plus_their_question() -> None:
    assert set(PRESETS) == {"sex-input", "transfer", "freeze", "width", "scheduler", "recipe-search", "clusters"}
    for name in PRESETS:
        space = get_preset(name)
        if space.kind != "arms":
            continue
        assert space.reference_arm() in space.arms, name
        assert len(space.arms) >= 2
        for settings in space.arms.values():
            cfg = build_config({**space.base, **settings}, data="d", out="o", task=space.task)
            assert cfg.holdout_fraction > 0 and cfg.device != "cuda"  # never a hard-coded device
            # the arms differ only in what the preset is about; the rest is the recipe's
            differs = {k for k in RECIPE_BASE
                       if k not in settings and space.base.get(ALIASES.get(k, k)) != RECIPE_BASE[k]}
            assert differs <= {"arch", "pretrained"}, (name, differs)
    assert get_preset("sex-input").arms == {"with-sex": {"use_sex": True}, "without-sex": {"use_sex": False}}
    assert [a["freeze"] for a in get_preset("freeze").arms.values()] == [0, 2, 4, 6]
    width = get_preset("width")
    assert width.base["arch"] == "inception_v3" and [a["width_mult"] for a in width.arms.values()] == [0.5, 0.75, 1.0, 1.4]
    sched = get_preset("scheduler")
    assert {(a["optimizer"], a["scheduler"]) for a in sched.arms.values()} == {
        (o, s) for o in ("sgd", "adam") for s in ("step", "exponential", "plateau", "cyclic", "cosine")}
    search = get_preset("recipe-search")
    assert {"lr", "weight_decay", "batch_size", "size", "drop_path", "loss", "aug_gamma"} <= set(search.params)
    assert search.base["lr"] == 2e-3 and search.base["size"] == 128 and search.base["resize"] == "squash"
    assert get_preset("clusters").kind == "clusters"


def test_study_jobs_without_a_process(tmp_path: Path) -> None:
    from h2a.engine.lock import RunLock
    from h2a.studies import StudySpec, start_study_job, stop_study, study_job_status
    from h2a.studies.errors import StudyError
    from h2a.studies.storage import job_dir

    assert study_job_status("never-started") == {"status": "none", "pid": None, "log_tail": "", "finished": 0,
                                                  "total": None, "message": ""}
    assert stop_study("never-started") is False
    with pytest.raises(SpaceError, match="unknown preset"):
        start_study_job(StudySpec(name="x", data=str(tmp_path), preset="no-such"))
    # one coordinator per study: a held job folder refuses a second start, naming the holder
    with RunLock(job_dir("busy")), pytest.raises(StudyError, match=f"pid {__import__('os').getpid()}"):
        start_study_job(StudySpec(name="busy", data=str(tmp_path), preset="sex-input"))


def test_a_search_starts_from_its_base_unless_the_base_is_outside_the_space(demo_dir: Path) -> None:
    from h2a.studies.trial_queue import baseline_params, enqueue_baseline

    search = get_preset("recipe-search")
    params = baseline_params(search, str(demo_dir))
    # the CPU recipe (recipes/boneage_cpu.sh); what it does not name comes from the declared defaults
    assert params == {"lr": 2e-3, "weight_decay": 1e-4, "batch_size": 32, "size": 128, "shift": 0.03, "rotation": 5.0,
                      "zoom": 0.05, "aug_gamma": 0.0, "aug_contrast": 0.0, "drop_path": 0.2, "loss": "l1"}

    outside = parse_space({"base": {"lr": 0.5}, "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    assert baseline_params(outside, str(demo_dir)) is None
    off_grid = parse_space({"base": {"freeze": 1}, "params": {"freeze": {"type": "int", "low": 0, "high": 6, "step": 2}}})
    assert baseline_params(off_grid, str(demo_dir)) is None

    class Study:  # enqueue_baseline's view of an Optuna study
        def __init__(self, trials: list) -> None:
            self.trials, self.queued = trials, []

        def get_trials(self, deepcopy: bool = False) -> list:
            return self.trials

        def enqueue_trial(self, params: dict, user_attrs: dict) -> None:
            self.queued.append((params, user_attrs))

    fresh, hand_queued = Study([]), Study(["a trial queued by hand"])
    assert enqueue_baseline(fresh, search, str(demo_dir)) and fresh.queued == [(params, {"baseline": True})]
    assert not enqueue_baseline(hand_queued, search, str(demo_dir)) and not hand_queued.queued
    assert not enqueue_baseline(Study([]), get_preset("sex-input"), str(demo_dir))  # arms queue their grid


def test_median_pruning_waits_warmup_epochs_before_it_acts() -> None:
    import optuna

    from h2a.studies.pruning import make_pruner

    space = parse_space({"base": {}, "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
                         "pruning": {"startup_trials": 1, "warmup_epochs": 1}})
    study = optuna.create_study(pruner=make_pruner("median", space))
    good = study.ask()
    for epoch in (1, 2):  # epochs are reported from 1, as TrialReporter does
        good.report(10.0, epoch)
    study.tell(good, 10.0)
    bad = study.ask()
    bad.report(100.0, 1)
    assert not bad.should_prune()  # epoch 1 is the warm-up
    bad.report(100.0, 2)
    assert bad.should_prune()


def test_an_epoch_cut_short_by_a_stop_is_neither_reported_nor_pruned() -> None:
    """`h2a study stop` ends a trial's epoch after its batch; that partial epoch's figure
    must not prune the trial (it resumes), as it once did to a recipe-search trial."""
    from types import SimpleNamespace

    import optuna

    from h2a.engine.callbacks import CANCELLED
    from h2a.studies.pruning import TrialReporter

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = study.ask()
    done.report(10.0, 1)
    study.tell(done, 10.0)
    eng = SimpleNamespace(state=SimpleNamespace(stop_reason=CANCELLED))
    stopped = TrialReporter(study.ask(), "val_mae", "s", prune=True)
    stopped.on_epoch_end(eng, {"epoch": 1, "val_mae": 37.0})
    assert stopped.pruned_at is None and eng.state.stop_reason == CANCELLED
    assert not study.trials[stopped.trial.number].intermediate_values

    eng.state.stop_reason = ""  # the same figure from a whole epoch prunes
    worse = TrialReporter(study.ask(), "val_mae", "s", prune=True)
    worse.on_epoch_end(eng, {"epoch": 1, "val_mae": 37.0})
    assert worse.pruned_at == 1 and eng.state.stop_reason.startswith("pruned by study s at epoch 1")

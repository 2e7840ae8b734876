"""Run directories: a run made before options were added to its recipe's configuration still resumes."""

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from gen4d import Gen4DError
from gen4d.config import config_yaml
from gen4d.runs import RunDir, legacy_values, options_added_since


@dataclass
class Inner:
    rate: float = 0.1
    kind: str = "a"


@dataclass
class Old:
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


@dataclass
class Inner2(Inner):
    extra: int = 3


@dataclass
class New:
    steps: int = 10
    inner: Inner2 = field(default_factory=Inner2)
    mode: str = "x"


def test_a_run_made_before_options_were_added_resumes_and_its_config_is_updated(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.prepare(Old(steps=20), "gen4d x") is False
    assert run.prepare(New(steps=20), "gen4d x") is True  # inner.extra and mode are new, at their defaults
    assert run.config_path.read_text() == config_yaml(New(steps=20))
    assert "inner.extra, mode" in (run.root / "log.txt").read_text()


@pytest.mark.parametrize("new", [New(steps=30), New(steps=20, mode="y"), New(steps=20, inner=Inner2(extra=4))])
def test_a_changed_value_or_an_added_option_away_from_its_default_is_refused(tmp_path, new):
    run = RunDir(tmp_path / "run")
    run.prepare(Old(steps=20), "gen4d x")
    before = run.config_path.read_text()
    with pytest.raises(Gen4DError, match="different configuration"):
        run.prepare(new, "gen4d x")
    assert run.config_path.read_text() == before


def test_options_added_since_needs_defaults_and_refuses_removed_options():
    old, new = config_yaml(Old()), config_yaml(New())
    assert options_added_since(old, new, config_yaml(New())) == ["inner.extra", "mode"]
    assert options_added_since(old, new, None) is None
    assert options_added_since(new, old, config_yaml(Old())) is None  # options gone: not the same run


@dataclass
class Inner3(Inner):
    LEGACY: ClassVar[dict] = {"schedule": "old"}
    schedule: str = "new"  # a default that changes what a run does


@dataclass
class Newer:
    steps: int = 10
    inner: Inner3 = field(default_factory=Inner3)


def test_an_added_option_whose_default_changed_the_behaviour_resumes_only_at_its_legacy_value(tmp_path):
    assert legacy_values(Newer) == {"inner.schedule": "old"}
    run = RunDir(tmp_path / "run")
    run.prepare(Old(steps=20), "gen4d x")
    with pytest.raises(Gen4DError, match="to resume it as it was made, add inner.schedule=old"):
        run.prepare(Newer(steps=20), "gen4d x")  # the new default would change the run halfway
    assert run.prepare(Newer(steps=20, inner=Inner3(schedule="old")), "gen4d x") is True
    assert "schedule: old" in run.config_path.read_text()


def test_reconstruct_runs_made_before_the_time_schedule_resume_with_every_frame_at_once():
    from gen4d.recipes.reconstruct import ReconstructConfig

    legacy = legacy_values(ReconstructConfig)
    assert legacy["train.canonical_window"] == 1.0 and legacy["train.time_curriculum"] == 0.0
    assert legacy["train.hold_unreached"] is False and legacy["deformation.hexplane.fused_cpu"] is False
    assert legacy["train.edge_share"] == 0.0  # runs made before tracking drew uniformly from the window

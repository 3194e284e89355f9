"""Each extension point takes one registered class and nothing else: registered here at run time, it
reaches every output it should (a dataset's test is in test_datamodules.py)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import dataclasses

from common.errors import UserError
from common.registry import Registry, load_plugins
from federation.federation import Federation
from federation.in_process import InProcessEngine
from leakage.image_metrics import REGISTRY as METRICS
from leakage.image_metrics import ImageMetric, register
from leakage.metrics import SSIMSettings
from leakage.scoring import score
from pipelines.attack_audit import AttackAudit
from privacy import REGISTRY as FILTERS
from privacy import FilterChain, FilterContext, PrivacyFilter
from privacy import register as register_filter
from tests.conftest import tiny_train_config

ROOT = Path(__file__).resolve().parent.parent


class MaxAbsError(ImageMetric):
    """A throwaway metric: the largest pixel error of a pair; a client's value is its worst image."""

    name = "max_abs_error"
    aggregate = "max"
    higher_is_better = False
    display = "max |error| {value:.2f}"

    def __call__(self, reconstruction: torch.Tensor, original: torch.Tensor) -> float:
        return float((reconstruction - original).abs().max())


@dataclasses.dataclass
class ScaleParams:
    factor: float = 0.5


class Scale(PrivacyFilter):
    """A throwaway filter: the update times a factor, reported as a results.csv column."""

    name = "scale"
    Params = ScaleParams
    columns = ("factor",)

    def apply(self, update, ctx):
        return {k: v * self.params.factor if v.is_floating_point() else v for k, v in update.items()}, {"factor": self.params.factor}


@pytest.fixture
def scale_filter():
    register_filter(Scale)
    yield Scale
    FILTERS.unregister(Scale.name)


@pytest.fixture
def max_abs_error():
    register(MaxAbsError)
    yield MaxAbsError
    METRICS.unregister(MaxAbsError.name)


def test_registry_refuses_a_second_owner_and_names_the_known_ones():
    reg: Registry[type] = Registry("widget", "x.widget")

    @reg.register
    class A:
        name = "a"

    with pytest.raises(ValueError, match="registered twice"):
        reg.register(type("B", (), {"name": "a"}))
    with pytest.raises(UserError, match=r"x.widget: unknown widget 'b' \(known: a\)"):
        reg.get("b")
    assert reg.get("a") is A and list(reg) == ["a"] and "a" in reg


def test_plugins_of_a_folder_are_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("FOUND = []\n")
    (pkg / "one.py").write_text("from plugpkg import FOUND\nFOUND.append('one')\n")
    (pkg / "_private.py").write_text("raise RuntimeError('not a plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins("plugpkg") == ["one"]
    import plugpkg

    assert plugpkg.FOUND == ["one"]


def test_a_registered_metric_is_scored_per_image_and_aggregated_as_declared(max_abs_error):
    origs = torch.zeros(2, 1, 16, 16)
    recs = origs.clone()
    recs[0, 0, 3, 4] = 0.25  # image 0's reconstruction: one pixel off by 0.25
    recs[1, 0, 0, 0] = 0.75  # image 1's: one pixel off by 0.75
    out = score(recs, None, origs, torch.tensor([0, 1]), torch.full((1, 16, 16), 0.5), 2, SSIMSettings.for_size(16),
                [MaxAbsError()])
    assert [r["max_abs_error"] for r in out.per_image] == [0.25, 0.75]
    assert out.image_metrics["max_abs_error"] == 0.75  # aggregate "max", not the mean 0.5
    assert "psnr" not in out.image_metrics  # only the metrics asked for
    assert MaxAbsError.format(0.75) == "max |error| 0.75"


def test_a_registered_metric_and_filter_reach_the_audit_and_a_study_and_its_report(max_abs_error, scale_filter, tmp_path):
    # the leakage audit inside FL: audit.csv gets the column right after SSIM
    (tmp_path / "fl").mkdir()
    cfg = tiny_train_config(tmp_path / "fl", **{"fl.rounds": 1, "audit": {"every": 1, "clients": [2], "attack": {"optim.iterations": 3, "escalation.enabled": False}}})
    InProcessEngine(Federation(cfg, auditor=AttackAudit)).run(tmp_path / "fl")
    with open(tmp_path / "fl" / "audit.csv") as fh:
        audit = list(csv.DictReader(fh))
    assert list(audit[0])[:6] == ["round", "client", "rdlv", "ssim", "max_abs_error", "psnr"]
    assert 0.0 < float(audit[0]["max_abs_error"]) <= 1.0

    # a study: results.csv, per_image.csv and the HTML report
    from common.config_loader import load
    from studies.analyze import analyze
    from studies.quick import reduce
    from studies.html_report import write_report
    from studies.runner import StudyRunner
    from studies.spec import StudySpec
    from tests.test_studies import TINY_ATTACK, TINY_TRAIN

    spec = reduce(load(StudySpec, [ROOT / "configs" / "studies" / "sigma0.yaml"], []))
    spec.out = str(tmp_path / "study")
    spec.grid = {"scale": {"half": {"train": {"privacy.filters": [{"name": "scale", "factor": 0.5}]}}}}
    spec.train.overrides = {**spec.train.overrides, **TINY_TRAIN}
    spec.attack.overrides = {**spec.attack.overrides, **TINY_ATTACK, "optim.iterations": 3}
    spec.report = {"title": "t", "tables": [{"row": "scale", "metric": "max_abs_error"}]}
    results = StudyRunner(spec, progress=False).run()
    with open(results) as fh:
        row = next(csv.DictReader(fh))
    assert 0.0 < float(row["max_abs_error"]) <= 1.0
    assert float(row["factor"]) == 0.5  # the filter's declared column
    with open(Path(spec.out) / "per_image.csv") as fh:
        assert float(next(csv.DictReader(fh))["max_abs_error"]) == float(row["max_abs_error"])  # one image: max = itself
    analyze(Path(spec.out), spec)
    page = write_report(spec.out).read_text()
    assert "<th>max_abs_error</th>" in page and "max_abs_error by scale" in page and ">factor</th>" in page


def test_a_registered_bn_source_is_selectable_by_name():
    from inversion.bn_sources import REGISTRY as SOURCES
    from inversion.bn_sources import SourceInputs, make_bn_source, source_names
    from inversion.bn_sources.base import PerStepTargets
    from inversion.bn_sources.base import register as register_source

    @register_source
    class HalfGlobal(PerStepTargets):
        """A throwaway source: half the global running statistics."""

        name = "half_global"

        @classmethod
        def build(cls, inputs: SourceInputs) -> "HalfGlobal":
            return cls([[(m.float() / 2, v.float() / 2) for m, v in inputs.initial]] * inputs.steps, inputs.normalize)

    state = {"bn.running_mean": torch.tensor([2.0, 4.0]), "bn.running_var": torch.tensor([1.0, 3.0])}
    try:
        assert "half_global" in source_names()
        source = make_bn_source("half_global", ["bn"], state, {}, 0.1, 2)
        assert isinstance(source, HalfGlobal) and len(source.targets) == 2
        assert source.targets[0][0][0].tolist() == [1.0, 2.0] and source.targets[1][0][1].tolist() == [0.5, 1.5]
    finally:
        SOURCES.unregister("half_global")
    with pytest.raises(UserError, match="unknown bn.source 'half_global'"):
        make_bn_source("half_global", ["bn"], state, {}, 0.1, 2)


def test_a_registered_privacy_filter_runs_in_the_chain(scale_filter):
    chain = FilterChain.from_config([{"name": "scale", "factor": 0.25}])
    out, effects = chain.apply({"w": torch.tensor([4.0, -8.0]), "n": torch.tensor(3)}, FilterContext(torch.Generator()))
    assert out["w"].tolist() == [1.0, -2.0] and int(out["n"]) == 3
    assert effects == [{"filter": "scale", "factor": 0.25}]
    with pytest.raises(UserError, match="unknown config key .privacy.filters.0.oops."):
        FilterChain.from_config([{"name": "scale", "factor": 0.25, "oops": 1}])

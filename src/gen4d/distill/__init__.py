"""Score distillation: the camera x time sampler and the one score-distillation stage of every text/image -> 4D
recipe (guidance terms with their priors, weights, schedules and parameter groups; sum or one-branch rule)."""

from .stage import GuidanceTerm, ReferenceViews, ScoreDistillation
from .views import ViewBatch, ViewSampling, sample_views

__all__ = ["GuidanceTerm", "ReferenceViews", "ScoreDistillation", "ViewBatch", "ViewSampling", "sample_views"]

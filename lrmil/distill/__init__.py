"""LRMIL training: HR teacher, stage-1 cross-resolution distillation, LR student and baselines
over k folds, with a report. One API function per step; `run(cfg)` does them all."""

from lrmil.distill.baseline import train_baseline
from lrmil.distill.cohort import Cohort, load_cohort
from lrmil.distill.config import DistillConfig, load_config
from lrmil.distill.models import load_student
from lrmil.distill.report import build_report, write_report
from lrmil.distill.run import run
from lrmil.distill.splits import Fold, make_splits, read_splits
from lrmil.distill.stage1 import run_stage1
from lrmil.distill.student import train_student
from lrmil.distill.teacher import train_teacher

__all__ = [
    "Cohort", "DistillConfig", "Fold", "build_report", "load_cohort", "load_config",
    "load_student", "make_splits", "read_splits", "run", "run_stage1", "train_baseline",
    "train_student", "train_teacher", "write_report",
]

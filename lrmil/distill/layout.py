"""The files of a `lrmil distill` run folder (interfaces.md "Model runs"), named in one place.

    RUN/config.json  splits.csv  metrics.json  report.md  roc.png  MODEL_CARD.md
    RUN/calibration.json  calibration.png    temperature and threshold, before/after figures
    RUN/final/                            the deployable model (every labelled slide):
        teacher, stage1_*, student .safetensors, teacher_outputs.h5, stage1_features.h5,
        training.json (the epochs used and the fold best epochs they came from)
    RUN/export  export_fold_<k>  export_ensemble   lrmil export of the final model, a fold's
                                          student, the fold students' average
    RUN/fold_<k>/<model>.safetensors      teacher, student, baseline, student_<ablation>
    RUN/fold_<k>/pred_<model>.csv         the fold's test predictions of each model
    RUN/fold_<k>/teacher_outputs.h5       /<slide>/logits (C,), /<slide>/attn_logits (M,)
    RUN/fold_<k>/stage1_adapter.safetensors or stage1_encoder.safetensors
    RUN/fold_<k>/stage1_features.h5       /<slide> (N, D): the student's input
    RUN/runs/<start>-<host>-<pid>.json    the record of each process (lrmil.runner.record)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE1_MODELS = ("stage1_encoder", "stage1_adapter")


@dataclass(frozen=True)
class FoldLayout:
    dir: Path
    index: int

    def model(self, name: str) -> Path:
        """Weights of `name`: teacher, baseline, student[_<ablation>], stage1_encoder|adapter."""
        return self.dir / f"{name}.safetensors"

    def predictions(self, model: str) -> Path:
        return self.dir / f"pred_{model}.csv"

    @property
    def teacher_outputs(self) -> Path:
        return self.dir / "teacher_outputs.h5"

    @property
    def stage1_features(self) -> Path:
        return self.dir / "stage1_features.h5"

    def stage1_model(self, mode: str) -> Path:
        return self.model(f"stage1_{mode}")


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def roc(self) -> Path:
        return self.root / "roc.png"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def calibration_plot(self) -> Path:
        return self.root / "calibration.png"

    @property
    def model_card(self) -> Path:
        return self.root / "MODEL_CARD.md"

    @property
    def final(self) -> FoldLayout:
        """The deployable model's folder (index 0: folds count from 1)."""
        return FoldLayout(self.root / "final", 0)

    @property
    def final_training(self) -> Path:
        return self.final.dir / "training.json"

    def export_dir(self, fold: int | None = None, ensemble: bool = False) -> Path:
        """RUN/export (the final model), RUN/export_fold_<k>, RUN/export_ensemble."""
        if ensemble:
            return self.root / "export_ensemble"
        return self.root / ("export" if fold is None else f"export_fold_{fold}")

    def exports(self) -> list[Path]:
        """The export folders present."""
        return sorted(p for p in self.root.glob("export*") if p.is_dir())

    def fold(self, index: int) -> FoldLayout:
        return FoldLayout(self.root / f"fold_{index}", index)

    def folds(self) -> list[FoldLayout]:
        """The fold folders present, by index."""
        found = []
        for path in self.root.glob("fold_*"):
            suffix = path.name.removeprefix("fold_")
            if path.is_dir() and suffix.isdigit():
                found.append(FoldLayout(path, int(suffix)))
        return sorted(found, key=lambda f: f.index)

    def student_files(self) -> list[Path]:
        """Every file a student's inference depends on, in every fold and the final model (not
        the teachers), and the calibration (the exported graphs apply its temperature)."""
        students = sorted(p for fold in [*self.folds(), self.final]
                          for p in (fold.model("student"), *map(fold.model, STAGE1_MODELS))
                          if p.is_file())
        return students + ([self.calibration] if self.calibration.is_file() else [])

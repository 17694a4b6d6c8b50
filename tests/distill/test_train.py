import h5py
import numpy as np
import torch

from lrmil.data.store import FeatureStore
from lrmil.distill.bags import feature_bags
from lrmil.distill.cohort import load_cohort
from lrmil.distill.config import StudentConfig, TrainConfig
from lrmil.distill.metrics import auc
from lrmil.distill.student import student_bags, student_loss
from lrmil.distill.toy import write_toy_features
from lrmil.distill.train import predict, train_mil
from lrmil.mil import GatedABMIL


def test_training_reduces_the_loss_and_learns_an_easy_signal(tmp_path):
    labels = write_toy_features(tmp_path, n_slides=40, n_lr=8, dim=16, hr_signal=4.0,
                                lesion_share=0.4, seed=1)
    cohort = load_cohort(tmp_path, labels, FeatureStore(cache_bytes=0))
    names = cohort.names
    train, val, test = (feature_bags(cohort, part, cohort.hr)
                        for part in (names[:24], names[24:32], names[32:]))
    torch.manual_seed(0)
    model = GatedABMIL(16, 2, hidden=16)
    cfg = TrainConfig(epochs=20, batch_bags=4, lr=1e-2, patience=20)
    result = train_mil(model, train, val, cfg, torch.device("cpu"), seed=0)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    logits, attn = predict(model, test, torch.device("cpu"), 2)
    assert auc(np.array(test.labels), logits) >= 0.95
    assert [len(a) for a in attn] == [cohort.slides[n].n_hr for n in test.names]


def test_without_validation_slides_exactly_the_given_epochs_run(tmp_path):
    """The final model: no early stopping, the last epoch is the model."""
    labels = write_toy_features(tmp_path, n_slides=12, n_lr=8, dim=16, seed=1)
    cohort = load_cohort(tmp_path, labels, FeatureStore(cache_bytes=0))
    train = feature_bags(cohort, cohort.names, cohort.hr)
    torch.manual_seed(0)
    model = GatedABMIL(16, 2, hidden=16)
    cfg = TrainConfig(epochs=7, batch_bags=4, lr=1e-2, patience=1, min_epochs=0)
    result = train_mil(model, train, feature_bags(cohort, [], cohort.hr), cfg,
                       torch.device("cpu"), seed=0)
    assert result.best_epoch == 7 and len(result.history) == 7


def test_student_loss_trains_every_term(toy_features, tmp_path):
    cohort = load_cohort(toy_features, toy_features / "labels.csv", FeatureStore(2**30))
    names = cohort.names
    # A fake teacher: slide logits from the label, HR attention = the first feature.
    outputs = tmp_path / "teacher_outputs.h5"
    with h5py.File(outputs, "w") as fh:
        for name in names:
            label = cohort.slides[name].label
            fh[f"{name}/logits"] = np.array([2.0, -2.0] if label == 0 else [-2.0, 2.0],
                                            np.float32)
            fh[f"{name}/attn_logits"] = cohort.store.read(cohort.hr(name))[:, 0]
    bags = student_bags(cohort, names, cohort.lr, outputs, "max")
    torch.manual_seed(0)
    model = GatedABMIL(256, 2, hidden=16, instance_head=True)
    loss_fn = student_loss(StudentConfig(topk=2))
    (batch,) = bags.batches(len(bags))
    assert batch.teacher_logits.shape == (24, 2) and len(batch.teacher_attn) == len(batch.x)
    first, parts = loss_fn(model(batch.x, batch.offsets), batch)
    assert set(parts) == {"ce", "logit_kd", "attn_kd", "inst"}
    cfg = TrainConfig(epochs=15, batch_bags=6, lr=2e-3, patience=15)
    train_mil(model, bags, bags, cfg, torch.device("cpu"), seed=0, loss_fn=loss_fn)
    model.train()
    torch.manual_seed(0)
    last, last_parts = loss_fn(model(batch.x, batch.offsets), batch)
    assert float(last.detach()) < float(first.detach())
    assert last_parts["attn_kd"] < parts["attn_kd"]

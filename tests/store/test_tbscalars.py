"""The user's TensorBoard scalars: both encodings, damage, gradscope's own tags, the tag → metric mapping."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradscope.errors import GradscopeWarning
from gradscope.store.run import Series
from gradscope.store.tb_scalars import (
    GRADSCOPE_EVENT_FILE_SUFFIX,
    GRADSCOPE_TAG_PREFIXES,
    canonical_metrics,
    classify_tag,
    read_scalars,
)
from tests.logfactory import write_tb_scalars

ROOT = Path(__file__).resolve().parents[2]


def _pts(n: int, f=lambda i: float(i)) -> list[tuple[int, float]]:
    return [(i, f(i)) for i in range(n)]


@pytest.mark.parametrize("new_style", [False, True])
def test_reads_simple_and_tensor_scalars(tmp_path: Path, new_style: bool) -> None:
    write_tb_scalars(tmp_path, {"Loss/train": _pts(5, lambda i: 1.0 / (i + 1)), "lr": _pts(3, lambda i: 0.5)},
                     new_style=new_style)
    s = read_scalars(tmp_path)
    assert set(s) == {"Loss/train", "lr"}
    assert s["Loss/train"].steps.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(s["Loss/train"].values, [1.0, 0.5, 1 / 3, 0.25, 0.2], rtol=1e-6)
    assert s["Loss/train"].source == "tensorboard:Loss/train"


def test_torch_summary_writer_scalars(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for i in range(4):
            w.add_scalar("train/loss", 2.0 - i, i)
            w.add_scalar("val/accuracy", 50.0 + i, i, new_style=True)
            w.add_scalar("grad_norm/fc1", 9.0, i)       # a gradscope tag: skipped
            w.add_histogram("weights", np.arange(10.0), i)
            w.add_text("note", "hello", i)
    s = read_scalars(tmp_path)
    assert set(s) == {"train/loss", "val/accuracy"}
    assert s["val/accuracy"].values.tolist() == [50.0, 51.0, 52.0, 53.0]
    c = canonical_metrics(s)
    assert set(c) == {"train_loss", "val_acc"}
    np.testing.assert_allclose(c["val_acc"].values, [0.50, 0.51, 0.52, 0.53])   # percent → fraction


def test_gradscope_tags_and_files_are_skipped(tmp_path: Path) -> None:
    ours = {f"{p}x" if p.endswith("/") else p: _pts(3) for p in GRADSCOPE_TAG_PREFIXES}
    write_tb_scalars(tmp_path, {**ours, "val_loss": _pts(3)})
    write_tb_scalars(tmp_path, {"train_loss": _pts(3)}, filename_suffix=GRADSCOPE_EVENT_FILE_SUFFIX)
    write_tb_scalars(tmp_path / "sub", {"train_loss": _pts(3)})   # subfolders are other runs
    assert set(read_scalars(tmp_path)) == {"val_loss"}


def test_later_file_wins_on_a_repeated_step(tmp_path: Path) -> None:
    for _ in range(11):   # the writer's per-process counter passes 9 → 10: order must stay natural
        write_tb_scalars(tmp_path, {"loss": [(0, 1.0), (1, 2.0)]})
    write_tb_scalars(tmp_path, {"loss": [(1, 5.0), (2, 6.0)]})
    s = read_scalars(tmp_path)["loss"]
    assert s.steps.tolist() == [0, 1, 2] and s.values.tolist() == [1.0, 5.0, 6.0]


def test_truncated_event_file_warns_and_keeps_what_was_read(tmp_path: Path) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": _pts(10)})
    data = path.read_bytes()
    path.write_bytes(data[:-7])   # cut inside the last record
    with pytest.warns(GradscopeWarning, match=rf"{path.name}: truncated") as rec:
        s = read_scalars(tmp_path)
    assert len(rec) == 1
    assert s["val_loss"].steps.tolist() == list(range(9))


def test_corrupt_event_record_is_skipped(tmp_path: Path) -> None:
    path = write_tb_scalars(tmp_path, {"val_loss": _pts(3)})
    good = path.read_bytes()
    garbage = b"\xff\xff\xff\xff"
    framed = struct.pack("<Q", len(garbage)) + b"\0" * 4 + garbage + b"\0" * 4
    path.write_bytes(good + framed)   # framing intact, payload not a protobuf
    later = write_tb_scalars(tmp_path, {"train_loss": _pts(2)})
    with pytest.warns(GradscopeWarning, match=rf"{path.name}: corrupt event record"):
        s = read_scalars(tmp_path)
    assert s["val_loss"].steps.tolist() == [0, 1, 2]
    assert later.exists() and s["train_loss"].steps.tolist() == [0, 1]


def test_no_event_files_is_empty(tmp_path: Path) -> None:
    assert read_scalars(tmp_path) == {}
    assert read_scalars(tmp_path / "missing", warn=False) == {}


TRAIN_LOSS = ["loss/train", "train/loss", "Loss/train", "train_loss", "training_loss", "loss", "Train-Loss",
              "train.loss", "train_loss_epoch", "epoch_loss"]
VAL_LOSS = ["Loss/val", "val/loss", "val_loss", "validation_loss", "loss/valid", "eval/loss",
            "Loss/Validation", "test_loss", "dev/loss"]
VAL_ACC = ["accuracy/val", "val_acc", "val/accuracy", "acc/val", "eval/accuracy", "val_accuracy"]
TRAIN_ACC = ["train_acc", "accuracy/train", "accuracy", "train/acc"]
ERRORS = [("train_error", "error/train"), ("val_error", "val_error"), ("val_error", "eval/err")]
UNMAPPED = ["aux_loss", "loss/train/layer3", "lr", "learning_rate", "train/val/loss", "loss_acc", "grad_norm",
            "perplexity", "train/loss_scale"]


@pytest.mark.parametrize(("tag", "name"), [*[(t, "train_loss") for t in TRAIN_LOSS],
                                           *[(t, "val_loss") for t in VAL_LOSS],
                                           *[(t, "val_acc") for t in VAL_ACC],
                                           *[(t, "train_acc") for t in TRAIN_ACC],
                                           *[(t, n) for n, t in ERRORS]])
def test_tag_mapping(tag: str, name: str) -> None:
    c = classify_tag(tag)
    assert c is not None and c[0] == name


@pytest.mark.parametrize("tag", UNMAPPED)
def test_unmapped_tags(tag: str) -> None:
    assert classify_tag(tag) is None


def _series(values: list[float], tag: str) -> Series:
    return Series(np.arange(len(values), dtype=np.int64), np.array(values, dtype=float), f"tensorboard:{tag}")


def test_preferences_between_tags() -> None:
    scalars = {t: _series([1.0], t) for t in
               ["train_loss_step", "train_loss", "loss", "test_loss", "val_loss_epoch", "test/accuracy"]}
    c = canonical_metrics(scalars)
    assert c["train_loss"].source == "tensorboard:train_loss"      # plain beats step, explicit beats none
    assert c["val_loss"].source == "tensorboard:val_loss_epoch"    # validation beats test
    assert c["val_acc"].source == "tensorboard:test/accuracy"      # test stands in when nothing else


def test_percent_accuracy_and_error_become_fractions_losses_do_not() -> None:
    c = canonical_metrics({"val_acc": _series([40.0, 80.0], "val_acc"),
                           "train_acc": _series([0.4, 0.8], "train_acc"),
                           "val_error": _series([20.0, float("nan")], "val_error"),
                           "train_loss": _series([40.0, 2.0], "train_loss")})
    assert c["val_acc"].values.tolist() == [0.4, 0.8]
    assert c["train_acc"].values.tolist() == [0.4, 0.8]
    assert c["val_error"].values[0] == pytest.approx(0.2) and np.isnan(c["val_error"].values[1])
    assert c["train_loss"].values.tolist() == [40.0, 2.0]


def test_import_does_not_pull_torch_or_tensorflow(tmp_path: Path) -> None:
    write_tb_scalars(tmp_path, {"val_loss": _pts(3)})
    code = ("import sys; from gradscope.store.tb_scalars import read_scalars; "
            f"assert read_scalars({str(tmp_path)!r}); "
            "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)

"""runtime.metrics_tb: TensorBoard event files that hold the scalars written."""
import glob
import struct

import pytest

pytest.importorskip("tensorboardX")

from runtime.metrics_tb import TensorBoardWriter  # noqa: E402


def _events(path):
    """Every Event record of a TensorBoard event file (length, crc, data, crc framing)."""
    from tensorboardX.proto import event_pb2
    out = []
    with open(path, "rb") as f:
        data = f.read()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        out.append(ev)
        i += 12 + n + 4
    return out


def test_add_scalars_writes_tagged_points(tmp_path):
    with TensorBoardWriter(str(tmp_path)) as tb:
        tb.add_scalars(10, {"step": 10, "epoch": 1, "loss": 0.5, "eval_accuracy": 0.9,
                            "note": "text", "lr": float("nan")})
        tb.add_scalars(20, {"loss": 0.25})
    (path,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    points = [(ev.step, v.tag, round(v.simple_value, 6)) for ev in _events(path)
              for v in ev.summary.value]
    assert points == [(10, "train/loss", 0.5), (10, "eval/accuracy", 0.9),
                      (20, "train/loss", 0.25)]

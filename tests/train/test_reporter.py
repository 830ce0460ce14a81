"""The training Reporter's TensorBoard writer: scalars land in event files, and starting it does
not import torch (tensorboardX imports torch whenever it is installed, ~3 s per process)."""

import pathlib
import struct
import subprocess
import sys

from tensorboardX.proto import event_pb2

from mimo_jax.train import metrics

REPORT = """
import sys
from mimo_jax.train import metrics
reporter = metrics.Reporter({log_dir!r}, tensorboard=True, total_steps=2, every=1, start_step=0,
                            summary=metrics.lm_summary, curves=metrics.LM_CURVES)
for step in (1, 2):
  reporter.record(step, {{"loss": 2.0 / step, "text_loss": 1.0, "text_acc": 0.5,
                          "grad_norm": 1.0}}, 0.1)
reporter.close()
print("torch imported:", "torch" in sys.modules)
"""


def test_tensorboard_scalars_are_written_without_importing_torch(tmp_path):
  import torch  # noqa: F401,PLC0415 (installed here, as beside the judges: the case that costs)
  done = subprocess.run([sys.executable, "-c", REPORT.format(log_dir=str(tmp_path))],
                        capture_output=True, text=True, check=True)
  assert done.stdout.strip().endswith("torch imported: False"), done.stdout + done.stderr
  (events_file,) = (tmp_path / metrics.TENSORBOARD_DIR).glob("events.out.tfevents.*")
  losses = [(e.step, v.simple_value) for e in _events(events_file) for v in e.summary.value
            if v.tag == "loss"]
  assert losses == [(1, 2.0), (2, 1.0)]


def _events(path: pathlib.Path) -> list:
  """The Event protos of a TFRecord file: [u64 length][u32 crc][data][u32 crc] per record."""
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events

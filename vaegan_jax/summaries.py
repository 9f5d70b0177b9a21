"""TensorBoard scalar summaries without TensorFlow.

CLU's metric writers import TensorFlow; this writes the same event files
(`tensorboard --logdir WORKDIR` reads them) with the `tensorboard` package's
own protos and writer, and logs every scalar through absl like CLU's
LoggingWriter.
"""

import time

from absl import logging


class ScalarWriter:
  """`write_scalars(step, {name: float})`, `flush()`, `close()`.

  Args:
    logdir: where the event file goes; None = log only (non-main processes).
  """

  def __init__(self, logdir: str | None):
    self._writer = None
    if logdir is not None:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
      self._writer = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: dict):
    logging.info('[%d] %s', step, ', '.join(f'{k}={v:.6g}' for k, v in scalars.items()))
    if self._writer is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def flush(self):
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()

"""The training loop: start or resume, step, log, checkpoint, stop cleanly on SIGTERM.

One loop serves every model (`run`): a `Job` hands it what is trained (a jitted step, the
abstract and the fresh state, how the state splits into checkpoint items, the run.json record
and how the console summarises a step), and the loop owns the rest: resume, the Grain iterator's
position, Orbax checkpoints (every N steps, the last K kept, on SIGTERM), metrics (console with
ETA, JSONL, TensorBoard, PNG) and the non-finite guard's stop. `train(cfg, workdir)` is the
speech LM's job (`python -m mimo_jax.train`); `mimo_jax.train.codec` is the codec's. The run's
directory holds:

  workdir/checkpoints/<step>/<items>,data   Orbax: the state's items (the LM's params and train,
                                            the codec's state) and each process's Grain iterator
                                            position
  and in the log dir (the LM's config.log.dir, default the workdir; local or gs://, every path
  goes through etils.epath; remote logs are uploaded at every checkpoint and at the end):
  run.json            the resolved config and the model the params have; an LM resume that
                      would change the model, the data stream or the optimizer state is refused
                      (mimo_jax.train.run_json)
  metrics.jsonl       one row per step (losses, accuracies, LRs, grad and param norms, timing)
  tensorboard/        TensorBoard event files
  loss_curve.png      the loss curves, redrawn at every checkpoint and at the end

A directory that already holds a checkpoint is resumed from its latest one: the state and the
data iterator continue exactly (bitwise on CPU), on the same or a different mesh. Otherwise the
job's fresh state is taken: for the LM from `init_from` (an Orbax checkpoint of another run,
whose params alone are taken, e.g. phase 2 from phase 1; or an official MiMo-Audio safetensors
folder) or from random weights.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from mimo_jax import sharding
from mimo_jax.config import ConfigError, MimoAudioConfig
from mimo_jax.data.pipeline import TrainIterator
from mimo_jax.lm import flops as lm_flops
from mimo_jax.train import config as train_config
from mimo_jax.train import data, metrics, run_dir, run_json
from mimo_jax.train.checkpoint import Checkpointer
from mimo_jax.train.preemption import EXIT_STUCK, Preempted, Preemption
from mimo_jax.train.run_dir import CHECKPOINT_DIR, join_state, split_state
from mimo_jax.train.state import TrainSetup, create_state
from mimo_jax.train.step import TrainStep, check_batch, make_train_step

METRICS_FILE = metrics.METRICS_FILE


@dataclasses.dataclass(frozen=True)
class Job:
  """What the loop trains: the model side of one run."""

  name: str  # in the log: the LM's phase, "codec stage 1", ...
  batch: str  # in the log: the batch's shape in words
  mesh: jax.sharding.Mesh
  # Jitted (state, global batch) -> (state, metrics). The state counts its steps in "step" and
  # the non-finite steps in a row (whose update was skipped) in "bad_steps".
  step: Callable[[dict, dict], tuple[dict, Any]]
  # ShapeDtypeStructs sharded on this run's mesh: what a resume restores into.
  abstract_state: Callable[[], dict]
  fresh_state: Callable[[], dict]  # a new state (another run's params, or random weights)
  to_items: Callable[[dict], dict]  # the state as named checkpoint items
  from_items: Callable[[dict], dict]
  info: dict  # the run.json record
  check_resume: Callable[[dict], dict]  # the record to write when resuming (may refuse)
  reporter: dict  # metrics.Reporter's model-specific options (summary, curves, throughput)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How long the run is and how it saves and logs."""

  steps: int
  checkpoint_every: int
  keep: int
  log_dir: str
  log_every: int
  tensorboard: bool
  max_bad_steps: int
  async_save: bool = True


@dataclasses.dataclass
class RunResult:
  """How a call to the loop ended."""

  reason: str  # "finished", "preempted" or "non_finite"
  step: int  # steps done (the state's step)
  checkpoint_step: int | None
  state: dict
  setup: Any  # what was trained: the LM's TrainSetup, the codec's CodecConfig


class NonFiniteError(RuntimeError):
  """Too many non-finite steps in a row; the run saved a checkpoint and stopped."""


def check_writable(path: str, name: str) -> None:
  """Fails now, naming the flag or field, if `path` (local or gs://) cannot be written."""
  try:
    directory = epath.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (OSError locally, GCS client errors)
    raise ConfigError(f"{name}={path}: not writable ({getattr(e, 'strerror', None) or e})"
                      ) from None


def command_result(train: Callable[[], RunResult], workdir: str,
                   bad_input: tuple[type[Exception], ...]) -> RunResult:
  """A training command's run: its result (and a line saying how it ended), or the exit status
  the commands document: 2 on `bad_input` (a bad flag, config, checkpoint or data), 143 when
  SIGTERM came before the run could save (its latest checkpoint stands), 1 after too many
  non-finite steps (after a checkpoint)."""
  try:
    result = train()
  except bad_input as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Preempted:
    message = f"SIGTERM before the run could save; the latest checkpoint in {workdir} stands"
    logging.warning("%s", message)
    print(message, file=sys.stderr)
    sys.exit(EXIT_STUCK)
  except NonFiniteError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{result.reason} at step {result.step}; checkpoint {result.checkpoint_step} in "
        f"{workdir}")
  return result


def preemptible(grace_s: float, body: Callable[[Preemption], RunResult]) -> RunResult:
  """Runs `body` with SIGTERM handling (mimo_jax.train.preemption): while it sets up there is
  nothing to save, so SIGTERM cuts the wait short; in the loop it saves first."""
  preemption = Preemption(grace_s)
  try:
    with preemption.interruptible():
      return body(preemption)
  finally:
    preemption.close()


def run(job: Job, schedule: Schedule, workdir: str, iterator: TrainIterator, setup: Any,
        preemption: Preemption, max_steps: int | None = None) -> RunResult:
  """Trains `job` in `workdir` (resuming its latest checkpoint) until schedule.steps, SIGTERM,
  too many non-finite steps, or `max_steps` steps in total (this call only: a later call goes
  on)."""
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), every_steps=schedule.checkpoint_every,
                      keep=schedule.keep, async_save=schedule.async_save)
  try:
    state = _initial_state(job, schedule, ckpt, iterator)
    return _steps(job, schedule, ckpt, iterator, state, setup, max_steps, preemption)
  finally:
    ckpt.close()


def _initial_state(job: Job, schedule: Schedule, ckpt: Checkpointer,
                   iterator: TrainIterator) -> dict:
  """The latest checkpoint of this run (with the iterator moved to its position), else the
  job's fresh state."""
  jsonl = os.path.join(schedule.log_dir, METRICS_FILE)
  info = job.info
  resume_step = ckpt.latest_step()
  if resume_step is not None:
    info = job.check_resume(info)
    logging.info("resuming from %s/%d", ckpt.directory, resume_step)
    items = ckpt.restore(job.to_items(job.abstract_state()), resume_step,
                         data_iterator=iterator.grain)
    state = job.from_items(items)
    metrics.truncate_jsonl(jsonl, resume_step)
  else:
    state = job.fresh_state()
    if jax.process_index() == 0 and epath.Path(jsonl).exists():
      epath.Path(jsonl).unlink()  # the log of an attempt that never reached a checkpoint
  if jax.process_index() == 0:
    run_json.write(schedule.log_dir, info)
  return state


def _steps(job: Job, schedule: Schedule, ckpt: Checkpointer, iterator: TrainIterator,
           state: dict, setup: Any, max_steps: int | None,
           preemption: Preemption) -> RunResult:
  start = int(state["step"])
  reporter = metrics.Reporter(schedule.log_dir, tensorboard=schedule.tensorboard,
                              total_steps=schedule.steps, every=schedule.log_every,
                              start_step=start, **job.reporter)
  logging.info("training %s from step %d to %d on mesh %s (%d processes); %s", job.name, start,
               schedule.steps, dict(job.mesh.shape), jax.process_count(), job.batch)
  end = schedule.steps if max_steps is None else min(schedule.steps, max_steps)
  reason, step, saved_step = "finished", start, ckpt.latest_step()
  try:
    # Steps and saves run to their end (SIGTERM is checked after each step); only the wait
    # for a batch is cut short.
    with preemption.shielded():
      while step < end:
        batch = preemption.next(iterator)
        if batch is None:
          reason = "preempted"
          break
        began = time.perf_counter()
        state, step_metrics = job.step(state, batch)
        step_metrics = jax.device_get(step_metrics)
        step += 1
        reporter.record(step, step_metrics, time.perf_counter() - began,
                        skipped=_skipped(iterator) if reporter.due(step) else None)
        bad_steps = int(state["bad_steps"])
        if bad_steps:
          logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)",
                          step, bad_steps)
        if bad_steps >= schedule.max_bad_steps:
          reason = "non_finite"
          break
        if preemption.agreed():
          reason = "preempted"
          break
        if ckpt.save(step, job.to_items(state), iterator.grain):
          saved_step = step
          reporter.flush()
      if saved_step != step and (reason != "finished" or step == schedule.steps):
        ckpt.save(step, job.to_items(state), iterator.grain, force=True)
        saved_step = step
      ckpt.wait()
  finally:
    reporter.close()
  logging.info("%s at step %d; latest checkpoint: %s; examples skipped so far: %s", reason, step,
               saved_step, _skipped(iterator) or "none")
  if reason == "non_finite":
    raise NonFiniteError(f"stopped after {schedule.max_bad_steps} non-finite steps in a row at "
                         f"step {step}; checkpoint {saved_step} in {ckpt.directory} holds the "
                         f"last good params (skipped updates leave them unchanged)")
  return RunResult(reason, step, saved_step, state, setup)


def _skipped(iterator: TrainIterator) -> dict[str, int]:
  """Examples skipped so far per reason, summed over the processes (every process calls it)."""
  return metrics.sum_counts(iterator.skipped())


# --- the speech LM's job ------------------------------------------------------------------------

def log_dir(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """config.log.dir, else the workdir (either may be a gs:// path)."""
  return cfg.log.dir or workdir


def check_workdir(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails now, naming the flag, if the run could not write its checkpoints and logs."""
  check_writable(workdir, "--workdir")
  logs = log_dir(cfg, workdir)
  if logs != workdir:
    check_writable(logs, "--config.log.dir")
    logging.info("logs (metrics.jsonl, TensorBoard, loss curve) go to %s", logs)


def model_of(cfg: ml_collections.ConfigDict, init_from: str | None) -> MimoAudioConfig:
  """The model a run trains: the one `init_from` holds (an official folder's config.json, or the
  model another run's run.json records), else the config's. The runtime fields
  (`train_config.MODEL_RUNTIME_FIELDS`: dtype, remat, ...) are always the config's."""
  model = train_config.model_from(cfg)
  if not init_from:
    return model
  compute = {name: getattr(model, name) for name in train_config.MODEL_RUNTIME_FIELDS}
  return run_dir.model_config(init_from, **compute) or model


def train(cfg: ml_collections.ConfigDict, workdir: str, *, mesh_flag: str | None = None,
          init_from: str | None = None, model_cfg: MimoAudioConfig | None = None,
          train_step: TrainStep | None = None, max_steps: int | None = None,
          force_resume: bool = False) -> RunResult:
  """Runs (or resumes) the speech-LM training job `cfg` in `workdir`.

  mesh_flag overrides cfg.mesh; model_cfg overrides the model (default: `model_of`);
  train_step reuses an already built step and its mesh; max_steps stops this call early (after
  that many steps in total) without ending the run; force_resume resumes even when the config
  changes what `run_json.resume_changes` guards.
  """
  train_config.validate(cfg)
  check_workdir(cfg, workdir)
  return preemptible(cfg.checkpoint.sigterm_grace_s, lambda preemption: _train(
      cfg, workdir, mesh_flag, init_from, model_cfg, train_step, max_steps, preemption,
      force_resume))


def _train(cfg, workdir, mesh_flag, init_from, model_cfg, train_step, max_steps,
           preemption: Preemption, force_resume: bool) -> RunResult:
  if train_step is not None:
    mesh = train_step.batch_shardings["input_ids"].mesh
  else:
    mesh = sharding.make_mesh(mesh_flag or cfg.mesh)
  setup = TrainSetup.from_config(cfg, model_cfg or model_of(cfg, init_from))
  t = cfg.train
  if t.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size: {t.batch_size} does not divide over "
                      f"{jax.process_count()} processes")
  check_batch(t.batch_size, t.grad_accum_steps, mesh)
  source = data.make_source(cfg, setup.model, mesh)
  if train_step is None:
    train_step = make_train_step(setup, mesh, t.batch_size, t.positions, source.empty_id)
  logs = log_dir(cfg, workdir)

  def fresh_state() -> dict:
    params = None if not init_from else run_dir.load_params(init_from, "--init_from", mesh=mesh,
                                                            model=setup.model)[1]
    return create_state(setup, jax.random.key(t.seed), mesh, params)

  job = Job(
      name=t.phase, batch=f"batch {t.batch_size} x {t.positions} positions", mesh=mesh,
      step=train_step.fn, abstract_state=lambda: train_step.abstract_state,
      fresh_state=fresh_state, to_items=split_state,
      from_items=join_state, info=run_json.describe(cfg, setup.model, mesh, init_from),
      check_resume=lambda info: run_json.check_resume(logs, info, force_resume),
      reporter=dict(summary=metrics.lm_summary, curves=metrics.LM_CURVES,
                    tokens_per_step=t.batch_size * t.positions,
                    flops_per_step=lm_flops.train_flops(setup.model, setup.loss, t.batch_size,
                                                        t.positions),
                    peak=metrics.peak_flops(cfg.log.chip), n_chips=jax.device_count()))
  schedule = Schedule(steps=t.steps, checkpoint_every=cfg.checkpoint.every_steps,
                      keep=cfg.checkpoint.keep, log_dir=logs, log_every=cfg.log.every_steps,
                      tensorboard=cfg.log.tensorboard, max_bad_steps=t.max_bad_steps,
                      async_save=cfg.checkpoint.async_save)
  return run(job, schedule, workdir, source.iterator, setup, preemption, max_steps)

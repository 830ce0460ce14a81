"""The training loop: start or resume, step, log, checkpoint, stop cleanly on SIGTERM.

`train(cfg, workdir)` is what `python -m mimo_jax.train` runs. The run's directory holds:

  workdir/checkpoints/<step>/{params,train,data}   Orbax (params, the rest of the state, and
                                                   each process's Grain iterator position)
  and in the log dir (config.log.dir, default the workdir; local or gs://, every path goes
  through etils.epath; remote logs are uploaded at every checkpoint and at the end):
  run.json            the resolved config, the model config the params have (preset or
                      imported), optimizer and loss settings; a resume that would change the
                      model, the data stream or the optimizer state is refused
                      (mimo_jax.train.run_json)
  metrics.jsonl       one row per step (losses, accuracies, LRs, grad and param norms, timing)
  tensorboard/        TensorBoard event files
  loss_curve.png      the loss curves, redrawn at every checkpoint and at the end

A directory that already holds a checkpoint is resumed from its latest one: the state and the
data iterator continue exactly (bitwise on CPU), on the same or a different mesh. Otherwise the
state starts from `init_from` (an Orbax checkpoint of another run, whose params alone are taken,
e.g. phase 2 from phase 1; or an official MiMo-Audio safetensors folder) or from random weights.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
from absl import logging
from etils import epath

from mimo_jax import sharding
from mimo_jax.config import ConfigError, MimoAudioConfig
from mimo_jax.lm import flops as lm_flops
from mimo_jax.train import config as train_config
from mimo_jax.train import data, metrics, run_dir, run_json
from mimo_jax.train.checkpoint import Checkpointer
from mimo_jax.train.preemption import Preemption
from mimo_jax.train.run_dir import CHECKPOINT_DIR, join_state, split_state
from mimo_jax.train.state import TrainSetup, create_state
from mimo_jax.train.step import TrainStep, check_batch, make_train_step

METRICS_FILE = metrics.METRICS_FILE


@dataclasses.dataclass
class RunResult:
  """How a call to `train` ended."""

  reason: str  # "finished", "preempted" or "non_finite"
  step: int  # steps done (the state's step)
  checkpoint_step: int | None
  state: dict
  setup: TrainSetup


class NonFiniteError(RuntimeError):
  """Too many non-finite steps in a row; the run saved a checkpoint and stopped."""


def _check_writable(path: str, name: str) -> None:
  try:
    directory = epath.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write_probe_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (OSError locally, GCS client errors)
    raise ConfigError(f"{name}={path}: not writable ({getattr(e, 'strerror', None) or e})"
                      ) from None


def log_dir(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """config.log.dir, else the workdir (either may be a gs:// path)."""
  return cfg.log.dir or workdir


def check_workdir(cfg: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails now, naming the flag, if the run could not write its checkpoints and logs."""
  _check_writable(workdir, "--workdir")
  logs = log_dir(cfg, workdir)
  if logs != workdir:
    _check_writable(logs, "--config.log.dir")
    logging.info("logs (metrics.jsonl, TensorBoard, loss curve) go to %s", logs)


def model_of(cfg: ml_collections.ConfigDict, init_from: str | None) -> MimoAudioConfig:
  """The model a run trains: the one `init_from` holds (an official folder's config.json, or the
  model another run's run.json records), else the config's. The compute fields (dtype, remat,
  attention) are always the config's."""
  model = train_config.model_from(cfg)
  if not init_from:
    return model
  compute = dict(dtype=model.dtype, param_dtype=model.param_dtype,
                 remat_policy=model.remat_policy, attention=model.attention)
  return run_dir.model_config(init_from, **compute) or model


def train(cfg: ml_collections.ConfigDict, workdir: str, *, mesh_flag: str | None = None,
          init_from: str | None = None, model_cfg: MimoAudioConfig | None = None,
          train_step: TrainStep | None = None, max_steps: int | None = None,
          force_resume: bool = False) -> RunResult:
  """Runs (or resumes) the training job `cfg` in `workdir`.

  mesh_flag overrides cfg.mesh; model_cfg overrides the model (default: `model_of`);
  train_step reuses an already built step and its mesh; max_steps stops this call early (after
  that many steps in total) without ending the run; force_resume resumes even when the config
  changes what `run_json.resume_changes` guards.
  """
  train_config.validate(cfg)
  check_workdir(cfg, workdir)
  # From here on SIGTERM ends the run promptly (mimo_jax.train.preemption): while it sets up
  # there is nothing to save, so the wait is cut short; in the loop it saves first.
  preemption = Preemption(cfg.checkpoint.sigterm_grace_s)
  try:
    with preemption.interruptible():
      return _train(cfg, workdir, mesh_flag, init_from, model_cfg, train_step, max_steps,
                    preemption, force_resume)
  finally:
    preemption.close()


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

  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), every_steps=cfg.checkpoint.every_steps,
                      keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
  try:
    state = _initial_state(cfg, setup, mesh, ckpt, train_step, source.iterator.grain, workdir,
                           init_from, force_resume)
    return _steps(cfg, setup, workdir, ckpt, train_step, source.iterator, state, max_steps,
                  preemption)
  finally:
    ckpt.close()


def _initial_state(cfg, setup: TrainSetup, mesh, ckpt: Checkpointer, train_step: TrainStep,
                   iterator, workdir: str, init_from: str | None, force_resume: bool) -> dict:
  """The latest checkpoint of this run (with the iterator moved to its position), else a fresh
  state from init_from or random weights."""
  jsonl = os.path.join(log_dir(cfg, workdir), METRICS_FILE)
  info = run_json.describe(cfg, setup.model, mesh, init_from)
  resume_step = ckpt.latest_step()
  if resume_step is not None:
    info = run_json.check_resume(log_dir(cfg, workdir), info, force_resume)
    logging.info("resuming from %s/%d", ckpt.directory, resume_step)
    abstract = split_state(train_step.abstract_state)
    state = join_state(ckpt.restore(abstract, resume_step, data_iterator=iterator))
    metrics.truncate_jsonl(jsonl, resume_step)
  else:
    params = None if not init_from else run_dir.load_params(init_from, "--init_from", mesh=mesh,
                                                            model=setup.model)[1]
    state = create_state(setup, jax.random.key(cfg.train.seed), mesh, params)
    if jax.process_index() == 0 and epath.Path(jsonl).exists():
      epath.Path(jsonl).unlink()  # the log of an attempt that never reached a checkpoint
  if jax.process_index() == 0:
    run_json.write(log_dir(cfg, workdir), info)
  return state


def _steps(cfg, setup: TrainSetup, workdir: str, ckpt: Checkpointer, train_step: TrainStep,
           iterator, state: dict, max_steps: int | None, preemption: Preemption) -> RunResult:
  t = cfg.train
  start = int(state["step"])
  reporter = metrics.Reporter(
      log_dir(cfg, workdir), tensorboard=cfg.log.tensorboard, total_steps=t.steps,
      every=cfg.log.every_steps, tokens_per_step=t.batch_size * t.positions,
      flops_per_step=lm_flops.train_flops(setup.model, t.batch_size, t.positions,
                                          setup.loss.trains_audio),
      peak=metrics.peak_flops(cfg.log.chip), n_chips=jax.device_count(), start_step=start)
  logging.info("training %s from step %d to %d on mesh %s (%d processes); batch %d x %d "
               "positions", t.phase, start, t.steps, dict(train_step.batch_shardings[
                   "input_ids"].mesh.shape), jax.process_count(), t.batch_size, t.positions)
  end = t.steps if max_steps is None else min(t.steps, max_steps)
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
        state, step_metrics = train_step.fn(state, batch)
        step_metrics = jax.device_get(step_metrics)
        step += 1
        reporter.record(step, step_metrics, time.perf_counter() - began,
                        skipped=_skipped(iterator) if reporter.due(step) else None)
        bad_steps = int(state["bad_steps"])
        if bad_steps:
          logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)",
                          step, bad_steps)
        if bad_steps >= t.max_bad_steps:
          reason = "non_finite"
          break
        if preemption.agreed():
          reason = "preempted"
          break
        if ckpt.save(step, split_state(state), iterator.grain):
          saved_step = step
          reporter.flush()
      if saved_step != step and (reason != "finished" or step == t.steps):
        ckpt.save(step, split_state(state), iterator.grain, force=True)
        saved_step = step
      ckpt.wait()
  finally:
    reporter.close()
  logging.info("%s at step %d; latest checkpoint: %s; examples skipped so far: %s", reason, step,
               saved_step, _skipped(iterator) or "none")
  if reason == "non_finite":
    raise NonFiniteError(f"stopped after {t.max_bad_steps} non-finite steps in a row at step "
                         f"{step}; checkpoint {saved_step} in {ckpt.directory} holds the last "
                         f"good params (skipped updates leave them unchanged)")
  return RunResult(reason, step, saved_step, state, setup)


def _skipped(iterator: data.pipeline.TrainIterator) -> dict[str, int]:
  """Examples skipped so far per reason, summed over the processes (every process calls it)."""
  return metrics.sum_counts(iterator.skipped())



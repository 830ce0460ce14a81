"""`run.json`: what a run directory holds, and the guard that keeps a resume from changing it.

A training run writes it at every start (beside its metrics): the resolved experiment config,
the model config the params actually have (the preset, or the config.json of an imported
checkpoint, or the model of the run it started from), the optimizer and loss settings, the mesh.
`python -m mimo_jax.convert` writes one with the model alone for the Orbax runs it imports.
Everything that loads a run's params (resume, `--init_from`, generation, export) takes the
model from here, so a run is loadable whatever its model came from.

A resume compares the stored file with the new one and refuses a change to the model, the data
stream or the optimizer state's layout: those would silently mix two runs in one checkpoint
line (or fail deep inside Orbax). Learning rates, steps, logging, the mesh and the compute
dtype may change.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from mimo_jax.config import ConfigError, MimoAudioConfig
from mimo_jax.train import config as train_config

RUN_JSON = "run.json"
# MimoAudioConfig fields that only change how the same params are computed; everything else in
# the model (param_dtype included: the state's dtype) is the run's identity.
_COMPUTE_FIELDS = frozenset({"dtype", "remat_policy", "scan_layers", "attention",
                             "official_bf16_speech_sum"})
# Settings that decide which batches the run sees, in order.
_DATA_FIELDS = (("config", "train", "phase"), ("config", "train", "batch_size"),
                ("config", "train", "positions"))


def describe(cfg: ml_collections.ConfigDict, model: MimoAudioConfig, mesh: jax.sharding.Mesh,
             init_from: str | None) -> dict[str, Any]:
  """The run's record; `model` is the config the params have (not necessarily cfg's preset)."""
  return {**train_config.describe(cfg), "model": dataclasses.asdict(model),
          "mesh": dict(mesh.shape), "init_from": init_from, "devices": jax.device_count(),
          "processes": jax.process_count()}


def write(directory: str, info: dict[str, Any]) -> None:
  path = epath.Path(directory) / RUN_JSON
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(info, indent=2, default=str) + "\n")


def read(directory: str) -> dict[str, Any] | None:
  """The run.json in `directory`, or None when there is none."""
  path = epath.Path(directory) / RUN_JSON
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path}: not valid JSON ({e})") from None


def model_config(info: dict[str, Any], **runtime: Any) -> MimoAudioConfig:
  """The model a run.json records; `runtime` replaces compute fields (dtype, remat, ...)."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in info["model"].items()}
  return MimoAudioConfig(**{**fields, **runtime})


def _get(info: dict[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    if not isinstance(info, dict) or key not in info:
      return None
    info = info[key]
  return info


def _layout(info: dict[str, Any]) -> dict[str, Any]:
  """What shapes the optimizer state: the trained groups (frozen ones have no state) and the
  adapters."""
  opt = info.get("optimizer", {})
  rank = opt.get("lora_rank", 0)
  return {"trained_groups": sorted(group for group, lr in opt.get("learning_rates", ())
                                   if lr > 0),
          "lora_rank": rank, "lora_targets": opt.get("lora_targets") if rank else None}


def resume_changes(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """'setting: stored -> new' for every difference a resume may not make."""
  new = json.loads(json.dumps(new, default=str))  # compare in the stored file's types
  pairs: dict[str, tuple[Any, Any]] = {}
  for field in sorted(set(stored.get("model", {})) | set(new.get("model", {}))):
    if field not in _COMPUTE_FIELDS:
      pairs[f"model.{field}"] = (_get(stored, ("model", field)), _get(new, ("model", field)))
  for field in sorted(set(_get(stored, ("config", "data")) or {}) |
                      set(_get(new, ("config", "data")) or {})):
    path = ("config", "data", field)
    pairs[".".join(path[1:])] = (_get(stored, path), _get(new, path))
  for path in _DATA_FIELDS:
    pairs[".".join(path[1:])] = (_get(stored, path), _get(new, path))
  stored_layout, new_layout = _layout(stored), _layout(new)
  for key in stored_layout:
    pairs[f"optimizer.{key}"] = (stored_layout[key], new_layout[key])
  return [f"{name}: {old!r} -> {now!r}" for name, (old, now) in pairs.items() if old != now]


def check_resume(directory: str, new: dict[str, Any], force: bool) -> dict[str, Any]:
  """Refuses (ConfigError) to resume the run whose run.json is in `directory` with settings that
  change it, unless `force`; returns the record to write (forced changes noted in it)."""
  stored = read(directory)
  if stored is None:
    logging.warning("resuming without a run.json in %s: the settings cannot be compared",
                    directory)
    return new
  if "config" not in stored:
    raise ConfigError(f"--workdir={directory}: it holds params written by mimo_jax.convert, "
                      f"not a training run to resume; start a run from it with "
                      f"--init_from={directory}")
  changes = resume_changes(stored, new)
  if not changes:
    return new
  listed = "; ".join(changes)
  if not force:
    raise ConfigError(f"--workdir={directory}: resuming would change the run ({listed}); use "
                      f"a new workdir, or pass --force_resume to resume with these changes")
  logging.warning("--force_resume: resuming %s with changes: %s", directory, listed)
  return {**new, "forced_resume_changes": [*stored.get("forced_resume_changes", []), *changes]}

"""Pre-tokenisation: utterance records -> ArrayRecord shards of codec codes and text token ids.

Audio is tokenised once and training reads the shards (at MiMo-Audio's scale, 100M+ hours, the
codec cannot run inside the training input pipeline). The work is cut into shards of
`records_per_shard` consecutive source records; shard k belongs to host k % process_count, so
every host of a pod runs the same command and takes its share with no coordination.

Resumable: a shard is written to `<name>.partial`, its statistics are saved as `<name>.json`, and
only then is the shard renamed to its final name, so a final shard file is always complete and a
killed run leaves at most a partial file, which the next run rewrites. Finished shards are
skipped. Shard contents depend only on the source records and the settings, so a resumed run
writes the same bytes as an uninterrupted one. `plan.json` in the output folder records the
settings, the codec's config and codebook sizes, and content hashes of the codec's weights and of
the text tokenizer; a rerun with any of them changed is refused (it would mix two codings in one
corpus), and training checks the codebook sizes against its model.

Each shard record is a msgpack map (`flax.serialization`): `codes` uint16 [T, n_q] (25 Hz),
`text_ids` int32 [n] (the transcript tokenised as data: `<|...|>` strings spelled out as
text), and the metadata `key`, `audio`, `text`, `speaker`, `language`, `task`, `caption`,
`seconds`. An SFT conversation's record has `messages` instead: per turn `role`, `thinking` and
`parts` (`text`, and `codes` uint16 [T, n_q] for an audio part), with empty `codes` and
`text_ids`. Bad inputs are skipped and counted by reason (`manifest.Skips`); the report
(`report.json`, or `report-process-<i>.json` per host of a pod) lists them with the counts, and
each shard's statistics count its records with a caption (`captions`, what training reads to
decide whether the captioning task has any data; `caption_count`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
from array_record.python import array_record_module
from etils import epath
from flax import serialization

from mimo_jax.codec import api
from mimo_jax.codec.api import AudioError
from mimo_jax.codec.config import CodecConfig
from mimo_jax.data import manifest
from mimo_jax.data.audio import AudioLimits, load_clip
from mimo_jax.data.progress import Progress
from mimo_jax.data.tokenizer import TextTokenizer

TEXT_TOO_LONG = "text_too_long"
ENCODE_FAILED = "encode_failed"
# One record per ArrayRecord chunk: random access (what Grain's shuffling reads) stays O(1).
WRITER_OPTIONS = "group_size:1"
SHARD_SUFFIX = ".array_record"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything besides the source that decides a shard's bytes (saved in plan.json)."""

  records_per_shard: int = 256
  n_q: int = api.DEFAULT_N_Q
  max_text_tokens: int = 4096
  limits: AudioLimits = AudioLimits()

  def __post_init__(self):
    if self.records_per_shard < 1:
      raise ValueError(f"records_per_shard must be >= 1, got {self.records_per_shard}")
    if self.max_text_tokens < 1:
      raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def shard_paths(output: str) -> list[str]:
  """The finished shards in an output folder, in order (what the training pipeline reads)."""
  return sorted(str(p) for p in epath.Path(output).glob(f"shard-*{SHARD_SUFFIX}"))


def serialize(example: dict) -> bytes:
  return serialization.msgpack_serialize(example)


def deserialize(data: bytes) -> dict:
  """A shard record -> dict with numpy `codes` [T, n_q] uint16 and `text_ids` [n] int32."""
  return serialization.msgpack_restore(data)


def _write_json_atomic(path: epath.Path, content: dict) -> None:
  partial = path.parent / (path.name + ".partial")
  partial.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
  partial.replace(path)


PLAN_FILE = "plan.json"


def params_sha256(params) -> str:
  """Content hash of a parameter pytree: every leaf's path, dtype, shape and bytes."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def tokenizer_sha256(tokenizer: TextTokenizer) -> str:
  return hashlib.sha256(tokenizer.hf.to_str().encode()).hexdigest()


def read_plan(output: str) -> dict | None:
  """The plan.json of a pre-tokenised folder, or None (shards written without one)."""
  path = epath.Path(output) / PLAN_FILE
  return json.loads(path.read_text()) if path.exists() else None


def _check_plan(output: epath.Path, plan: dict) -> None:
  """Writes plan.json, or checks that an existing one matches: resuming with other settings, another
  codec or another text tokenizer would mix two codings in one corpus."""
  old = read_plan(str(output))
  if old is None:
    _write_json_atomic(output / PLAN_FILE, plan)
  elif old != plan:
    changed = sorted(k for k in plan if old.get(k) != plan[k])
    raise ValueError(f"{output}: holds shards of different settings ({', '.join(changed)} "
                     f"differ from {output / PLAN_FILE}); use a new --output or the same codec, "
                     f"tokenizer and flags")


@dataclasses.dataclass
class Shard:
  """One shard's serialized examples (in record order), its skips, its audio seconds and how many
  of its examples have a caption."""

  examples: list[bytes]
  skips: manifest.Skips
  audio_seconds: float
  captions: int


def tokenize_shard(records: list[manifest.Record], params, cfg: CodecConfig,
                   encode_text: Callable[[str], np.ndarray], settings: Settings,
                   batch_size: int, progress: Progress | None = None, load_threads: int = 4
                   ) -> Shard:
  """The examples of one shard's records.

  Each record's text is checked (cheap), then its clips read and checked, `load_threads` records
  at a time (decoding and resampling release the GIL); then the clips of `batch_size` valid
  records at a time are encoded together. Results are taken in record order, so threads change
  nothing written.
  """

  def check(record: manifest.Record):
    texts = [p.text for m in record.messages for p in m.parts] or [record.text]
    text_ids = [np.asarray(encode_text(t), np.int32) for t in texts]
    n_tokens = sum(len(ids) for ids in text_ids)
    if n_tokens > settings.max_text_tokens:
      return TEXT_TOO_LONG, f"{record.key}: {n_tokens} text tokens > {settings.max_text_tokens}"
    try:
      wavs = [load_clip(path, cfg, settings.limits) for path in record.audio_paths]
    except AudioError as e:
      return e.reason, f"{record.key}: {e}"
    return (np.zeros(0, np.int32) if record.messages else text_ids[0]), wavs

  skips = manifest.Skips()
  valid = []
  with concurrent.futures.ThreadPoolExecutor(max(1, load_threads)) as pool:
    for record, (first, second) in zip(records, pool.map(check, records)):
      if isinstance(first, str):
        skips.add(first, record.key, second)
      else:
        valid.append((record, first, second))
  examples, total_seconds, captions = [], 0.0, 0
  for first in range(0, len(valid), batch_size):
    batch = valid[first:first + batch_size]
    clips = [(record, wav) for record, _, wavs in batch for wav in wavs]
    codes = iter(_encode(params, cfg, clips, settings.n_q))
    seconds = 0.0
    for record, text_ids, wavs in batch:
      record_codes = [next(codes) for _ in wavs]
      failed = [error for error in record_codes if isinstance(error, str)]
      if failed:
        skips.add(ENCODE_FAILED, record.key, f"{record.key}: codec encode failed: {failed[0]}")
        continue
      record_seconds = sum(len(wav) for wav in wavs) / cfg.sampling_rate
      seconds += record_seconds
      captions += bool(record.caption)
      examples.append(serialize(_shard_record(record, text_ids, record_codes, record_seconds,
                                              settings.n_q)))
    total_seconds += seconds
    if progress is not None:
      progress.update(len(batch), seconds)
  if progress is not None and len(records) > len(valid):
    progress.update(len(records) - len(valid), 0.0)
  return Shard(examples, skips, total_seconds, captions)


def _shard_record(record: manifest.Record, text_ids: np.ndarray, codes: list[np.ndarray],
                  seconds: float, n_q: int) -> dict:
  """A shard record: an utterance's codes and text ids, or a conversation's `messages` (each
  audio part's codes in place of its path; `codes` and `text_ids` empty)."""
  example = {"key": record.key, "audio": record.audio, "text": record.text,
             "speaker": record.speaker, "language": record.language, "task": record.task,
             "caption": record.caption, "seconds": seconds, "text_ids": text_ids}
  if not record.messages:
    return {**example, "codes": np.asarray(codes[0], np.uint16)}
  codes = iter(codes)
  messages = [{"role": m.role, "thinking": m.thinking,
               "parts": [{"text": p.text, **({"codes": np.asarray(next(codes), np.uint16)}
                                             if p.audio else {})} for p in m.parts]}
              for m in record.messages]
  return {**example, "codes": np.zeros((0, n_q), np.uint16), "messages": messages}


def _encode(params, cfg: CodecConfig, clips: list, n_q: int) -> list:
  """Codes of each (record, clip) pair. Should the batched call fail (checked clips should not
  make it, but a long job must not die on one record), each clip is retried alone, and a clip
  that still fails has the error's text in its place."""
  wavs = [wav for _, wav in clips]
  if not wavs:
    return []
  try:
    return api.encode_batch(params, cfg, wavs, cfg.sampling_rate, n_q=n_q)
  except Exception:  # pylint: disable=broad-except  (XLA and numpy raise many types)
    pass
  codes = []
  for wav in wavs:
    try:
      codes.append(api.encode(params, cfg, wav, cfg.sampling_rate, n_q=n_q))
    except Exception as e:  # pylint: disable=broad-except
      codes.append(f"{type(e).__name__}: {e}")
  return codes


def write_shard(path: str | os.PathLike, examples: list[bytes]) -> None:
  """Writes serialized examples as one shard: to `<path>.partial` (on local disk for remote
  outputs), then moved to `path`."""
  path = epath.Path(path)
  if "://" in str(path):
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, path.name)
      _write_records(local, examples)
      epath.Path(local).copy(path, overwrite=True)
    return
  partial = path.parent / (path.name + ".partial")
  _write_records(str(partial), examples)
  partial.replace(path)  # atomic on one file system: the final name only ever holds a whole shard


def _write_records(path: str, examples: list[bytes]) -> None:
  writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
  for example in examples:
    writer.write(example)
  writer.close()


def run(records: list[manifest.Record], source_skips: manifest.Skips, output: str, params,
        cfg: CodecConfig, tokenizer: TextTokenizer, settings: Settings, *,
        batch_size: int = 8, load_threads: int = 4, process_index: int = 0,
        process_count: int = 1, source: str = "", progress_interval: float = 10.0,
        out=sys.stdout) -> dict:
  """Tokenises this host's shards of `records` into `output`; returns (and saves) the report.
  Transcripts are tokenised as data (`<|...|>` strings spelled out)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  if not records:
    raise ValueError(f"{source or 'the source'}: no usable records ({source_skips.total} "
                     f"skipped: {dict(source_skips.counts)}); nothing to pre-tokenise")
  encode_text = functools.partial(tokenizer.encode, special=False)
  out_dir = epath.Path(output)
  out_dir.mkdir(parents=True, exist_ok=True)
  n_shards = -(-len(records) // settings.records_per_shard)
  plan = {"source": source, "records": len(records), "shards": n_shards,
          "records_per_shard": settings.records_per_shard, "n_q": settings.n_q,
          "max_text_tokens": settings.max_text_tokens,
          "limits": dataclasses.asdict(settings.limits),
          "codec": {**dataclasses.asdict(cfg), "codebook_sizes": cfg.codebook_sizes},
          "codec_params_sha256": params_sha256(params),
          "tokenizer_sha256": tokenizer_sha256(tokenizer)}
  _check_plan(out_dir, json.loads(json.dumps(plan)))  # compared as plan.json reads back
  mine = list(range(process_index, n_shards, process_count))
  cut = lambda k: records[k * settings.records_per_shard:(k + 1) * settings.records_per_shard]
  todo = [k for k in mine if not (out_dir / shard_name(k, n_shards)).exists()]
  print(f"pre-tokenising {len(records)} records into {n_shards} shards at {output}: this host "
        f"(process {process_index} of {process_count}) owns {len(mine)}, {len(mine) - len(todo)} "
        f"already finished", file=out, flush=True)
  progress = Progress(sum(len(cut(k)) for k in todo), progress_interval, out)
  for k in todo:
    name = shard_name(k, n_shards)
    shard = tokenize_shard(cut(k), params, cfg, encode_text, settings, batch_size, progress,
                           load_threads)
    _write_json_atomic(out_dir / (name[:-len(SHARD_SUFFIX)] + ".json"),
                       {"shard": name, "records": len(cut(k)), "written": len(shard.examples),
                        "captions": shard.captions, "audio_seconds": shard.audio_seconds,
                        "skips": shard.skips.to_json()})
    write_shard(out_dir / name, shard.examples)
  report = summarize(output, mine, n_shards, source_skips if process_index == 0 else None)
  report.update(process_index=process_index, process_count=process_count,
                seconds_this_run=round(time.monotonic() - progress.start, 3))
  name = "report.json" if process_count == 1 else f"report-process-{process_index:05d}.json"
  _write_json_atomic(out_dir / name, report)
  print(format_report(report), file=out, flush=True)
  return report


def summarize(output: str, shards: list[int], n_shards: int,
              source_skips: manifest.Skips | None) -> dict:
  """Counts over the given finished shards (from their saved statistics), plus source skips."""
  out_dir = epath.Path(output)
  skips = manifest.Skips()
  if source_skips is not None:
    skips.merge(source_skips)
  records = written = captions = 0
  seconds = 0.0
  for k in shards:
    stats = _shard_stats(str(out_dir / shard_name(k, n_shards)))
    records += stats["records"]
    written += stats["written"]
    captions += stats.get("captions", 0)
    seconds += stats["audio_seconds"]
    skips.merge(stats["skips"])
  return {"shards": len(shards), "records": records + (source_skips.total if source_skips else 0),
          "written": written, "captions": captions, "skipped": skips.total,
          "audio_hours": seconds / 3600, "skips": skips.to_json()}


def _shard_stats(shard_path: str) -> dict:
  """The statistics saved beside a finished shard."""
  return json.loads(epath.Path(shard_path[:-len(SHARD_SUFFIX)] + ".json").read_text())


def caption_count(shard_paths: list[str]) -> tuple[int, int]:
  """(records with a caption, records) over the shards that have statistics beside them (shards
  written before captions were kept count none; shards without statistics are not counted)."""
  stats = [_shard_stats(p) for p in shard_paths
           if epath.Path(p[:-len(SHARD_SUFFIX)] + ".json").exists()]
  return sum(s.get("captions", 0) for s in stats), sum(s["written"] for s in stats)


def format_report(report: dict) -> str:
  lines = [f"done: {report['written']} of {report['records']} records written to "
           f"{report['shards']} shards ({report['audio_hours']:.4f} h of audio), "
           f"{report['skipped']} skipped"]
  for reason, count in report["skips"]["counts"].items():
    first = report["skips"]["examples"][reason][0]["message"]
    lines.append(f"  {reason}: {count} (e.g. {first})")
  return "\n".join(lines)

"""Score checkpoints offline the way the MiMo-Audio report does, with judges that ship in wheels.

  python -m mimo_jax.evaluate --ckpt=RUN_OR_OFFICIAL_DIR [--ckpt=...] --codec_ckpt=DIR \\
      --tasks=asr,tts,codec --data=asr=/data/test-clean --data=tts=/data/meta.lst \\
      --data=codec=/data/clips.jsonl --output=DIR [--prompt_format=sft|pretrain] \\
      [--stream_text=given|free] [--tts_audio_temperature=T] [--closed_set=SENTENCES.txt]

Tasks (`eval.tasks`): asr, tts, continuation, codec, s2s, dialogue, mmlu_t2t / s2t / t2s / s2s.
`--data=TASK=PATH` names each task's local data (a bare PATH serves every task). Several --ckpt
give a side-by-side table. Per checkpoint and task, OUTPUT/<ckpt>/<task>/ holds the per-item rows
(`items.host<i>-of-<n>.jsonl`, one file per host: a killed run resumes where it stopped),
generated audio (audio/) and histograms (hist_*.png); OUTPUT/<ckpt>/report.md and summary.json
hold the table, with the skipped items counted by reason; OUTPUT/comparison.{md,json} sets the
checkpoints side by side. On several hosts each evaluates its share of the items and host 0
merges. Nothing is downloaded: checkpoints, data and judges are local.

Judges (`eval.judges`): open-vocabulary pocketsphinx, and (unless --noclosed_judge) closed-set
pocketsphinx, which names which sentence of the task's own sentences (plus --closed_set) was said;
resemblyzer SIM; DNSMOS. Every judge also scores the reference audio (`ref_*`). summary.json's
keys are documented in `eval.tasks.summarize`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
from absl import app, flags, logging

from mimo_jax.codec import api as codec_api
from mimo_jax.data.manifest import Skips
from mimo_jax.eval import choice, judges, report, store, tasks, wer
from mimo_jax.eval.backend import PROMPT_FORMATS, MimoBackend


@dataclasses.dataclass
class TaskData:
  """A task's items (read once, shared by every checkpoint) and the inputs it skipped."""

  items: list[dict]
  skips: Skips
  options: dict


def read_task(task: str, path: str, limit: int | None, n_shots: int) -> TaskData:
  skips, options = Skips(), {}
  if task in ("asr", "continuation", "codec", "dialogue"):
    items = tasks._records(path, skips)  # noqa: SLF001 (the shared manifest reader)
  elif task == "tts":
    items = tasks.read_tts(path, skips)
  elif task == "s2s":
    items = tasks.read_s2s(path, skips)
  else:
    items, shots = choice.read_speechmmlu(path, skips)
    options = {"shots": shots, "split": task.split("_", 1)[1], "data": path,
               "n_shots": n_shots}
  return TaskData(items[:limit] if limit else items, skips, options)


def sentences_of(task: str, items: list[dict]) -> list[str]:
  """The English sentences a closed-set judge of this task chooses among."""
  key = {"s2s": "target_text"}.get(task, "text")
  return [it[key] for it in items if key in it and not wer.is_chinese(it[key])
          and wer.normalize(it[key])]


def read_closed_set(path: str) -> list[str]:
  """The English sentences of a list: one per line, or `language<TAB>sentence` lines (the
  corpus's sentence files); `#` comments and blank lines are ignored."""
  sentences = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      language, tab, text = line.partition("\t")
      if tab and language != "en":
        continue
      text = text if tab else line
      if not wer.is_chinese(text) and wer.normalize(text):
        sentences.append(text.strip())
  if not sentences:
    raise ValueError(f"--closed_set={path}: no English sentence in it")
  return sentences


def _progress(task: str, done: int, total: int, start: float, n_start: int) -> None:
  rate = (done - n_start) / max(time.perf_counter() - start, 1e-9)
  eta = (total - done) / rate if rate > 0 else float("inf")
  logging.info("%s: %d/%d items, %.2f items/s, ETA %.0f s", task, done, total, rate, eta)


def run_task(name: str, task: str, data: TaskData, ctx: tasks.Context, folder: str,
             batch_size: int) -> None:
  """Scores this host's pending items of one task, appending rows as batches finish."""
  index, count = jax.process_index(), jax.process_count()
  path = store.host_file(folder, index, count)
  done = store.read_rows(path)
  todo = store.pending(data.items, done, index, count)
  total = len(data.items[index::count])
  if done:
    logging.info("%s %s: resuming, %d of %d items already scored", name, task, len(done), total)
  start, n_start = time.perf_counter(), total - len(todo)
  for i in range(0, len(todo), batch_size):
    store.append_rows(path, tasks.RUNNERS[task](ctx, todo[i:i + batch_size]))
    _progress(f"{name} {task}", n_start + min(i + batch_size, len(todo)), total, start, n_start)


def _sync(tag: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    multihost_utils.sync_global_devices(tag)


JUDGED_TASKS = ("asr", "tts", "continuation", "s2s", "codec")  # speech saying a known sentence


def evaluate_checkpoint(name: str, backend, codec: tuple, data: dict[str, TaskData],
                        output: str, *, batch_size: int = 8, options: dict | None = None,
                        open_judge: judges.SphinxJudge | None = None,
                        closed_set: list[str] = (),
                        judged: tasks.Judged | None = None) -> dict | None:
  """Every task of one checkpoint; host 0 merges the hosts' rows and writes the report, whose
  summary it returns (other hosts return None). backend: a `MimoBackend` or a stand-in.
  options["closed_judge"]: judge the judged tasks in closed-set mode too, over each task's own
  sentences plus `closed_set`. judged: the judges' answers of the checkpoints evaluated before
  (`run` shares one), so that the reference clips are judged once."""
  options = options or {}
  judged = judged or tasks.Judged()
  folder = os.path.join(output, name)
  closed_sizes = {}
  for task, task_data in data.items():
    task_dir = os.path.join(folder, task)
    os.makedirs(os.path.join(task_dir, "audio"), exist_ok=True)
    sentences = sentences_of(task, task_data.items) + list(closed_set)
    closed = None
    if options.get("closed_judge") and task in JUDGED_TASKS and sentences:
      closed = judged.closed_judge(sentences)
      closed_sizes[task] = len(closed.sentences)
    ctx = tasks.Context(backend, open_judge, closed, os.path.join(task_dir, "audio"), codec,
                        {**options, **task_data.options}, judged=judged)
    run_task(name, task, task_data, ctx, task_dir, batch_size)
  _sync(f"evaluate-{name}")
  if jax.process_index() != 0:
    return None
  # settings: the run's options (flags) and the closed set's size per task (0: no closed judge).
  summary = {"ckpt": name, "settings": {**options, "closed_set_sizes": closed_sizes},
             "tasks": {}, "skipped": {}}
  for task, task_data in data.items():
    task_dir = os.path.join(folder, task)
    rows = store.merge(task_dir, task_data.items)
    skips = Skips()
    skips.merge(task_data.skips)
    for row in rows:
      if "skipped" in row:
        skips.add(row["skipped"], row["id"], row["message"])
    summary["tasks"][task] = {**tasks.summarize(task, rows), "n_items": len(task_data.items),
                              "n_skipped": skips.total}
    summary["skipped"][task] = skips.to_json()
    report.write_histograms(task_dir, task, rows)
  report.write_checkpoint(folder, summary)
  return summary


def checkpoint_names(ckpts: list[str]) -> list[str]:
  """Folder names of the checkpoints' results: their base names, numbered when they clash."""
  names = []
  for path in ckpts:
    base = os.path.basename(os.path.normpath(path)) or "ckpt"
    names.append(base if base not in names else f"{base}_{len(names)}")
  return names


def parse_data(entries: list[str], task_names: list[str]) -> dict[str, str]:
  """--data values (TASK=PATH or a bare PATH for every task) -> {task: path}."""
  paths = {}
  for entry in entries:
    task, sep, path = entry.partition("=")
    if sep and task in tasks.TASKS:
      paths[task] = path
    else:
      paths.update({t: entry for t in task_names if t not in paths})
  missing = [t for t in task_names if t not in paths]
  if missing:
    raise app.UsageError(f"--data: no data for task(s) {missing}; give --data=TASK=PATH")
  return paths


def run(args) -> int:
  task_names = list(args.tasks)
  unknown = sorted(set(task_names) - set(tasks.TASKS))
  if unknown:
    raise app.UsageError(f"--tasks: unknown {unknown}; known: {list(tasks.TASKS)}")
  paths = parse_data(args.data or [], task_names)
  data = {t: read_task(t, paths[t], args.limit, args.n_shots) for t in task_names}
  options = {"continuation_seconds": args.continuation_seconds, "n_q": args.n_q,
             "dnsmos": args.dnsmos, "closed_judge": args.closed_judge,
             "stream_text": args.stream_text, "self_asr": args.self_asr,
             "tts_audio_temperature": args.tts_audio_temperature,
             "prompt_format": args.prompt_format, "max_new": args.max_new, "seed": args.seed}
  closed_set = read_closed_set(args.closed_set) if args.closed_set else []
  open_judge, judged = judges.SphinxJudge(), tasks.Judged()
  summaries = []
  ckpts = args.ckpt or []
  if not ckpts and any(t in tasks.NEEDS_MODEL for t in task_names):
    raise app.UsageError("--ckpt: required by the tasks that generate")
  from mimo_jax.train import run_dir  # noqa: PLC0415 (Orbax and the training stack)
  for name, ckpt in zip(checkpoint_names(ckpts or ["codec"]), ckpts or [None]):
    if ckpt is None:
      backend, codec = None, run_dir.load_codec(args.codec_ckpt)
    else:
      from mimo_jax.inference import MimoAudio  # noqa: PLC0415 (loads the model stack)
      mimo = MimoAudio.load(ckpt, args.codec_ckpt, args.tokenizer, dtype=args.dtype)
      backend = MimoBackend(mimo, args.prompt_format, args.max_new, args.seed)
      codec = backend.codec
    summary = evaluate_checkpoint(name, backend, codec, data, args.output,
                                  batch_size=args.batch_size, options=options,
                                  open_judge=open_judge, closed_set=closed_set,
                                  judged=judged)
    if summary is not None:
      summaries.append(summary)
      print(open(os.path.join(args.output, name, "report.md"), encoding="utf-8").read())
  if len(summaries) > 1:
    report.write_side_by_side(os.path.join(args.output, "comparison"), summaries)
  return 0


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags (defined only when run as a command), into `fv`."""
  from mimo_jax.inference import STREAM_TEXT  # noqa: PLC0415 (loads the model stack)
  flags.DEFINE_multi_string("ckpt", None, "Official MiMo-Audio folder or training run directory; "
                            "repeat for a side-by-side table.", flag_values=fv)
  flags.DEFINE_string("codec_ckpt", None, "Official tokenizer (codec) folder or codec run.",
                      required=True, flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "Text tokenizer.json or its folder (default: --ckpt).",
                      flag_values=fv)
  flags.DEFINE_list("tasks", None, f"Tasks to run: {', '.join(tasks.TASKS)}.", required=True,
                    flag_values=fv)
  flags.DEFINE_multi_string("data", None, "TASK=PATH (or PATH for every task): local data.",
                            flag_values=fv)
  flags.DEFINE_string("output", None, "Folder for results and reports.", required=True,
                      flag_values=fv)
  flags.DEFINE_enum("prompt_format", "sft", list(PROMPT_FORMATS),
                    "ASR/TTS prompts: Base pre-training formats or SFT chat formats.",
                    flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "Items per generation batch.", flag_values=fv)
  flags.DEFINE_integer("max_new", 512, "At most this many LLM steps per answer.", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=fv)
  flags.DEFINE_string("dtype", None, "Compute dtype (default: the config's).", flag_values=fv)
  flags.DEFINE_integer("limit", None, "Score only the first N items of each task.",
                       flag_values=fv)
  flags.DEFINE_integer("n_shots", 5, "Few-shot examples per multiple-choice prompt.",
                       flag_values=fv)
  flags.DEFINE_float("continuation_seconds", 3.0, "Prompt length of speech continuation.",
                     flag_values=fv)
  flags.DEFINE_integer("n_q", None, "Codec task: RVQ stages (default min(8, num_quantizers)).",
                       flag_values=fv)
  flags.DEFINE_bool("dnsmos", True, "Score DNSMOS (about 0.3 s of CPU per clip).",
                    flag_values=fv)
  flags.DEFINE_bool("closed_judge", True, "Also judge speech with closed-set pocketsphinx: "
                    "which sentence of the task's own (plus --closed_set) was said.",
                    flag_values=fv)
  flags.DEFINE_string("closed_set", None, "More sentences for the closed-set judge to choose "
                      "among: one per line, or `language<TAB>sentence` lines.", flag_values=fv)
  # "given" by default: a small or young model that has not learnt when to switch its output
  # stream from text to audio would otherwise never speak; the model still makes all the audio.
  flags.DEFINE_enum("stream_text", "given", list(STREAM_TEXT), "TTS: the output stream's text "
                    "channel. " + "; ".join(f"{k}: {v}" for k, v in STREAM_TEXT.items()) + ".",
                    flag_values=fv)
  flags.DEFINE_float("tts_audio_temperature", None, "TTS: the temperature of the audio channels' "
                     "sampler (0: greedy); default: the official TTS preset (0.9, top-p 0.95).",
                     lower_bound=0, flag_values=fv)
  flags.DEFINE_bool("self_asr", True, "TTS: also transcribe the generated speech with the "
                    "model's own ASR (one more generation per batch).", flag_values=fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mimo_jax.train.checkpoint import quiet_orbax_logs  # noqa: PLC0415
  quiet_orbax_logs()
  try:
    sys.exit(run(flags.FLAGS))
  except (codec_api.AudioError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def console() -> None:
  """`python -m mimo_jax.evaluate` and the `mimo-evaluate` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()

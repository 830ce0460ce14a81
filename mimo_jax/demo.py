"""The main job: from nothing to a trained MiMo-Audio that speaks and transcribes, judged offline.

  python -m mimo_jax.demo [--recipe=demo|learn] [--workdir=DIR]   (run from the repository root)

Each stage is the project's own command, run as a user would run it (its log goes to
`<workdir>/logs/<stage>.log`):

  1. corpus     python -m mimo_jax.corpus            espeak-ng speech + transcripts (manifests)
  2. tokenizer  TextTokenizer.train                  a 512-entry BPE over the training transcripts
  3. codec      python -m mimo_jax.train_codec       a small audio tokenizer, stage 1
  4. shards     python -m mimo_jax.pretokenize       the training corpus as codes + token ids
  5. phase1     python -m mimo_jax.train             understanding: text loss only
  6. phase2     python -m mimo_jax.train             understanding + generation, from phase 1
  7. evaluate   python -m mimo_jax.evaluate          ASR, TTS and codec scored by offline judges

Two recipes (`RECIPES`):
- `demo` (the default): 64 utterances of the bundled sentences; the model is asked to
  transcribe training clips and to speak training sentences, i.e. to show that each stage
  connects and the model learns its data.
- `learn`: thousands of sentences from `data.sentence_grammar`, with sentences and voices held
  out; the held-out clips and sentences are scored, beside a random-init model and the phase-1
  model as baselines.
What each reaches, and its time, is recorded in experiments/results/learning.md.
TTS uses the `given` stream text (`inference.STREAM_TEXT`): the sentence is imposed on the output
stream's schedule and the model makes the audio, which a small model can do long before it has
learnt to switch between text and audio by itself.

Everything lands in the workdir: checkpoints, each run's loss_curve.png, the evaluation's tables
and audio (`eval/`), the stages' compilation cache (`jax_cache/`), and `report.json` with the
timings, the training curves' ends, the judges' scores and each target met or missed (`TARGETS`),
which are also printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What one recipe trains on and how long. `grammar_sentences` 0: the bundled sentence list,
  with the training clips and sentences evaluated (memorisation); otherwise that many sentences
  of `data.sentence_grammar`, of which `held_out_sentences` and the `held_out_speakers` voices
  are never trained on and are what is evaluated. `phase1_config`, `phase2_config`: each phase's
  changes to the LM config (`key=value` under `--config.`). `tts_audio_temperature`: the TTS
  evaluation's audio sampler (None: the official preset; 0: greedy)."""

  utterances: int
  codec_steps: int
  phase1_steps: int
  phase2_steps: int
  eval_items: int
  max_new: int
  grammar_sentences: int = 0
  held_out_sentences: int = 0
  held_out_speakers: tuple[str, ...] = ()
  baselines: bool = False
  phase1_config: tuple[str, ...] = ()
  phase2_config: tuple[str, ...] = ()
  tts_audio_temperature: float | None = None


LM_GROUPS = ("llm", "patch_encoder", "patch_decoder")  # the LM's learning-rate groups

# Phase 2 trains what the recipes score: ASR twice as often and no caption or text-only
# examples, the audio channels weighed more against text, a higher rate, noise on the fine
# channels' inputs so that the model survives its own errors there (greedy TTS reads its
# generated codes back), and the patch stacks only on audio positions. Each choice is measured
# in experiments/results/learning.md ("Phase 2 for the demo's TTS").
PHASE2_TRAINING = ("loss.channel_weights=(20,12,8,6,4,2,2,1,1)",
                   "loss.input_code_noise=(0,0,0,0,0.5,0.5,0.5,0.5)",
                   "train.audio_capacity=0.75",
                   *[f"train.learning_rates.{group}=2e-3" for group in LM_GROUPS])
PHASE2_FOCUS = ("data.task_weights=asr=2,audio_caption=0,text=0", *PHASE2_TRAINING)
# `learn`'s phase 2 also leaves out speech continuation (audio from audio), and ASR weighs what
# each text-to-audio task does: with continuation a fifth of phase 2 and ASR two fifths, the
# held-out TTS named 2 of 48; with `tts` and `interleaved` alone 28 of 48, and ASR was forgotten
# (learning.md, "Phase 2 on text-to-audio alone").
PHASE2_LEARN = ("data.task_weights=asr=1,audio_caption=0,text=0,speech_continuation=0",
                *PHASE2_TRAINING)

# `learn`'s phase 1 trains ASR alone. From scratch, the phase's other examples (text-only, and
# interleaved ones, whose text loss is a language model of the training sentences) took two
# thirds of its steps and taught the sentences' frames, not the audio: after 1,500 steps the
# held-out ASR WER was 0.98 with the phase's mixture and 0.76 with ASR alone (learning.md,
# "Phase 1 on ASR alone").
PHASE1_ASR = ("data.task_weights=asr=1,interleaved=0,audio_caption=0,text=0",)

RECIPES = {
    # TTS is scored with the greedy audio sampler: the official preset's temperature 0.9 puts
    # errors into every patch of a model this small. 1000 codec steps: the closed-set judge names
    # 61 of the 64 training clips through the codec, against 44 of 64 after 600 steps (on a Zen 4
    # box; codecs trained on other CPUs differ); the demo's TTS is named no more often than the
    # codec's reconstructions (learning.md).
    "demo": Recipe(utterances=64, codec_steps=1000, phase1_steps=300, phase2_steps=500,
                   eval_items=8, max_new=64, tts_audio_temperature=0.0,
                   phase2_config=PHASE2_FOCUS),
    # 2400 codec steps: the closed-set judge names 45 of the 48 held-out clips through the codec,
    # against 20 of 48 after 800 steps (espeak-ng originals: 45-46, learning.md). Held-out ASR
    # gains from both utterances and steps: ASR alone for 3,000 steps reached WER 0.57 on 2,000
    # utterances and 0.41 on 6,000, and 6,000 steps 0.46 and 0.26. From this phase 1, 3,000
    # steps of PHASE2_LEARN gave ASR 0.20 and TTS 22 of 48, 4,500 steps 0.26 and 33 of 48
    # (learning.md).
    "learn": Recipe(utterances=10000, codec_steps=2400, phase1_steps=8000, phase2_steps=4500,
                    eval_items=48, max_new=96, grammar_sentences=10100,
                    held_out_sentences=100, held_out_speakers=("en_us_f2", "en_ca_m4"),
                    baselines=True, tts_audio_temperature=0.0, phase1_config=PHASE1_ASR,
                    phase2_config=PHASE2_LEARN),
}

# (summary key path, comparison, bound, what it means): checked on the trained model's scores.
TARGETS = {
    "demo": [(("tts", "duration_ratio", "mean"), "within", 0.4,
              "TTS lasts within ±40% of espeak-ng's duration"),
             (("tts", "closed_accuracy"), ">=", 0.5,
              "the closed-set judge recognises the sentence asked for"),
             (("asr", "wer", "macro"), "<=", 0.2, "ASR WER on training clips <= 20%")],
    "learn": [(("asr", "wer", "macro"), "<=", 0.3, "held-out ASR WER <= 30%"),
              (("tts", "closed_accuracy"), ">=", 0.5, "held-out TTS closed-set accuracy >= 50%"),
              (("tts", "open_wer_vs_reference"), "<=", 2.0,
               "open-set judge WER <= 2x its WER on espeak-ng ground truth")],
}


def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_enum("recipe", "demo", list(RECIPES), "Which recipe (see RECIPES).")
  flags.DEFINE_string("workdir", "/tmp/mimo_jax_demo", "Where everything is written.")
  flags.DEFINE_string("configs_dir", "experiments/configs",
                      "Folder of the experiment configs (codec_tiny.py, demo.py).")
  flags.DEFINE_integer("utterances", None, "Training utterances (default: the recipe's).")
  flags.DEFINE_integer("codec_steps", None, "Codec training steps (default: the recipe's).")
  flags.DEFINE_integer("lm_steps", None, "Speech-LM steps of each phase (default: the recipe's).")
  flags.DEFINE_integer("eval_items", None, "Clips and sentences evaluated (default: the recipe's).")
  flags.DEFINE_integer("max_new", None, "LLM steps of generation per answer (default: the "
                       "recipe's).")


# The codec: 8 RVQ stages as the LM reads, with small codebooks (the sizes the LM config
# declares).
CODEBOOK_SIZES = "(64,64,32,32,32,32,32,32)"


def config_overrides(changes: tuple[str, ...]) -> list[str]:
  """A recipe's `key=value` config changes as `python -m mimo_jax.train` flags."""
  return [f"--config.{change}" for change in changes]


PROGRESS_EVERY = 30.0  # seconds between progress lines of a running stage


def _run_stage(name: str, args: list[str], workdir: str) -> float:
  """Runs `python -m ...` with its output in logs/<name>.log, printing the log's latest progress
  line (step, rate, ETA) as it goes; fails loudly with the log's tail. The stages share a
  persistent compilation cache in the workdir (unless JAX_COMPILATION_CACHE_DIR names one): the
  evaluation reuses the shards stage's codec encoders, and a rerun after a stop compiles
  nothing it compiled before."""
  log_path = os.path.join(workdir, "logs", f"{name}.log")
  start = time.time()
  print(f"  {name:<10} log: {log_path}", flush=True)
  shown = ""
  with open(log_path, "w") as log:
    env = {"JAX_COMPILATION_CACHE_DIR": os.path.join(workdir, "jax_cache"), **os.environ}
    process = subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    while True:
      try:
        process.wait(timeout=PROGRESS_EVERY)
        break
      except subprocess.TimeoutExpired:
        progress = _latest_progress(log_path)
        if progress != shown:
          print(f"  {name:<10} {progress}", flush=True)
          shown = progress
  seconds = time.time() - start
  if process.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    raise app.Error(f"stage {name} failed (exit {process.returncode}); log {log_path}:\n{tail}")
  print(f"  {name:<10} done in {seconds:.0f} s", flush=True)
  return seconds


def _latest_progress(log_path: str) -> str:
  """The log's last progress line (the commands log step, rate and ETA), '' before the first."""
  with open(log_path, errors="replace") as log:
    lines = [line for line in log.read()[-20000:].splitlines() if "ETA" in line]
  return lines[-1].split("] ")[-1][:150] if lines else ""


def _read_manifest(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _write_manifest(path: str, records: list[dict]) -> str:
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return path


def _write_sentences(path: str, sentences: list[str]) -> str:
  with open(path, "w") as f:
    f.writelines(f"en\t{s}\n" for s in sentences)
  return path


def _corpus_stage(name: str, args: list[str], output: str, n: int, workdir: str) -> float:
  """Runs a corpus stage unless its manifest already lists the n utterances (a rerun of the job
  after a stop: the corpus is deterministic, and the later stages resume by themselves)."""
  manifest = os.path.join(output, "manifest.jsonl")
  if os.path.isfile(manifest) and len(_read_manifest(manifest)) == n:
    print(f"  {name:<10} already in {output}", flush=True)
    return 0.0
  return _run_stage(name, args, workdir)


def _corpora(recipe: Recipe, f, workdir: str, seconds: dict) -> tuple[str, str, str]:
  """The training manifest, the evaluation manifest and the closed set of sentences."""
  from mimo_jax.data import corpus as corpus_lib  # noqa: PLC0415 (librosa only when run)
  corpus = os.path.join(workdir, "corpus")
  os.makedirs(corpus, exist_ok=True)
  train_args = ["mimo_jax.corpus", f"--output={corpus}", f"--num_utterances={f.utterances}",
                "--languages=en"]
  if not recipe.grammar_sentences:
    seconds["corpus"] = _corpus_stage("corpus", train_args, corpus, f.utterances, workdir)
    train = os.path.join(corpus, corpus_lib.MANIFEST)
    records = _read_manifest(train)
    evaluated = _write_manifest(os.path.join(corpus, "eval.jsonl"), records[:f.eval_items])
    closed = _write_sentences(os.path.join(corpus, "sentences.txt"),
                              sorted({r["text"] for r in records}))
    return train, evaluated, closed
  from mimo_jax.data import sentence_grammar  # noqa: PLC0415
  sentences = sentence_grammar.sentences(recipe.grammar_sentences)
  held_out, trained = sentences[:recipe.held_out_sentences], sentences[recipe.held_out_sentences:]
  speakers = [v.speaker for v in corpus_lib.VOICES if v.language == "en"]
  train_speakers = [s for s in speakers if s not in recipe.held_out_speakers]
  train_list = _write_sentences(os.path.join(workdir, "train_sentences.txt"), trained)
  closed = _write_sentences(os.path.join(workdir, "held_out_sentences.txt"), held_out)
  seconds["corpus"] = _corpus_stage("corpus", [
      *train_args, f"--sentences={train_list}", f"--speakers={','.join(train_speakers)}"],
      corpus, f.utterances, workdir)
  held_out_dir = os.path.join(workdir, "corpus_held_out")
  seconds["corpus_held_out"] = _corpus_stage("corpus_held_out", [
      "mimo_jax.corpus", f"--output={held_out_dir}", f"--num_utterances={f.eval_items}",
      "--languages=en", "--seed=1", f"--sentences={closed}",
      f"--speakers={','.join(recipe.held_out_speakers)}"], held_out_dir, f.eval_items, workdir)
  return (os.path.join(corpus, corpus_lib.MANIFEST),
          os.path.join(held_out_dir, corpus_lib.MANIFEST), closed)


def _train_tokenizer(manifest: str, out_dir: str) -> None:
  from mimo_jax.data.tokenizer import TextTokenizer  # noqa: PLC0415
  TextTokenizer.train([r["text"] for r in _read_manifest(manifest)], vocab_size=512).save(out_dir)


def _curve_ends(run_dir: str) -> dict:
  from mimo_jax.train.metrics import read_jsonl  # noqa: PLC0415 (the training stack when run)
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  return {"first": rows[0], "last": rows[-1]}


def _lookup(summary: dict, path: tuple[str, ...]):
  for key in path:
    if not isinstance(summary, dict) or key not in summary:
      return None
    summary = summary[key]
  return summary


def check_targets(recipe_name: str, summary: dict) -> list[dict]:
  """Each target of the recipe with the measured value and whether it is met (None: not
  measured)."""
  checked = []
  for path, op, bound, meaning in TARGETS[recipe_name]:
    value = _lookup(summary, path)
    if value is None:
      met = None
    elif op == "within":
      met = abs(value - 1.0) <= bound
    else:
      met = value <= bound if op == "<=" else value >= bound
    checked.append({"target": meaning, "key": ".".join(path), "value": value, "met": met})
  return checked


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  recipe = RECIPES[f.recipe]
  for name in ("utterances", "codec_steps", "eval_items", "max_new"):
    if getattr(f, name) is None:
      setattr(f, name, getattr(recipe, name))
  phase1_steps = f.lm_steps or recipe.phase1_steps
  phase2_steps = f.lm_steps or recipe.phase2_steps
  workdir = os.path.abspath(f.workdir)
  configs = os.path.abspath(f.configs_dir)
  for name in ("codec_tiny.py", "demo.py"):
    if not os.path.isfile(os.path.join(configs, name)):
      raise app.UsageError(f"--configs_dir={f.configs_dir} has no {name}: run from the "
                           f"repository root or point --configs_dir at experiments/configs")
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  tokenizer = os.path.join(workdir, "tokenizer")
  codec, shards = os.path.join(workdir, "codec"), os.path.join(workdir, "shards")
  runs = {"phase1": os.path.join(workdir, "lm_phase1"), "phase2": os.path.join(workdir,
                                                                                "lm_phase2")}
  lm_flags = [f"--config={configs}/demo.py", f"--config.data.path={shards}",
              f"--config.data.tokenizer={tokenizer}"]
  print(f"MiMo-Audio {f.recipe} recipe in {workdir}", flush=True)
  seconds = {}
  train_manifest, eval_manifest, closed_set = _corpora(recipe, f, workdir, seconds)
  start = time.time()
  _train_tokenizer(train_manifest, tokenizer)
  seconds["tokenizer"] = time.time() - start
  seconds["codec"] = _run_stage("codec", [
      "mimo_jax.train_codec", f"--config={configs}/codec_tiny.py", f"--workdir={codec}",
      f"--config.data.manifest={train_manifest}", f"--config.steps={f.codec_steps}",
      "--config.codec.overrides.num_quantizers=8",
      f"--config.codec.overrides.codebook_size={CODEBOOK_SIZES}"], workdir)
  codec_export = os.path.join(codec, "export")
  seconds["shards"] = _run_stage("shards", [
      "mimo_jax.pretokenize", f"--manifest={train_manifest}", f"--codec_ckpt={codec_export}",
      f"--tokenizer={tokenizer}", f"--output={shards}"], workdir)
  seconds["phase1"] = _run_stage("phase1", [
      "mimo_jax.train", *lm_flags, "--config.train.phase=understanding",
      f"--config.train.steps={phase1_steps}", *config_overrides(recipe.phase1_config),
      f"--workdir={runs['phase1']}"], workdir)
  seconds["phase2"] = _run_stage("phase2", [
      "mimo_jax.train", *lm_flags, "--config.train.phase=generation",
      f"--config.train.steps={phase2_steps}", f"--init_from={runs['phase1']}",
      *config_overrides(recipe.phase2_config),
      f"--workdir={runs['phase2']}"], workdir)
  evaluated = {"trained": runs["phase2"]}
  if recipe.baselines:
    # The model before learning: one phase-2 step at learning rates of 1e-30, an update far
    # below the weights' float32 resolution.
    evaluated["random_init"] = os.path.join(workdir, "lm_random_init")
    seconds["random_init"] = _run_stage("random_init", [
        "mimo_jax.train", *lm_flags, "--config.train.phase=generation", "--config.train.steps=1",
        *[f"--config.train.learning_rates.{group}=1e-30" for group in LM_GROUPS],
        f"--workdir={evaluated['random_init']}"], workdir)
    evaluated["phase1_only"] = runs["phase1"]
  eval_dir = os.path.join(workdir, "eval")
  seconds["evaluate"] = _run_stage("evaluate", [
      "mimo_jax.evaluate", *[f"--ckpt={run}" for run in evaluated.values()],
      f"--codec_ckpt={codec_export}", f"--tokenizer={tokenizer}", "--tasks=asr,tts,codec",
      f"--data={eval_manifest}", f"--output={eval_dir}", "--prompt_format=pretrain",
      "--stream_text=given", "--closed_judge", f"--closed_set={closed_set}",
      f"--max_new={f.max_new}",
      *([] if recipe.tts_audio_temperature is None else
        [f"--tts_audio_temperature={recipe.tts_audio_temperature}"])], workdir)
  scores = {name: _read_summary(eval_dir, run) for name, run in evaluated.items()}
  report = {"recipe": f.recipe, "seconds": seconds,
            "codec": _curve_ends(codec), **{run: _curve_ends(path) for run, path in runs.items()},
            "scores": scores, "targets": check_targets(f.recipe, scores["trained"])}
  with open(os.path.join(workdir, "report.json"), "w") as out:
    json.dump(report, out, indent=2)
  _print_report(report, workdir, eval_dir)


def _read_summary(eval_dir: str, run_dir: str) -> dict:
  """The evaluation's figures per task (`eval.tasks.summarize` documents the keys)."""
  with open(os.path.join(eval_dir, os.path.basename(run_dir), "summary.json")) as f:
    return json.load(f)["tasks"]


def _print_report(report: dict, workdir: str, eval_dir: str) -> None:
  for run in ("phase1", "phase2"):
    first, last = report[run]["first"], report[run]["last"]
    print(f"{run}: loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} "
          f"(step {last['step']}); curve: {os.path.join(workdir, 'lm_' + run, 'loss_curve.png')}")
  print(f"codec: mel loss {report['codec']['first']['mel']:.3f} -> "
        f"{report['codec']['last']['mel']:.3f}")
  print(f"scores (tables in {eval_dir}):")
  for name, summary in report["scores"].items():
    print(f"  {name:<12} ASR WER {_fmt(_lookup(summary, ('asr', 'wer', 'macro')))}; TTS closed-set "
          f"accuracy {_fmt(_lookup(summary, ('tts', 'closed_accuracy')))} (ground truth "
          f"{_fmt(_lookup(summary, ('tts', 'ref_closed_accuracy')))}), open-set WER "
          f"{_fmt(_lookup(summary, ('tts', 'open_wer', 'macro')))} (ground truth "
          f"{_fmt(_lookup(summary, ('tts', 'ref_open_wer', 'macro')))}), duration ratio "
          f"{_fmt(_lookup(summary, ('tts', 'duration_ratio', 'mean')))}")
  for target in report["targets"]:
    verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
    print(f"  target: {target['target']}: {_fmt(target['value'])} -> {verdict}")
  print(f"report: {os.path.join(workdir, 'report.json')}; total "
        f"{sum(report['seconds'].values()):.0f} s")


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.3f}"


def console() -> None:
  """`python -m mimo_jax.demo` and the `mimo-demo` console script."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  console()

"""The main job on its embedded default: from nothing to a trained tiny MiMo-Audio on a CPU.

  python -m mimo_jax.demo --workdir=/tmp/mimo_jax_demo     (run from the repository root)

Each stage is the project's own command, run as a user would run it (its log goes to
`<workdir>/logs/<stage>.log`):

  1. corpus     python -m mimo_jax.data.corpus       espeak-ng speech + transcripts (a manifest)
  2. tokenizer  TextTokenizer.train                  a 512-entry BPE over the transcripts
  3. codec      python -m mimo_jax.train_codec       a tiny audio tokenizer, stage 1
  4. shards     python -m mimo_jax.pretokenize       the corpus as codes + token ids
  5. phase1     python -m mimo_jax.train             understanding: text loss only
  6. phase2     python -m mimo_jax.train             understanding + generation, from phase 1
  7. generate   mimo_jax.inference.MimoAudio         TTS of a sentence, ASR of a held-out clip

It leaves the checkpoints, each run's loss_curve.png, the generated speech and `report.json` in
the workdir and prints where they are. At tiny size the speech and the transcript are not
expected to be good: the point is that every stage runs and the losses fall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import soundfile
from absl import app, flags



def define_flags() -> None:
  """The command's flags (defined only when run as a command)."""
  flags.DEFINE_string("workdir", "/tmp/mimo_jax_demo", "Where everything is written.")
  flags.DEFINE_string("configs_dir", "experiments/configs",
                      "Folder of the experiment configs (codec_tiny.py, demo.py).")
  flags.DEFINE_integer("utterances", 64, "Corpus size (the last 2 are held out).")
  flags.DEFINE_integer("codec_steps", 300, "Codec training steps.")
  flags.DEFINE_integer("lm_steps", 300, "Speech LM steps per phase.")
  flags.DEFINE_integer("max_new", 48, "LLM steps of generation per answer.")


HELD_OUT = 2
# The demo codec: 8 RVQ stages as the LM reads, with small codebooks (the sizes
# experiments/configs/demo.py declares for the LM).
CODEBOOK_SIZES = "(64,64,32,32,32,32,32,32)"


def _run_stage(name: str, args: list[str], workdir: str) -> float:
  """Runs `python -m ...` with its output in logs/<name>.log; fails loudly with the log's tail."""
  log_path = os.path.join(workdir, "logs", f"{name}.log")
  start = time.time()
  with open(log_path, "w") as log:
    done = subprocess.run([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT)
  seconds = time.time() - start
  if done.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    raise app.Error(f"stage {name} failed (exit {done.returncode}); log {log_path}:\n{tail}")
  print(f"  {name:<10} {seconds:6.0f} s   log: {log_path}", flush=True)
  return seconds


def _last_metrics(run_dir: str) -> dict:
  from mimo_jax.train.metrics import read_jsonl  # noqa: PLC0415 (the training stack when run)
  rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  return {"first": rows[0], "last": rows[-1]}


def _split_corpus(corpus: str) -> tuple[str, list[dict]]:
  """Writes the training manifest without the last HELD_OUT utterances; returns it and those."""
  with open(os.path.join(corpus, "manifest.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train_path = os.path.join(corpus, "train.jsonl")
  with open(train_path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records[:-HELD_OUT])
  return train_path, records[-HELD_OUT:]


def _train_tokenizer(manifest: str, out_dir: str) -> None:
  from mimo_jax.data.tokenizer import TextTokenizer
  with open(manifest) as f:
    texts = [json.loads(line)["text"] for line in f if line.strip()]
  TextTokenizer.train(texts, vocab_size=512).save(out_dir)


def _generate(workdir: str, phase2: str, codec: str, tokenizer: str, corpus: str,
              held_out: list[dict], max_new: int) -> dict:
  """TTS of a held-out sentence and ASR of a held-out clip, in the pre-training formats the
  tiny model was trained on (it has seen no SFT chat data)."""
  from mimo_jax.data import templates
  from mimo_jax.inference import MimoAudio
  mimo = MimoAudio.load(phase2, codec, tokenizer)
  sentence, clip = held_out[0]["text"], held_out[1]
  wav, sr = soundfile.read(os.path.join(corpus, clip["audio"]), dtype="float32")
  tts_prompt = templates.tts(mimo.fmt, sentence)
  asr_prompt = templates.asr(mimo.fmt, mimo.encode_audio(wav, sr))
  tts, asr = mimo.generate([tts_prompt, asr_prompt], max_new=max_new)
  wav_path = os.path.join(workdir, "tts_sample.wav")
  soundfile.write(wav_path, np.asarray(tts.wav, np.float32), mimo.codec_cfg.sampling_rate)
  return {"tts_text": sentence, "tts_wav": wav_path,
          "tts_seconds": len(tts.wav) / mimo.codec_cfg.sampling_rate,
          "asr_reference": clip["text"], "asr_output": asr.text}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mimo_jax.train.checkpoint import quiet_orbax_logs  # noqa: PLC0415 (orbax only when run)
  quiet_orbax_logs()  # the generation stage restores the phase-2 run in this process
  f = flags.FLAGS
  workdir = os.path.abspath(f.workdir)
  configs = os.path.abspath(f.configs_dir)
  for name in ("codec_tiny.py", "demo.py"):
    if not os.path.isfile(os.path.join(configs, name)):
      raise app.UsageError(f"--configs_dir={f.configs_dir} has no {name}: run from the "
                           f"repository root or point --configs_dir at experiments/configs")
  os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
  corpus, tokenizer = os.path.join(workdir, "corpus"), os.path.join(workdir, "tokenizer")
  codec, shards = os.path.join(workdir, "codec"), os.path.join(workdir, "shards")
  phase1, phase2 = os.path.join(workdir, "lm_phase1"), os.path.join(workdir, "lm_phase2")
  lm_flags = [f"--config={configs}/demo.py", f"--config.data.path={shards}",
              f"--config.data.tokenizer={tokenizer}", f"--config.train.steps={f.lm_steps}"]
  print(f"MiMo-Audio tiny demo in {workdir}", flush=True)
  seconds = {}
  seconds["corpus"] = _run_stage("corpus", [
      "mimo_jax.data.corpus", f"--output={corpus}", f"--num_utterances={f.utterances}",
      "--languages=en"], workdir)
  train_manifest, held_out = _split_corpus(corpus)
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
      f"--workdir={phase1}"], workdir)
  seconds["phase2"] = _run_stage("phase2", [
      "mimo_jax.train", *lm_flags, "--config.train.phase=generation", f"--init_from={phase1}",
      f"--workdir={phase2}"], workdir)
  start = time.time()
  samples = _generate(workdir, phase2, codec_export, tokenizer, corpus, held_out,
                      f.max_new)
  seconds["generate"] = time.time() - start
  report = {"seconds": seconds, "samples": samples,
            "codec": _last_metrics(codec), "phase1": _last_metrics(phase1),
            "phase2": _last_metrics(phase2)}
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  for run in ("phase1", "phase2"):
    first, last = report[run]["first"], report[run]["last"]
    print(f"{run}: loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} "
          f"(step {last['step']}); curve: {os.path.join(workdir, 'lm_' + run, 'loss_curve.png')}")
  print(f"codec: mel loss {report['codec']['first']['mel']:.3f} -> "
        f"{report['codec']['last']['mel']:.3f}; tokenizer folder: {codec_export}")
  print(f"TTS  '{samples['tts_text']}' -> {samples['tts_seconds']:.2f} s of audio: "
        f"{samples['tts_wav']}")
  print(f"ASR  reference '{samples['asr_reference']}'\n     output    '{samples['asr_output']}'")
  print(f"checkpoints: {phase1}/checkpoints, {phase2}/checkpoints, {codec}/checkpoints; "
        f"report: {os.path.join(workdir, 'report.json')}; total {sum(seconds.values()):.0f} s")


if __name__ == "__main__":
  define_flags()
  app.run(main)

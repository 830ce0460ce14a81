"""Training the tiny codec on CPU: does stage 1 learn, how fast, and how well does it reconstruct?

1. Synthesises a training corpus with espeak-ng (`mimo_jax.data.corpus`, English voices).
2. Trains stage 1 (`experiments/configs/codec_tiny.py`, one CPU device) for --steps steps with
   `mimo_jax.train.codec.train`; records the multi-scale mel loss at the start and the end, each
   stage's codebook usage and perplexity, the dead codes replaced, and steps/s (median step time
   after the first, compiling, step).
3. Reconstructs utterances of held-out espeak-ng voices (none of them in the training corpus)
   with n_q = 1, 2, ... stages and reports mel distance, STOI, PESQ NB/WB and SI-SDR
   (`mimo_jax.eval.codec`, as `python -m mimo_jax.eval_codec` does).
4. Runs --stage2_steps adversarial steps from the stage-1 export and records their speed.

The machine may be shared: CPU-seconds taken by other processes during each phase are recorded.
Results: experiments/results/codec_train.{json,md}.

  python experiments/bench/codec_train.py [--steps 300 --stage2_steps 30 --utterances 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

from absl import flags  # noqa: E402

from mimo_jax.data import corpus  # noqa: E402
from mimo_jax.eval import codec as codec_eval  # noqa: E402
from mimo_jax.train import codec as codec_train  # noqa: E402
from mimo_jax.train import metrics, run_dir  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
CONFIG = os.path.join(ROOT, "experiments", "configs", "codec_tiny.py")

# espeak-ng voices that the training corpus (corpus.VOICES) never uses.
HELD_OUT = (corpus.Voice("held_caribbean_m2", "en", "en-029+m2", 160, 50),
            corpus.Voice("held_nyc_f5", "en", "en-us-nyc+f5", 170, 65),
            corpus.Voice("held_lancaster_m4", "en", "en-gb-x-gbclan+m4", 150, 40))
HELD_OUT_TEXT = ("Seven bright lanterns swung above the quiet harbour.",
                 "Please bring the blue folder to the meeting on Thursday.")


def _load_config():
  import importlib.util
  spec = importlib.util.spec_from_file_location("codec_tiny", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _git_commit() -> str:
  return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True, check=False).stdout.strip()


def _phase(name: str, fn):
  print(f"== {name}")
  before = benchlib.cpu_seconds()
  out = fn()
  load = benchlib.load_since(before)
  print(f"   {load['s']:.0f} s wall, own {load['own_cpu_s']:.0f} CPU-s, others "
        f"{load['others_cpu_s']:.0f} CPU-s")
  return out, load


def _rows(workdir: str) -> list[dict]:
  return metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_FILE))


def _rate(rows: list[dict]) -> dict:
  times = [r["step_time_s"] for r in rows[1:]]
  return {"first_step_s": rows[0]["step_time_s"], "median_step_s": statistics.median(times),
          "steps_per_s": 1 / statistics.median(times)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--stage2_steps", type=int, default=30)
  parser.add_argument("--utterances", type=int, default=64)
  parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  import jax

  work = args.workdir or tempfile.mkdtemp(prefix="codec_train_")
  manifest, corpus_load = _phase("corpus", lambda: corpus.build_corpus(
      os.path.join(work, "corpus"), args.utterances, seed=0, languages=("en",)))

  config = _load_config()
  config.data.manifest = manifest
  config.steps = args.steps
  config.tensorboard = False
  stage1_dir = os.path.join(work, "stage1")
  devices = jax.devices()[:1]
  _, train_load = _phase("stage 1", lambda: codec_train.train(config, stage1_dir,
                                                              devices=devices))
  rows = _rows(stage1_dir)
  n_q = codec_train.codec_from(config).num_quantizers
  window = min(10, len(rows) // 4)
  stage1 = {
      "steps": len(rows), "load": train_load, **_rate(rows),
      "mel_first": float(np.mean([r["mel"] for r in rows[:window]])),
      "mel_last": float(np.mean([r["mel"] for r in rows[-window:]])),
      "mel_window_steps": window,
      "usage_last": [float(np.mean([r[f"usage/q{q}"] for r in rows[-window:]]))
                     for q in range(n_q)],
      "perplexity_last": [float(np.mean([r[f"perplexity/q{q}"] for r in rows[-window:]]))
                          for q in range(n_q)],
      "codebook_sizes": list(codec_train.codec_from(config).codebook_sizes),
      "replaced_total": [float(sum(r[f"replaced/q{q}"] for r in rows)) for q in range(n_q)],
      "commit_last": float(np.mean([r["commit"] for r in rows[-window:]])),
  }
  stage1["mel_relative_drop"] = 1 - stage1["mel_last"] / stage1["mel_first"]

  held_dir = os.path.join(work, "held_out")
  os.makedirs(held_dir, exist_ok=True)
  for voice in HELD_OUT:
    for i, text in enumerate(HELD_OUT_TEXT):
      soundfile.write(os.path.join(held_dir, f"{voice.speaker}_{i}.wav"),
                      corpus.synthesize(text, voice), corpus.SAMPLE_RATE)
  params, cfg = run_dir.load_codec(stage1_dir)
  paths = codec_eval.audio_files(held_dir)
  evals = {}
  for stages in sorted({1, 2, n_q}):
    out, load = _phase(f"held-out metrics, n_q {stages}",
                       lambda s=stages: codec_eval.evaluate(params, cfg, paths, s))
    evals[str(stages)] = {"mean": out["mean"], "skipped": out["skipped"], "load": load}
    print("  ", {k: round(v, 3) for k, v in out["mean"].items()})

  stage2 = None
  if args.stage2_steps:
    config2 = _load_config()
    config2.data.manifest = manifest
    config2.update(stage=2, init_from=stage1_dir, steps=args.stage2_steps, tensorboard=False,
                   export=False)
    _, load2 = _phase("stage 2", lambda: codec_train.train(
        config2, os.path.join(work, "stage2"), devices=devices))
    rows2 = _rows(os.path.join(work, "stage2"))
    stage2 = {"steps": len(rows2), "load": load2, **_rate(rows2),
              **{f"{k}_first": rows2[0][k] for k in ("mel", "adv", "fm", "disc_loss")},
              **{f"{k}_last": rows2[-1][k] for k in ("mel", "adv", "fm", "disc_loss")}}

  info = benchlib.machine_info(jax_version=jax.__version__, device=str(devices[0]))
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git_commit(), "machine": info, "config": config.to_dict(),
            "corpus": {"utterances": args.utterances, "load": corpus_load},
            "held_out_voices": [v.espeak_voice for v in HELD_OUT], "stage1": stage1,
            "held_out_metrics": evals, "stage2": stage2}
  benchlib.write_results(report, _markdown(report), RESULTS_DIR, "codec_train")


def _contention(load: dict, cores: int) -> str:
  share = load["others_cpu_s"] / max(load["s"] * cores, 1e-9)
  return f"other processes took {share:.0%} of the machine's CPU during this phase"


def _markdown(r: dict) -> str:
  s1, cores = r["stage1"], r["machine"]["cores"]
  lines = [
      "# Tiny codec training on CPU (`experiments/bench/codec_train.py`)", "",
      f"{r['date']}, commit {r['git_commit']}, {r['machine']['cpu_model']} "
      f"({cores} cores), jax {r['machine']['jax_version']}, one CPU device.", "",
      f"Config `experiments/configs/codec_tiny.py`: tiny architecture, "
      f"{len(s1['codebook_sizes'])} RVQ stages of {s1['codebook_sizes']} codewords, batch "
      f"{r['config']['data']['batch_size']} x {r['config']['data']['crop_seconds']} s crops, "
      f"{r['corpus']['utterances']} espeak-ng utterances (5 English voices).", "",
      "## Stage 1", "",
      f"- {s1['steps']} steps; multi-scale mel L1 (mean of the first / last "
      f"{s1['mel_window_steps']} steps): **{s1['mel_first']:.3f} -> {s1['mel_last']:.3f}** "
      f"({s1['mel_relative_drop']:.0%} lower); commitment {s1['commit_last']:.4f} at the end.",
      "- codebook usage per stage (share of codewords hit per batch, last steps): "
      + ", ".join(f"{u:.0%}" for u in s1["usage_last"]),
      "- perplexity per stage (last steps): " + ", ".join(
          f"{p:.1f} of {k}" for p, k in zip(s1["perplexity_last"], s1["codebook_sizes"])),
      "- dead codes replaced over the run, per stage: " + ", ".join(
          f"{int(n)}" for n in s1["replaced_total"]),
      f"- speed: **{s1['steps_per_s']:.2f} steps/s** (median step {s1['median_step_s']*1e3:.0f} "
      f"ms; the first step, compilation included, {s1['first_step_s']:.0f} s); "
      + _contention(s1["load"], cores) + ".", "",
      "## Reconstruction of held-out voices", "",
      f"{len(r['held_out_voices'])} espeak-ng voices never seen in training "
      f"({', '.join(r['held_out_voices'])}), 2 sentences each; means over the files.", "",
      "| n_q | mel distance | STOI | PESQ NB | PESQ WB | SI-SDR (dB) |",
      "|---|---|---|---|---|---|"]
  for n_q, e in r["held_out_metrics"].items():
    m = e["mean"]
    lines.append(f"| {n_q} | {m['mel_distance']:.3f} | {m['stoi']:.3f} | {m['pesq_nb']:.2f} | "
                 f"{m['pesq_wb']:.2f} | {m['si_sdr']:.1f} |")
  lines += ["", "A codec this small trained for minutes on a few dozen synthetic sentences is far "
            "from the released tokenizer (spec §1.7, English, 8 stages: PESQ NB 3.02, PESQ WB "
            "2.43, STOI 0.92); these numbers show the training path works end to end, not "
            "quality.", ""]
  s2 = r["stage2"]
  if s2:
    lines += ["## Stage 2 (adversarial, encoder + RVQ frozen)", "",
              f"- {s2['steps']} steps from the stage-1 export: **{s2['steps_per_s']:.2f} "
              f"steps/s** (median step {s2['median_step_s']*1e3:.0f} ms; first step "
              f"{s2['first_step_s']:.0f} s); " + _contention(s2["load"], cores) + ".",
              f"- mel {s2['mel_first']:.3f} -> {s2['mel_last']:.3f}, generator hinge "
              f"{s2['adv_first']:.3f} -> {s2['adv_last']:.3f}, feature matching "
              f"{s2['fm_first']:.3f} -> {s2['fm_last']:.3f}, discriminator hinge "
              f"{s2['disc_loss_first']:.3f} -> {s2['disc_loss_last']:.3f} (first -> last step).",
              ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()

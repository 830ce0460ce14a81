"""Codec stage 1 with and without the audio-to-text (A2T) loss, on the same data, steps and seed.

1. Synthesises an espeak-ng training corpus (English voices) and trains a byte-level BPE text
   tokenizer on its transcripts (`TextTokenizer.train`).
2. Trains stage 1 of the tiny codec (`experiments/configs/codec_tiny.py`, one CPU device) twice
   on whole clips (`data.whole_clips`: the A2T targets need them, so the run without A2T gets the
   same batches): loss.a2t = 0 (recon + commit) and loss.a2t = 10 (the report's weight).
3. Reconstructs utterances of held-out espeak-ng voices with every RVQ stage and scores them with
   the tokenizer table's columns (spec §1.7: PESQ NB / WB, STOI, SIM) plus mel distance, SI-SDR
   and an ASR judge's WER (open-vocabulary pocketsphinx; the same judge on the original audio is
   the floor it can reach).

The machine may be shared: its load (`uptime`) and the CPU-seconds other processes took during
each phase are recorded. Results: experiments/results/codec_a2t.{json,md}.

  python experiments/bench/codec_a2t.py [--steps 150 --utterances 48 --batch 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import codec_train  # noqa: E402  (held-out voices, config loader, phase timer)

from absl import flags  # noqa: E402

from mimo_jax.train import codec as codec_job  # noqa: E402
from mimo_jax.codec import api as codec_api  # noqa: E402
from mimo_jax.codec import checkpoint as codec_checkpoint  # noqa: E402
from mimo_jax.data import corpus  # noqa: E402
from mimo_jax.data.tokenizer import TextTokenizer  # noqa: E402
from mimo_jax.eval import codec_metrics, judges, wer  # noqa: E402

WEIGHTS = (0.0, 10.0)
TOKENIZER_VOCAB = 512  # as the demo's text tokenizer


def _uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _train(config, workdir: str, devices) -> dict:
  _, load = codec_train._phase(f"stage 1, loss.a2t {config.loss.a2t}",
                               lambda: codec_job.train(config, workdir, devices=devices))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  window = min(10, len(rows) // 4)
  last = lambda key: float(np.mean([r[key] for r in rows[-window:]]))
  out = {"steps": len(rows), "load": load, "uptime_after": _uptime(),
         "first_step_s": rows[0]["step_time_s"],
         "median_step_s": float(np.median([r["step_time_s"] for r in rows[1:]])),
         "mel_first": float(np.mean([r["mel"] for r in rows[:window]])), "mel_last": last("mel"),
         "commit_last": last("commit"), "window": window}
  if "a2t" in rows[0]:
    out.update(a2t_first=float(np.mean([r["a2t"] for r in rows[:window]])), a2t_last=last("a2t"),
               a2t_accuracy_last=last("a2t_accuracy"))
  return out


def _score(workdir: str, clips: list[tuple[str, np.ndarray]], judge) -> dict:
  params, cfg = codec_checkpoint.import_codec(os.path.join(workdir, "export"))
  wavs = [wav for _, wav in clips]
  codes = codec_api.encode_batch(params, cfg, wavs, corpus.SAMPLE_RATE, n_q=cfg.num_quantizers)
  rows = []
  for (text, wav), recon in zip(clips, codec_api.decode_batch(params, cfg, codes)):
    row = codec_metrics.all_metrics(wav, recon, cfg.sampling_rate)
    try:
      row["sim"] = judges.speaker_similarity(codec_metrics.match_length(wav, recon),
                                             cfg.sampling_rate, wav, cfg.sampling_rate)
    except judges.JudgeError as e:  # no voiced speech in the reconstruction
      row["sim"] = math.nan
      row["notes"].append(f"sim: {e}")
    row["wer"] = wer.error_rate(text, judge.transcribe(recon, cfg.sampling_rate))
    rows.append(row)
  mean = codec_metrics.summarize(rows)
  sims = [r["sim"] for r in rows if np.isfinite(r["sim"])]
  mean.update(sim=float(np.mean(sims)) if sims else math.nan, sim_count=len(sims))
  mean["judge_wer"] = wer.summarize([r["wer"] for r in rows])["corpus"]
  return {"mean": mean, "n_q": cfg.num_quantizers, "files": len(rows),
          "notes": [note for r in rows for note in r["notes"]]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--utterances", type=int, default=48)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temp dir)")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()
  import jax

  work = args.workdir or tempfile.mkdtemp(prefix="codec_a2t_")
  uptime_start = _uptime()
  manifest, corpus_load = codec_train._phase("corpus", lambda: corpus.build_corpus(
      os.path.join(work, "corpus"), args.utterances, seed=0, languages=("en",)))
  with open(manifest) as f:
    lines = [json.loads(line) for line in f]
  tokenizer_dir = os.path.join(work, "tokenizer")
  TextTokenizer.train([line["text"] for line in lines], TOKENIZER_VOCAB).save(tokenizer_dir)
  longest = max(line["duration"] for line in lines)

  devices = jax.devices()[:1]
  runs = {}
  for weight in WEIGHTS:
    config = codec_train._load_config()
    config.data.manifest = manifest
    config.data.update(whole_clips=True, batch_size=args.batch,
                       crop_seconds=math.ceil(longest * 25) / 25)  # whole 40 ms frames
    config.update(steps=args.steps, tensorboard=False)
    config.loss.a2t = weight
    config.a2t.tokenizer = tokenizer_dir
    runs[str(weight)] = {"config": config.to_dict(),
                         "train": _train(config, os.path.join(work, f"a2t_{weight:g}"), devices)}

  clips = [(text, corpus.synthesize(text, voice)) for voice in codec_train.HELD_OUT
           for text in codec_train.HELD_OUT_TEXT]
  judge = judges.SphinxJudge()
  (reference, ref_load) = codec_train._phase("judges on the original audio", lambda: {
      "judge_wer": wer.summarize([wer.error_rate(t, judge.transcribe(w, corpus.SAMPLE_RATE))
                                  for t, w in clips])["corpus"]})
  reference["load"] = ref_load
  for weight in WEIGHTS:
    run = runs[str(weight)]
    run["held_out"], run["held_out_load"] = codec_train._phase(
        f"held-out scores, loss.a2t {weight}",
        lambda w=weight: _score(os.path.join(work, f"a2t_{w:g}"), clips, judge))
    print("  ", {k: round(v, 3) for k, v in run["held_out"]["mean"].items()
                 if isinstance(v, float)})

  info = benchlib.machine_info(jax_version=jax.__version__, device=str(devices[0]))
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": codec_train._git_commit(), "machine": info,
            "uptime_start": uptime_start, "uptime_end": _uptime(),
            "corpus": {"utterances": args.utterances, "longest_s": longest,
                       "load": corpus_load},
            "held_out_voices": [v.espeak_voice for v in codec_train.HELD_OUT],
            "held_out_sentences": list(codec_train.HELD_OUT_TEXT),
            "judge_on_original": reference, "runs": runs}
  benchlib.write_results(report, _markdown(report), codec_train.RESULTS_DIR, "codec_a2t")


def _markdown(r: dict) -> str:
  cores = r["machine"]["cores"]
  off, on = r["runs"]["0.0"], r["runs"]["10.0"]
  c = off["config"]
  lines = [
      "# Codec stage 1 with and without A2T (`experiments/bench/codec_a2t.py`)", "",
      f"{r['date']}, commit {r['git_commit']}, {r['machine']['cpu_model']} ({cores} cores), "
      f"jax {r['machine']['jax_version']}, one CPU device.", "",
      f"Load: `{r['uptime_start']}` at the start, `{r['uptime_end']}` at the end.", "",
      f"Both runs: `experiments/configs/codec_tiny.py` (tiny architecture, "
      f"{c['codec']['overrides']['num_quantizers']} RVQ stages, codebook_size "
      f"{list(c['codec']['overrides']['codebook_size'])}: the last size repeats), "
      f"{c['steps']} steps, seed "
      f"{c['seed']}, batch {c['data']['batch_size']} whole clips padded to "
      f"{c['data']['crop_seconds']} s, {r['corpus']['utterances']} espeak-ng utterances; the "
      f"A2T run adds loss.a2t = 10 with a {on['config']['a2t']['layers']}-layer, "
      f"{on['config']['a2t']['d_model']}-wide auxiliary decoder over a "
      f"{TOKENIZER_VOCAB}-id BPE of the transcripts.", "",
      "## Training", "",
      "| loss.a2t | mel L1 first -> last | commit (last) | A2T CE first -> last | A2T token "
      "accuracy (last) | median step | others' CPU share |",
      "|---|---|---|---|---|---|---|"]
  for weight, run in (("0", off), ("10", on)):
    t = run["train"]
    a2t_ce = (f"{t['a2t_first']:.3f} -> {t['a2t_last']:.3f}" if "a2t_first" in t else "-")
    accuracy = f"{t['a2t_accuracy_last']:.2f}" if "a2t_first" in t else "-"
    share = t["load"]["others_cpu_s"] / max(t["load"]["s"] * cores, 1e-9)
    lines.append(f"| {weight} | {t['mel_first']:.3f} -> {t['mel_last']:.3f} | "
                 f"{t['commit_last']:.4f} | {a2t_ce} | {accuracy} | "
                 f"{t['median_step_s'] * 1e3:.0f} ms | {share:.0%} |")
  lines += [
      "", f"(first / last: means over {off['train']['window']} steps; A2T accuracy: greedy "
      "next-token accuracy on the training batch.)", "",
      "## Reconstruction of held-out voices (all RVQ stages)", "",
      f"{len(r['held_out_voices'])} espeak-ng voices never seen in training "
      f"({', '.join(r['held_out_voices'])}), {len(r['held_out_sentences'])} sentences each. "
      f"Judge WER: open-vocabulary pocketsphinx, corpus rate; on the original audio it is "
      f"{r['judge_on_original']['judge_wer']:.2f}.", "",
      "| loss.a2t | PESQ NB | PESQ WB | SIM | STOI | mel distance | SI-SDR (dB) | judge WER |",
      "|---|---|---|---|---|---|---|---|"]
  columns = ("pesq_nb", "pesq_wb", "sim", "stoi", "mel_distance", "si_sdr", "judge_wer")
  formats = (".2f", ".2f", ".3f", ".3f", ".3f", ".1f", ".2f")
  a, b = off["held_out"]["mean"], on["held_out"]["mean"]
  for label, m, sign in (("0", a, ""), ("10", b, ""),
                         ("10 minus 0", {k: b[k] - a[k] for k in columns}, "+")):
    lines.append(f"| {label} | " + " | ".join(f"{m[k]:{sign}{f}}" for k, f in zip(columns, formats))
                 + " |")
  lines += ["", "Higher is better except for mel distance and WER. One seed, six clips, a tiny "
            "codec and minutes of training on synthetic speech: differences of this size may be "
            "noise; the released tokenizer (spec §1.7, English: PESQ NB 3.02, "
            "WB 2.43, SIM 0.85, STOI 0.92) is far away.", ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()

"""CPU real-time factor of the tokenizer (codec): encode (waveform -> codes) and decode (codes ->
waveform) through `mimo_jax.codec.api`, for the `tiny` and `full` presets with random weights.

Input is real speech: the fixture clip (CMU ARCTIC, 4 s at 24 kHz) tiled to each duration. For each
(preset, duration, direction) it times a first call (compilation included) and then `--repeats`
calls; RTF = median call time / audio duration (below 1 is faster than real time). A streaming
decode of the longest clip (official defaults, 1 s chunks) is timed for the tiny preset, with its
difference to the one-shot decode. The machine may be shared: the 1-minute load average is
recorded beside each measurement (2 = both cores busy with this job alone). Results go to
experiments/results/codec_cpu.{json,md}; (preset, duration) pairs not run keep their earlier rows.

  python experiments/bench/codec_cpu.py [--presets tiny,full --seconds 10,60 --repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from mimo_jax.codec import api, checkpoint, streaming
from mimo_jax.codec import config as codec_config
from mimo_jax.nn.params import init_params

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
CLIP = os.path.join(ROOT, "tests", "data", "official_tiny_a", "tokenizer", "clip.wav")


def _timed(fn, repeats: int) -> dict:
  start = time.perf_counter()
  out = fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"first_s": first, "median_s": statistics.median(times), "times_s": times,
          "load_avg_1m": os.getloadavg()[0]}, out


def bench_preset(name: str, seconds: list[int], repeats: int) -> list[dict]:
  cfg = codec_config.preset(name)
  start = time.perf_counter()
  params = jax.jit(lambda key: init_params(checkpoint.codec_specs(cfg), key))(jax.random.key(0))
  jax.block_until_ready(params)
  print(f"{name}: random params in {time.perf_counter() - start:.1f} s")
  wav, sr = api.load_audio(CLIP)
  wav = api.prepare_audio(wav, sr, cfg)
  rows = []
  for duration in seconds:
    clip = np.resize(wav, duration * cfg.sampling_rate)
    enc, codes = _timed(lambda: api.encode(params, cfg, clip, cfg.sampling_rate), repeats)
    dec, out = _timed(lambda: api.decode(params, cfg, codes), repeats)
    for direction, timing in (("encode", enc), ("decode", dec)):
      row = {"preset": name, "seconds": duration, "direction": direction,
             "rtf": timing["median_s"] / duration, **timing}
      print(f"{name} {duration:>3} s {direction}: RTF {row['rtf']:.3f} (median "
            f"{timing['median_s']:.2f} s, first call {timing['first_s']:.2f} s, load "
            f"{timing['load_avg_1m']:.1f})")
      rows.append(row)
    assert codes.shape == (cfg.mel_to_code_length(duration * 100 + 1), api.DEFAULT_N_Q)
    assert len(out) == len(codes) * cfg.samples_per_frame
    if name == "tiny" and duration == max(seconds):
      rows.append(bench_streaming(params, cfg, codes, out, duration))
  return rows


def bench_streaming(params, cfg, codes, one_shot, duration: int) -> dict:
  chunk = int(cfg.frame_rate)  # 1 s of codes per step
  streaming.stream(params, cfg, codes, chunk)  # compile every window bucket once
  start = time.perf_counter()
  pieces = streaming.stream(params, cfg, codes, chunk)
  elapsed = time.perf_counter() - start
  diff = np.abs(np.concatenate(pieces) - one_shot)
  row = {"preset": cfg_name(cfg), "seconds": duration, "direction": "stream_decode",
         "rtf": elapsed / duration, "median_s": elapsed, "steps": len(pieces),
         "max_abs_diff_vs_one_shot": float(diff.max()),
         "rms_diff_over_rms": float(np.sqrt(np.mean(diff ** 2)) / np.sqrt(np.mean(one_shot ** 2))),
         "load_avg_1m": os.getloadavg()[0]}
  print(f"stream decode {duration} s in 1 s steps: RTF {row['rtf']:.3f}, max |diff| "
        f"{row['max_abs_diff_vs_one_shot']:.2e}, rms ratio {row['rms_diff_over_rms']:.2e}")
  return row


def cfg_name(cfg) -> str:
  return next(name for name, make in codec_config.PRESETS.items() if make() == cfg)


def write_results(rows: list[dict], args) -> None:
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
          "jax": jax.__version__, "backend": jax.default_backend(), "args": vars(args)}
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, "codec_cpu.json")
  # Rows of (preset, duration) pairs not run this time are kept from the previous results (each
  # row is dated).
  for r in rows:
    r["date"] = meta["date"]
  if os.path.exists(path):
    with open(path) as f:
      done = {(r["preset"], r["seconds"]) for r in rows}
      previous = json.load(f)
    kept = [{"date": previous["meta"]["date"], **r} for r in previous["rows"]
            if (r["preset"], r["seconds"]) not in done]
    rows = kept + rows
  with open(path, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  lines = ["# Codec (tokenizer) real-time factor on CPU", "",
           f"Written {meta['date']}; {meta['machine']}, jax {meta['jax']} ({meta['backend']}), fp32, "
           "random weights, real speech tiled to length. RTF = median call time / audio "
           "duration (lower is faster; < 1 is faster than real time). First call includes "
           "compilation.", "",
           "| preset | audio | direction | RTF | median call | first call | load avg | run |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['preset']} | {r['seconds']} s | {r['direction']} | {r['rtf']:.3f} | "
                 f"{r['median_s']:.2f} s | "
                 f"{'-' if 'first_s' not in r else format(r['first_s'], '.2f') + ' s'} | "
                 f"{r['load_avg_1m']:.1f} | {r['date']} |")
  stream_rows = [r for r in rows if r["direction"] == "stream_decode"]
  for r in stream_rows:
    lines += ["", f"Streaming decode ({r['preset']}, {r['seconds']} s, 1 s steps, official "
              f"defaults left 250 / right 40 frames): {r['steps']} steps, max |streamed - "
              f"one-shot| {r['max_abs_diff_vs_one_shot']:.2e}, rms of the difference "
              f"{r['rms_diff_over_rms']:.2e} of the signal rms."]
  with open(os.path.join(RESULTS_DIR, "codec_cpu.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="tiny,full")
  parser.add_argument("--seconds", default="10,60")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  seconds = [int(s) for s in args.seconds.split(",")]
  rows = []
  for name in args.presets.split(","):
    rows += bench_preset(name, seconds, args.repeats)
  write_results(rows, args)


if __name__ == "__main__":
  main()

"""Codec cost per second of audio vs clip length on CPU (issue 17 goal 4): the full-size tokenizer
(random weights) encodes and decodes 10, 30 and 60 s clips through `mimo_jax.codec.api`, with the
windowed attention computed blocked (`CodecConfig.attention="blocked"`, the default) and masked
over [t, t] scores (the previous path), interleaved round by round in one process.

The released encoder's window is unbounded ([-1, -1]: full attention), so encode runs the same
computation under both settings (checked here: identical lowered HLO) and is timed once per round;
decode (causal full-attention decoder + the vocoder's (40, 10) window) is timed under each.
RTF = call time / audio duration; the cost ratio is RTF(longest) / RTF(shortest) (goal <= 1.2).
Every shape is compiled ahead of time before the timed rounds (`compile_only`); --warmup adds
untimed executed rounds. The machine is shared: each call records the CPU-seconds other processes took meanwhile and the 1-minute load average.
Results: experiments/results/codec_length.{json,md} (float32) or codec_length_<dtype>.{json,md}.

  python experiments/bench/codec_length.py [--seconds 10,30,60 --repeats 1 --dtype float32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

from mimo_jax.codec import api, checkpoint, mel  # noqa: E402
from mimo_jax.codec import config as codec_config  # noqa: E402
from mimo_jax.codec.encoder import encode_features  # noqa: E402
from mimo_jax.nn.params import init_params  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
CLIP = os.path.join(ROOT, "tests", "data", "official_tiny_a", "tokenizer", "clip.wav")
IMPLS = ("masked", "blocked")


def same_encoder_hlo(params, cfgs: dict, frames: int) -> bool:
  """Whether the encoder lowers to the same HLO under every attention setting."""
  mel_btm = jax.ShapeDtypeStruct((1, frames, cfgs["masked"].n_mels), jnp.float32)
  lengths_b = jax.ShapeDtypeStruct((1,), jnp.int32)
  texts = {jax.jit(encode_features, static_argnums=1).lower(params["encoder"], c, mel_btm,
                                                              lengths_b).as_text()
           for c in cfgs.values()}
  return len(texts) == 1


def compile_only(call) -> None:
  """Runs `call` with the api's jitted row functions replaced by ahead-of-time compilation of the
  same shapes (nothing executes; zero-length outputs), so the timed calls that follow find every
  shape compiled: a warm-up without a full-length execution."""
  originals = api._encode_rows, api._decode_rows

  def aot(fn):
    def run(*args):
      fn.lower(*args).compile()
      out = jax.eval_shape(fn, *args)
      return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), out)
    return run

  api._encode_rows, api._decode_rows = aot(api._encode_rows), aot(api._decode_rows)
  try:
    call()
  finally:
    api._encode_rows, api._decode_rows = originals


def bench_duration(params, cfgs: dict, wav: np.ndarray, duration: int, warmup: int,
                   repeats: int) -> dict:
  cfg = cfgs["blocked"]
  clip = np.resize(wav, duration * cfg.sampling_rate)
  n_codes = cfg.mel_to_code_length(mel.num_frames(cfg, len(clip)))
  compile_only(lambda: api.encode(params, cfg, clip, cfg.sampling_rate))
  for c in cfgs.values():
    compile_only(lambda c=c: api.decode(params, c, np.zeros((n_codes, api.DEFAULT_N_Q), np.int32)))
  codes = {}  # each round's decode calls take the codes its encode call made

  def encode():
    codes["latest"] = api.encode(params, cfg, clip, cfg.sampling_rate)
    return {"load_avg_1m": os.getloadavg()[0]}

  calls = {"encode": encode}
  for impl in IMPLS:
    calls[f"decode {impl}"] = lambda c=cfgs[impl]: (api.decode(params, c, codes["latest"]),
                                                    {"load_avg_1m": os.getloadavg()[0]})[1]
  print(f"{duration} s ({n_codes} frames):")
  timed = benchlib.time_interleaved(calls, warmup, repeats, os.cpu_count())
  assert codes["latest"].shape == (n_codes, api.DEFAULT_N_Q)
  rows = {}
  for name, records in timed.items():
    median_s = statistics.median(r["s"] for r in records)
    rows[name] = {"seconds": duration, "rtf": median_s / duration, "median_s": median_s,
                  "warmup_rounds": warmup, "calls": records}
  return rows


def stack_flops(cfg, seconds: int, impl: str) -> dict:
  """Analytic forward FLOPs of the three transformer stacks at the api's bucketed lengths (2 per
  multiply-add; projections + FFN + the two attention products over the keys each query
  computes), which is where the length dependence lives."""
  frames = api.bucket(seconds * cfg.sampling_rate // cfg.hop_length + 1)
  codes = api.bucket(cfg.mel_to_code_length(seconds * cfg.sampling_rate // cfg.hop_length + 1))

  def stack(t, keys, d, f, layers):
    return layers * (2 * t * (4 * d * d + 2 * d * f) + 4 * t * keys * d)

  t50, t100 = (frames - 1) // cfg.stride_size + 1, codes * cfg.avg_pooler * cfg.stride_size
  left, right = cfg.vocoder_attn_window_size
  w = max(left, right)
  vocoder_keys = t100 if impl == "masked" else (-(-left // w) + 1 + -(-right // w)) * w
  return {"encode": stack(t50, t50, cfg.d_model, cfg.encoder_ffn_dim, cfg.encoder_layers),
          "decode": stack(codes * cfg.avg_pooler, codes * cfg.avg_pooler, cfg.d_model,
                          cfg.decoder_ffn_dim, cfg.decoder_layers)
                    + stack(t100, vocoder_keys, cfg.vocoder_dim, cfg.vocoder_intermediate_dim,
                            cfg.vocoder_num_layers)}


def flops_per_second_ratios(cfg, seconds: list[int]) -> dict:
  """FLOPs per second of audio, longest vs shortest clip, per call of the bench."""
  short, long = min(seconds), max(seconds)
  ratio = lambda impl, direction: (stack_flops(cfg, long, impl)[direction] / long) / (
      stack_flops(cfg, short, impl)[direction] / short)
  return {"encode": ratio("blocked", "encode"), "decode masked": ratio("masked", "decode"),
          "decode blocked": ratio("blocked", "decode")}


def cost_ratios(results: dict, seconds: list[int]) -> dict:
  short, long = str(min(seconds)), str(max(seconds))
  return {name: results[long][name]["rtf"] / results[short][name]["rtf"]
          for name in results[short]}


def markdown(report: dict) -> str:
  meta, seconds = report["meta"], report["meta"]["args"]["seconds"]
  m = meta["machine"]
  lines = [
      "# Codec cost per second of audio vs clip length (issue 17 goal 4)", "",
      f"Written {meta['date']}; {m['cpu_model']}, {m['cores']} cores (shared), jax "
      f"{meta['jax']} ({meta['backend']}), preset `{meta['args']['preset']}` with random weights, "
      f"{meta['args']['dtype']}, real speech tiled to length, `mimo_jax.codec.api` "
      "(8 stages).", "", "`uptime` at the start and end of each run:", ""]
  runs = {(row.get("date", meta["date"]), row.get("uptime_before", meta["uptime_before"]),
           row.get("uptime_after", report["uptime_after"]))
          for rows in report["results"].values() for row in rows.values()}
  lines += [f"- run {date}: `{before}` / `{after}`" for date, before, after in sorted(runs)]
  lines += [
      "",
      "RTF = median call time / audio duration (lower is faster). masked = the previous "
      "[t, t]-mask attention, blocked = `CodecConfig.attention=\"blocked\"` (the default), "
      "interleaved round by round; the encoder's window is unbounded (full attention) so encode "
      f"is the same computation under both (identical HLO: {report['encoder_hlo_identical']}) "
      "and is timed once. Timed calls never compile (every shape is compiled first; rows "
      "with warm-up > 0 also ran untimed rounds). `others` = CPU-seconds other processes took "
      "during the call (2 cores: 2 x the call time would be the whole machine).", "",
      "| audio | call | RTF | median call | own CPU-s | others' CPU-s | load avg (1 min) | warm-up "
      "| run |", "|---|---|---|---|---|---|---|---|---|"]
  for duration in seconds:
    for name, row in report["results"][str(duration)].items():
      own = "/".join(f"{c['own_cpu_s']:.1f}" for c in row["calls"])
      others = "/".join(f"{c['others_cpu_s']:.0f}" for c in row["calls"])
      loads = "/".join(f"{c['load_avg_1m']:.1f}" for c in row["calls"])
      lines.append(f"| {duration} s | {name} | {row['rtf']:.3f} | {row['median_s']:.1f} s | "
                   f"{own} | {others} | {loads} | {row.get('warmup_rounds', 1)} | "
                   f"{row.get('date', meta['date'])} |")
  lines += ["", f"Cost per second of audio, {max(seconds)} s vs {min(seconds)} s "
            "(RTF ratio; goal <= 1.2):", ""]
  own_s = lambda d, name: statistics.median(
      c["own_cpu_s"] for c in report["results"][str(d)][name]["calls"]) / d
  lines += [f"- {name}: {ratio:.2f}x in wall time; "
            f"{own_s(max(seconds), name) / own_s(min(seconds), name):.2f}x in this process's CPU-"
            f"seconds (less sensitive to the other load); {report['flops_ratio'][name]:.2f}x in "
            "analytic FLOPs of the transformer stacks"
            for name, ratio in report["cost_ratio"].items()]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", default="10,30,60")
  parser.add_argument("--warmup", type=int, default=0,
                      help="untimed rounds after the ahead-of-time compilation")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--preset", default="full", help="tiny: a quick check of the script")
  parser.add_argument("--keep", action="store_true",
                      help="keep the recorded rows of durations not run this time")
  args = parser.parse_args()
  seconds = [int(s) for s in args.seconds.split(",")]
  uptime_before = os.popen("uptime").read().strip()
  cfgs = {impl: codec_config.preset(args.preset, attention=impl, dtype=args.dtype) for impl in IMPLS}
  params = jax.jit(lambda key: init_params(checkpoint.codec_specs(cfgs["blocked"]), key))(
      jax.random.key(0))
  wav, sr = api.load_audio(CLIP)
  wav = api.prepare_audio(wav, sr, cfgs["blocked"])
  identical = same_encoder_hlo(params, cfgs, 1000)
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": benchlib.machine_info(), "jax": jax.__version__,
          "backend": jax.default_backend(), "uptime_before": uptime_before,
          "args": {**vars(args), "seconds": seconds}}
  name = "codec_length" if args.dtype == "float32" else f"codec_length_{args.dtype}"
  path = os.path.join(RESULTS_DIR, f"{name}.json")
  results = {}
  if args.keep and os.path.exists(path):  # durations not run this time keep their rows (dated)
    with open(path) as f:
      previous = json.load(f)
    run = {"date": previous["meta"]["date"], "uptime_before": previous["meta"]["uptime_before"],
           "uptime_after": previous["uptime_after"]}
    results = {d: {name: {**run, **row} for name, row in rows.items()}
               for d, rows in previous["results"].items() if int(d) not in seconds}
  for duration in seconds:  # written after each duration, so a cut-short run keeps its rows
    results[str(duration)] = bench_duration(params, cfgs, wav, duration, args.warmup,
                                            args.repeats)
    done = sorted(int(d) for d in results)
    results = {str(d): results[str(d)] for d in done}
    report = {"meta": {**meta, "args": {**meta["args"], "seconds": done}},
              "encoder_hlo_identical": identical, "results": results,
              "cost_ratio": cost_ratios(results, done),
              "flops_ratio": flops_per_second_ratios(cfgs["blocked"], done),
              "uptime_after": os.popen("uptime").read().strip()}
    print(markdown(report))
    benchlib.write_results(report, markdown(report), RESULTS_DIR, name)

if __name__ == "__main__":
  main()

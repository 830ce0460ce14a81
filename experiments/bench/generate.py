"""Generation speed on CPU: LLM steps/s, audio real-time factor and time to first audio.

Runs `mimo_jax.lm.generate` (prefill + the jitted while-loop decode) with random fp32 weights:

  tiny   `config.tiny()` (the official tiny fixture's shapes), batches 1, 8 and 32
  100m   `config.tiny()` widened as experiments/bench/serve.py's 100m: hidden 768, 12 layers
         (12 heads, 4 KV), FFN 2048, patch decoder 512 / 4 layers, patch encoder 512 / 2 layers
         (~100M parameters), batches 1, 8 and 32 (only with --models 100m)
  1b     hidden 2048, 16 layers (16 heads, 8 KV), FFN 5504, vocab 32000, the full-size patch
         encoder / decoder width (1024, 64 heads) with 6 / 8 layers (~1.1B parameters, ~4.5 GB
         in fp32), batches 1 and 8 (only with --models 1b)

The text channel is scripted so that every run does the same work whatever the random weights
say: `audio` steps are all `<|empty|>` (the patch decoder runs its 11 delayed steps every LLM
step: what TTS and spoken dialogue do), `text` steps are all a plain token (the patch decoder
is skipped: ASR and text chat). Audio sampling uses the official preset (T 0.9, top-p 0.95).

- steps/s: LLM steps per second per row (one 0.16 s patch or one text token each), from the
  decode time alone; tokens/s = batch x steps/s.
- RTF (audio): audio seconds generated per wall second = batch x steps x 0.16 / (prefill +
  decode), LM only (the codec's decode speed is in experiments/results/codec_cpu.md).
- GFLOP/step and weight MB/step (`step_cost`, analytic, all rows): what one LLM step must
  compute and read; the audio/text ratio of step times is reported beside their FLOP ratio.
- time to first audio (batch 1): prefill, then 5 LLM steps at a time through the decode and the
  codec's streaming decode (the official windows: 40 frames held back, so audio starts after 11
  patches), until the first samples come out; with the tiny official codec (random weights).

Every configuration is compiled once before timing (compile times are reported). The machine is
shared: each call records the CPU-seconds other processes took meanwhile (benchlib) and medians
are over clean calls when there are at least 2 (else over all, flagged).
Results go to experiments/results/generate.{json,md}.

With --official_src (a clone of github.com/XiaomiMiMo/MiMo-Audio) and --official_python (an
interpreter with torch and the transformers 4.49 it pins), the batch-1 rows are also timed in the
official code (`MiMoAudioForCausalLM.generate`, official_generate.py in a subprocess), round by
round with ours, on the same weights, prompt, scripted text channel and audio sampler.

  python experiments/bench/generate.py [--models tiny,1b --steps 64 --repeats 3]
      [--official_src DIR --official_python PYTHON]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import (CLEAN_SHARE, cpu_seconds, is_clean, load_since, machine_info,
                      time_interleaved, timed_call, write_results)
from mimo_jax import config
from mimo_jax.codec import streaming
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.convert.hf import export_checkpoint
from mimo_jax.lm import generate as gen
from mimo_jax.lm import flops, model
from mimo_jax.lm.sampling import PRESETS, SamplerConfig
from mimo_jax.nn.params import ParamSpec, is_spec

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
TINY_CODEC = os.path.join(ROOT, "tests", "data", "official_tiny_a", "tokenizer")
EMPTY, TEXT_TOKEN = 412, 7  # <|empty|> id of the tiny vocab; 1b uses the same (any id works)
PATCH_SECONDS = 0.16
HEAD_SCALE = 8.0
PROMPT_POSITIONS = 32

MODELS = {
    "tiny": (config.tiny, (1, 8, 32)),
    "100m": (lambda: config.tiny(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
        head_dim=64, intermediate_size=2048, local_dim=512, local_layers=4, local_attn_heads=8,
        local_ffn_dim=1024, input_local_layers=2, input_local_dim=512), (1, 8, 32)),
    "1b": (lambda: config.tiny(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=5504, vocab_size=32000, local_dim=1024, local_layers=8,
        local_attn_heads=64, local_ffn_dim=4096, input_local_layers=6, input_local_dim=1024),
           (1, 8)),
}


def random_params(cfg) -> dict:
  """Numpy draws scaled 1/sqrt(fan-in) (no per-shape compilation). The output heads are drawn
  HEAD_SCALE times larger so that, as in a trained model, the audio distributions are peaked:
  the top-p nucleus then lies among the sampler's top candidates (a flat random distribution
  would send every draw to the full-vocabulary sort, which a trained model rarely needs)."""
  rng = np.random.default_rng(0)

  def draw(path, spec: ParamSpec):
    x = rng.standard_normal(spec.shape, np.float32)
    x /= np.sqrt(spec.shape[-2] if len(spec.shape) >= 2 else 1.0)
    if "local_transformer_lm_heads" in jax.tree_util.keystr(path):
      x *= HEAD_SCALE
    return jnp.asarray(x + (1.0 if spec.init == "ones" else 0.0))

  params = jax.tree_util.tree_map_with_path(draw, model.param_specs(cfg), is_leaf=is_spec)
  # The `<|empty|>` code never wins a patch-decoder head (its column is zero): a trained model
  # does not put a whole top-p nucleus on it, which the official sampler (filter first, then
  # remove the empty code) turns into an all -inf draw.
  for head, empty in zip(params["local_transformer_lm_heads"], cfg.speech_zeroemb_idx):
    head["kernel"] = head["kernel"].at[:, empty].set(0.0)
  return params


def n_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def step_cost(cfg, batch: int, mode: str) -> dict:
  """Analytic matmul FLOPs and weight bytes (fp32) one LLM step reads, for all rows. A text
  step skips the patch decoder (`lax.cond`); an audio step runs its g + max(delay) steps with
  all c heads (padded to the widest vocabulary) at each, re-reading those weights every step.
  KV-cache reads (at most 2 x layers x cache x kv width per row) are left out: at these
  lengths they are < 5% of the weights."""
  cache_len = PROMPT_POSITIONS + 64
  audio = flops.decode_step_flops(cfg, batch, cache_len)
  dec = cfg.patch_decoder
  steps = cfg.group_size + max(cfg.delay_pattern)
  heads = dec.d_model * cfg.audio_channels * max(cfg.speech_vocab_size)
  decoder_weights = flops.stack_matmul_params(dec) + heads
  decoder = 2.0 * steps * decoder_weights + flops.stack_attention_flops(dec, 1, steps)
  if cfg.input_local_dim != cfg.local_dim:
    decoder += 2.0 * steps * cfg.patch_encoder.d_model * dec.d_model
  text_weights = (flops.stack_matmul_params(cfg.backbone) + cfg.hidden_size * cfg.vocab_size
                  + flops.stack_matmul_params(cfg.patch_encoder)
                  + cfg.group_size * cfg.patch_encoder.d_model * cfg.hidden_size)
  if mode == "text":
    return {"flops": audio - batch * decoder, "weight_bytes": 4.0 * text_weights}
  return {"flops": audio, "weight_bytes": 4.0 * (text_weights + steps * decoder_weights)}


def requests(cfg, batch: int, steps: int, mode: str) -> list[gen.Request]:
  rng = np.random.default_rng(1)
  g, c = cfg.group_size, cfg.audio_channels
  prompt_kl = np.full((1 + c, g * PROMPT_POSITIONS), -100, np.int32)
  prompt_kl[0, ::g] = rng.integers(0, 400, PROMPT_POSITIONS)
  prompt_kl[1:] = np.asarray(cfg.speech_zeroemb_idx)[:, None]
  token = EMPTY if mode == "audio" else TEXT_TOKEN
  return [gen.Request(prompt_kl, steps, (), text=SamplerConfig(greedy=True),
                      audio=PRESETS["tts"].audio, seed=i, forced_text=(token,) * steps)
          for i in range(batch)]


def run_once(params, cfg, packed, steps: int) -> dict:
  prompt_bkl, len_b, keys_b, settings, n = packed
  start = time.perf_counter()
  state = gen.prefill(params, cfg, prompt_bkl, len_b, keys_b, empty_id=EMPTY, max_new=n)
  jax.block_until_ready(state.hidden_bd)
  mid = time.perf_counter()
  state = gen.decode(params, cfg, state, settings, jnp.int32(steps), empty_id=EMPTY)
  jax.block_until_ready(state.text_bn)
  end = time.perf_counter()
  assert int(state.step) == steps
  return {"prefill_s": mid - start, "decode_s": end - mid}


def time_to_first_audio(params, cfg, codec, steps: int, chunk_steps: int = 5) -> dict:
  codec_params, codec_cfg = codec
  prompt_bkl, len_b, keys_b, settings, n = gen.pack(cfg, requests(cfg, 1, steps, "audio"),
                                                    prompt_positions=PROMPT_POSITIONS)
  start = time.perf_counter()
  state = gen.prefill(params, cfg, prompt_bkl, len_b, keys_b, empty_id=EMPTY, max_new=n)
  codec_state, taken = streaming.start(), 0
  while taken < steps:
    state = gen.decode(params, cfg, state, settings, jnp.int32(taken + chunk_steps),
                       empty_id=EMPTY)
    made = int(state.step)
    frames_tc = np.asarray(state.codes_bngc[0, taken:made]).reshape(-1, cfg.audio_channels)
    taken = made
    wav, codec_state = streaming.step(codec_params, codec_cfg, codec_state, frames_tc,
                                      last=taken >= steps)
    if len(wav):
      return {"ttfa_s": time.perf_counter() - start, "patches_before_audio": taken}
  raise RuntimeError("no audio")


@contextlib.contextmanager
def official_runner(params, cfg, src: str, python: str, steps: int, mode: str):
  """One batch-1 generation by the official code per call (experiments/bench/
  official_generate.py under `python`, the official environment, reading the official sources
  at `src`), on the same weights (exported to the official layout), prompt, scripted text channel
  and audio sampler as ours. Yields (call, the child's torch version and threads); the child's
  CPU-seconds count as the call's own, not as other load."""
  with tempfile.TemporaryDirectory(prefix="official_lm_") as folder:
    export_checkpoint(params, cfg, folder)
    request = requests(cfg, 1, steps, mode)[0]
    np.save(os.path.join(folder, "prompt.npy"), request.prompt_kl)
    audio = request.audio
    child = subprocess.Popen(
        [python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_generate.py"),
         f"--src={src}", f"--model_dir={folder}", f"--prompt={folder}/prompt.npy",
         f"--steps={steps}", f"--text_token={EMPTY if mode == 'audio' else TEXT_TOKEN}",
         f"--empty_id={EMPTY}", f"--temperature={audio.temperature}", f"--top_k={audio.top_k}",
         f"--top_p={audio.top_p}", *(["--greedy"] if audio.greedy else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call() -> dict:
      before = cpu_seconds()
      child.stdin.write("go\n")
      child.stdin.flush()
      timing = _reply(child)
      load = load_since(before)
      return {**timing, "own_cpu_s": load["own_cpu_s"] + timing["child_cpu_s"],
              "others_cpu_s": max(0.0, load["others_cpu_s"] - timing["child_cpu_s"])}

    try:
      ready = _reply(child)
      yield call, {"torch": ready["torch"], "torch_threads": ready["threads"]}
    finally:
      child.stdin.close()  # the child ends at the end of its input
      child.wait()


def _reply(child: subprocess.Popen) -> dict:
  line = child.stdout.readline()
  if not line:  # its traceback went to our stderr
    raise RuntimeError(f"official_generate.py exited ({child.wait()}) without a reply")
  return json.loads(line)


def official_row(name: str, mode: str, steps: int, first_call_s: float, records: list[dict],
                 cores: int) -> dict:
  """A batch-1 row of the official code: its first step (prefill and first patch) is its
  prefill, so its decode is steps - 1 steps."""
  decode_s, clean = median(records, "decode_s", cores)
  prefill_s, _ = median(records, "prefill_s", cores)
  row = {"model": name, "code": "official", "batch": 1, "mode": mode, "steps": steps,
         "prompt_positions": PROMPT_POSITIONS, "first_call_s": first_call_s,
         "prefill_s": prefill_s, "decode_s": decode_s, "steps_per_s": (steps - 1) / decode_s,
         "tokens_per_s": (steps - 1) / decode_s, "clean": clean, "calls": records}
  if mode == "audio":
    row["rtf_audio"] = steps * PATCH_SECONDS / (prefill_s + decode_s)
  print(f"  official batch 1 {mode:5s}: {row['steps_per_s']:8.1f} steps/s"
        f"{'' if clean else ' [contended]'}")
  return row


def median(records: list[dict], key: str, cores: int) -> tuple[float, bool]:
  clean = [r[key] for r in records if is_clean(r, cores)]
  use = clean if len(clean) >= 2 else [r[key] for r in records]
  return statistics.median(use), len(clean) >= 2


def bench_model(name: str, steps: int, repeats: int, cores: int, codec,
                batches: tuple[int, ...] = (), official: tuple[str, str] | None = None
                ) -> list[dict]:
  make, default_batches = MODELS[name]
  batches = batches or default_batches
  cfg = make()
  params = random_params(cfg)
  print(f"{name}: {n_params(params) / 1e6:.1f}M parameters")
  rows = []
  for batch in batches:
    for mode in ("audio", "text"):
      packed = gen.pack(cfg, requests(cfg, batch, steps, mode), batch=batch,
                        prompt_positions=PROMPT_POSITIONS, max_new=steps)
      t = time.perf_counter()
      run_once(params, cfg, packed, steps)
      compile_s = time.perf_counter() - t
      calls = {"ours": lambda: run_once(params, cfg, packed, steps)}
      with contextlib.ExitStack() as stack:
        if official and batch == 1:  # the official loop runs one request at a time
          calls["official"], versions = stack.enter_context(
              official_runner(params, cfg, *official, steps, mode))
          t = time.perf_counter()
          calls["official"]()
          official_first_s = time.perf_counter() - t
        timed = time_interleaved(calls, 0, repeats, cores)
      records = timed["ours"]
      if "official" in timed:
        rows.append({**official_row(name, mode, steps, official_first_s, timed["official"],
                                    cores), **versions})
      decode_s, clean = median(records, "decode_s", cores)
      prefill_s, _ = median(records, "prefill_s", cores)
      row = {"model": name, "params_m": n_params(params) / 1e6, "batch": batch, "mode": mode,
             "steps": steps, "prompt_positions": PROMPT_POSITIONS,
             "first_call_s": compile_s, "prefill_s": prefill_s, "decode_s": decode_s,
             "steps_per_s": steps / decode_s, "tokens_per_s": batch * steps / decode_s,
             "clean": clean, "calls": records}
      cost = step_cost(cfg, batch, mode)
      row["step_gflop"] = cost["flops"] / 1e9
      row["step_weight_mb"] = cost["weight_bytes"] / 1e6
      row["gflop_per_s"] = cost["flops"] / (decode_s / steps) / 1e9
      row["weight_gb_per_s"] = cost["weight_bytes"] / (decode_s / steps) / 1e9
      if mode == "audio":
        row["rtf_audio"] = batch * steps * PATCH_SECONDS / (prefill_s + decode_s)
      print(f"  batch {batch:3d} {mode:5s}: {row['steps_per_s']:8.1f} steps/s/row, "
            f"{row['tokens_per_s']:8.1f} tokens/s"
            + (f", RTF {row['rtf_audio']:.2f}" if mode == "audio" else "")
            + f" (first call {compile_s:.1f} s){'' if clean else ' [contended]'}")
      rows.append(row)
  ttfa = [timed_call(lambda: time_to_first_audio(params, cfg, codec, max(steps, 16)))
          for _ in range(repeats + 1)][1:]  # the first call compiles the 5-step bound
  ttfa_s, clean = median(ttfa, "ttfa_s", cores)
  rows.append({"model": name, "batch": 1, "mode": "time_to_first_audio", "ttfa_s": ttfa_s,
               "patches_before_audio": ttfa[0]["patches_before_audio"], "clean": clean,
               "calls": ttfa})
  print(f"  time to first audio: {ttfa_s:.2f} s ({ttfa[0]['patches_before_audio']} patches)")
  return rows


def previous_rows() -> list[dict]:
  path = os.path.join(RESULTS_DIR, "generate.json")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return json.load(f)["rows"]


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 3) -> float:
  """Memory bandwidth of one core copying a large array (bytes read + written per second): the
  scale against which the per-step weight reads are a bound."""
  src = np.ones(mb * 2**20 // 4, np.float32)
  dst = np.empty_like(src)
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    np.copyto(dst, src)
    best = min(best, time.perf_counter() - t)
  return 2 * src.nbytes / best / 1e9


def ours_by_key(rows: list[dict]) -> dict:
  """Our throughput rows by (model, batch, mode)."""
  return {(r["model"], r["batch"], r["mode"]): r for r in rows
          if "steps_per_s" in r and r.get("code", "ours") == "ours"}


def official_ratios(rows: list[dict]) -> list[str]:
  """Ours against the official code: at batch 1 (the same rounds, interleaved), and our largest
  batch's aggregate tokens/s against the official loop's, which serves one request at a time."""
  ours = ours_by_key(rows)
  lines = []
  for r in rows:
    if r.get("code") != "official" or (r["model"], 1, r["mode"]) not in ours:
      continue
    mine = ours[(r["model"], 1, r["mode"])]
    lines.append(f"- {r['model']} {r['mode']}, batch 1: ours {mine['steps_per_s']:.1f} vs official "
                 f"{r['steps_per_s']:.1f} steps/s: **{mine['steps_per_s'] / r['steps_per_s']:.2f}x**")
    widest = max((m for m in ours.values() if (m["model"], m["mode"]) == (r["model"], r["mode"])),
                 key=lambda m: m["batch"])
    if widest["batch"] > 1:
      lines.append(f"- {r['model']} {r['mode']}, ours at batch {widest['batch']}: "
                   f"{widest['tokens_per_s']:.1f} tokens/s vs the official "
                   f"{r['tokens_per_s']:.1f}: **{widest['tokens_per_s'] / r['tokens_per_s']:.1f}x**")
  return lines


def ratios(rows: list[dict]) -> list[str]:
  """Audio step time / text step time beside the FLOP ratio, per model and batch."""
  by_key = ours_by_key(rows)
  lines = []
  for (name, batch, mode), audio in by_key.items():
    text = by_key.get((name, batch, "text"))
    if mode != "audio" or text is None or "step_gflop" not in audio:
      continue
    ratio = text["steps_per_s"] / audio["steps_per_s"]
    lines.append(f"- {name} batch {batch}: audio step {1e3 / audio['steps_per_s']:.2f} ms, text "
                 f"step {1e3 / text['steps_per_s']:.3f} ms: **{ratio:.1f}x** "
                 f"(FLOP ratio {audio['step_gflop'] / text['step_gflop']:.1f}x, weight-bytes "
                 f"ratio {audio['step_weight_mb'] / text['step_weight_mb']:.1f}x)")
  return lines


def markdown(report: dict) -> str:
  machine = report["machine"]
  tick_hz = os.sysconf("SC_CLK_TCK")
  avx512 = ", AVX-512" if "avx512f" in machine["simd_flags"] else ""
  lines = [f"# Generation on CPU ({report['date']}; rows of models not rerun are kept from "
           f"earlier runs, each with its own load note in the json)", "",
           f"Command: `{report['command']}`; commit {report['commit']}.",
           f"Machine: {machine['cpu_model']} ({machine['cpu_family_model']}{avx512}), "
           f"{machine['cores_usable']} usable cores; load average at the start "
           f"{report['loadavg_start']}, at the end {report['loadavg_end']} (the machine is shared "
           f"with other work: rows marked 'contended' had fewer than 2 clean calls; /proc/stat "
           f"counts other work in ticks of {1000 // tick_hz} ms, so one tick marks any call "
           f"under {1 / (tick_hz * CLEAN_SHARE * machine['cores_usable']):.2f} s). One-core "
           f"copy bandwidth {report.get('copy_gb_per_s', float('nan')):.1f} GB/s.", "",
           "| model | code | batch | steps | steps/s/row | tokens/s | RTF (LM) | prefill s | "
           "first call s | GFLOP/step | GFLOP/s | weight MB/step | weight GB/s | clean |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    if r["mode"] == "time_to_first_audio":
      continue
    lines.append(f"| {r['model']} | {r.get('code', 'ours')} | {r['batch']} | "
                 f"{r['steps']} {r['mode']} | "
                 f"{r['steps_per_s']:.1f} | {r['tokens_per_s']:.1f} | "
                 f"{r.get('rtf_audio', float('nan')):.2f} | {r['prefill_s']:.3f} | "
                 f"{r['first_call_s']:.1f} | {r.get('step_gflop', float('nan')):.4f} | "
                 f"{r.get('gflop_per_s', float('nan')):.2f} | "
                 f"{r.get('step_weight_mb', float('nan')):.1f} | "
                 f"{r.get('weight_gb_per_s', float('nan')):.2f} | "
                 f"{'yes' if r['clean'] else 'no'} |")
  lines += ["", "Audio step / text step (time from the table; FLOPs and weight bytes analytic, "
            "`step_cost`):", "", *ratios(report["rows"])]
  if any(r.get("code") == "official" for r in report["rows"]):
    lines += ["", "Against the official code (`official` rows: `MiMoAudioForCausalLM.generate`, "
              "float32, its torch version and threads in the json, the same weights, prompt, "
              "scripted text and audio sampler; timed in the same rounds as our batch-1 rows, "
              "interleaved; our larger batches ran minutes later in the same process; its first "
              "step, with the prefill, is its prefill column, so its steps/s are of the other "
              "steps - 1):", "",
              *official_ratios(report["rows"])]
  lines += ["", "Time to first audio (batch 1, 5 LLM steps per chunk, official streaming "
            "windows, tiny codec):", ""]
  for r in report["rows"]:
    if r["mode"] == "time_to_first_audio":
      lines.append(f"- {r['model']}: {r['ttfa_s']:.2f} s after {r['patches_before_audio']} "
                   f"patches{'' if r['clean'] else ' (contended)'}")
  lines += ["", "RTF (LM) = audio seconds generated per wall second by the LM (prefill + "
            "decode; 0.16 s per patch), before the codec decode. `audio` rows run the patch "
            "decoder at every step, `text` rows never. GFLOP/step and weight MB/step are for "
            "all rows of the batch; weight GB/s = weight bytes read per step / step time (the "
            "weights are re-read every step; at batch 1 a step can be no faster than its "
            "weight bytes over the memory bandwidth).", ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--models", default="tiny")
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batches", default="", help="Comma list overriding each model's batches.")
  parser.add_argument("--official_src", default=None,
                      help="A clone of github.com/XiaomiMiMo/MiMo-Audio: also time its generation "
                      "at batch 1 (experiments/bench/official_generate.py).")
  parser.add_argument("--official_python", default=None,
                      help="With --official_src: the interpreter of the official environment "
                      "(torch, transformers==4.49.0 as its requirements.txt pins).")
  args = parser.parse_args()
  if bool(args.official_src) != bool(args.official_python):
    parser.error("--official_src and --official_python go together")
  official = (args.official_src, args.official_python) if args.official_src else None
  cores = len(os.sched_getaffinity(0))
  loadavg_start = os.getloadavg()
  copy_gbs = copy_bandwidth_gbs()
  codec = import_codec(TINY_CODEC)
  names = args.models.split(",")
  rows = []
  for name in names:
    rows += bench_model(name, args.steps, args.repeats, cores, codec,
                        tuple(int(b) for b in args.batches.split(",") if b), official)
  # Read at the end, so that runs of different models side by side keep each other's rows.
  rows = [r for r in previous_rows() if r["model"] not in names] + rows
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip()
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "commit": commit, "jax": jax.__version__, "backend": jax.default_backend(),
            "machine": machine_info(), "loadavg_start": [round(x, 1) for x in loadavg_start],
            "loadavg_end": [round(x, 1) for x in os.getloadavg()], "copy_gb_per_s": copy_gbs,
            "rows": rows}
  write_results(report, markdown(report), RESULTS_DIR, "generate")


if __name__ == "__main__":
  main()

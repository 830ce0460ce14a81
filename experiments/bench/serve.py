"""The HTTP server under a bounded load on localhost, against the same requests run one at a time.

For each model the server (`mimo_jax.serve`, SLOTS slots, MAX_NEW steps per answer, streamed PCM)
runs in this process; client tasks (httpx, asyncio) send TTS requests (`/v1/audio/speech`,
greedy, distinct texts) back to back, `concurrency` at a time, REQUESTS in all. The baseline is
the same requests run one after another at batch 1 without the server (`MimoAudio.stream`, the
same chunking). Recorded per run: requests/s, audio seconds generated per wall second, p50/p99
request latency (send to last byte) and time to first audio (send to the first audio bytes).

Models (random weights, fine for throughput; their audio is noise):
  tiny  the official tiny fixture's LM (tests/data/official_tiny_a), ~1.3M parameters
  100m  `config.tiny()` widened to hidden 768, 12 layers, FFN 2048, patch decoder 512 wide /
        4 layers, patch encoder 512 / 2 layers (random weights, about 100M parameters)
Both use the fixture's text tokenizer and tiny audio tokenizer. The text head is steered so that
every step is audio (`tests.helpers.speaking_params`): each answer is MAX_NEW patches (0.16 s
each). Every shape is compiled (warm-up requests) before timing. The machine is shared: the load
average before and after each run is recorded (`uptime`).

  python experiments/bench/serve.py [--models tiny,100m --concurrency 1,8,32 --requests 32]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import subprocess
import sys
import time

import httpx
import jax
import numpy as np

from benchlib import machine_info, write_results
from generate import random_params
from mimo_jax import config, inference, serve
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.data import templates
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm.sampling import GREEDY
from mimo_jax.serve import api, slots

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
from tests.helpers import speaking_params  # noqa: E402

RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
TINY = os.path.join(ROOT, "tests", "data", "official_tiny_a")
EMPTY = 412
SLOTS, MAX_NEW, CHUNK, PATCH_S = 32, 16, 4, 0.16
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()


def load(name: str) -> inference.MimoAudio:
  codec_params, codec_cfg = import_codec(os.path.join(TINY, "tokenizer"))
  tokenizer = TextTokenizer.load(os.path.join(TINY, "lm"))
  if name == "tiny":
    mimo = inference.MimoAudio.load(os.path.join(TINY, "lm"), os.path.join(TINY, "tokenizer"),
                                    dtype="float32")
  else:
    base = config.load_config(os.path.join(TINY, "lm"), dtype="float32")
    cfg = config.tiny(
        vocab_size=base.vocab_size, hidden_size=768, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, head_dim=64, intermediate_size=2048,
        local_dim=512, local_layers=4, local_attn_heads=8, local_ffn_dim=1024,
        input_local_layers=2, input_local_dim=512)
    mimo = inference.MimoAudio(random_params(cfg), cfg, codec_params, codec_cfg, tokenizer)
  return inference.MimoAudio(speaking_params(mimo, EMPTY), mimo.cfg, codec_params, codec_cfg,
                             tokenizer)


def texts(n: int) -> list[str]:
  return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 4)) for i in range(n)]


async def one(client: httpx.AsyncClient, url: str, text: str) -> dict:
  start = time.perf_counter()
  first, samples = None, 0
  async with client.stream("POST", f"{url}/v1/audio/speech", json={
      "model": "m", "input": text, "voice": "default", "response_format": "pcm",
      "temperature": 0}) as r:
    r.raise_for_status()
    async for chunk in r.aiter_raw():
      if chunk and first is None:
        first = time.perf_counter() - start
      samples += len(chunk) // 2
  return {"latency_s": time.perf_counter() - start, "ttfa_s": first, "audio_s": samples / 24000}


async def load_run(url: str, requests: list[str], concurrency: int) -> tuple[list[dict], float]:
  pending = list(requests)
  results = []
  async with httpx.AsyncClient(timeout=600) as client:
    async def worker():
      while pending:
        results.append(await one(client, url, pending.pop(0)))
    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
  return results, time.perf_counter() - start


def sequential(mimo: inference.MimoAudio, requests: list[str]) -> tuple[list[dict], float]:
  results, start = [], time.perf_counter()
  for text in requests:
    t0, first, samples = time.perf_counter(), None, 0
    for wav in mimo.stream(templates.tts_sft(mimo.fmt, text), max_new=MAX_NEW,
                           chunk_steps=CHUNK, text_sampler=GREEDY, audio_sampler=GREEDY,
                           scfg=api.Limits().stream):
      first = first if first is not None else time.perf_counter() - t0
      samples += len(wav)
    results.append({"latency_s": time.perf_counter() - t0, "ttfa_s": first,
                    "audio_s": samples / 24000})
  return results, time.perf_counter() - start


def summary(results: list[dict], wall_s: float) -> dict:
  lat = sorted(r["latency_s"] for r in results)
  ttfa = sorted(r["ttfa_s"] for r in results)
  p = lambda xs, q: float(np.percentile(xs, q))
  return {"requests": len(results), "wall_s": wall_s, "requests_per_s": len(results) / wall_s,
          "audio_s_per_s": sum(r["audio_s"] for r in results) / wall_s,
          "latency_p50_s": p(lat, 50), "latency_p99_s": p(lat, 99),
          "ttfa_p50_s": p(ttfa, 50), "ttfa_p99_s": p(ttfa, 99)}


def uptime() -> str:
  return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="tiny,100m")
  ap.add_argument("--concurrency", default="1,8,32")
  ap.add_argument("--requests", type=int, default=32)
  args = ap.parse_args()
  runs = []
  for name in args.models.split(","):
    mimo = load(name)
    n_params = sum(x.size for x in jax.tree.leaves(mimo.params))
    app, _ = serve.build(mimo, shape=slots.Shape(SLOTS, 64, MAX_NEW), chunk_steps=CHUNK,
                         max_queue=4 * SLOTS)
    with serve.running(app) as url:
      asyncio.run(load_run(url, texts(SLOTS), SLOTS))  # compiles every prompt bucket used
      for concurrency in map(int, args.concurrency.split(",")):
        n = args.requests if concurrency > 1 else max(4, args.requests // 8)
        before = uptime()
        results, wall = asyncio.run(load_run(url, texts(n), concurrency))
        runs.append({"model": name, "params": n_params, "mode": f"server, {concurrency} "
                     f"concurrent", **summary(results, wall), "uptime_before": before,
                     "uptime_after": uptime()})
        print(runs[-1], flush=True)
    n = max(4, args.requests // 8)
    sequential(mimo, texts(n))  # compiles every prompt bucket used
    before = uptime()
    results, wall = sequential(mimo, texts(n))
    runs.append({"model": name, "params": n_params, "mode": "sequential, batch 1 (no server)",
                 **summary(results, wall), "uptime_before": before, "uptime_after": uptime()})
    print(runs[-1], flush=True)
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "slots": SLOTS, "max_new": MAX_NEW, "chunk_steps": CHUNK, "runs": runs,
            "machine": machine_info()}
  write_results(report, markdown(report), RESULTS_DIR, "serve")


def markdown(report: dict) -> str:
  rows = "\n".join(
      f"| {r['model']} ({r['params'] / 1e6:.1f}M) | {r['mode']} | {r['requests']} | "
      f"{r['requests_per_s']:.2f} | {r['audio_s_per_s']:.2f} | {r['latency_p50_s']:.2f} / "
      f"{r['latency_p99_s']:.2f} | {r['ttfa_p50_s']:.2f} / {r['ttfa_p99_s']:.2f} | "
      f"{r['uptime_before'].split('load average: ')[-1]} |" for r in report["runs"])
  m = report["machine"]
  return f"""# Serving under load (`experiments/bench/serve.py`)

{report['date']}, {m['cpu_model']}, {m['cores_usable']} usable cores, shared with other
engineers' jobs (load average before each run in the last column: the numbers are contended).
Server: {report['slots']} slots, {report['max_new']} steps per answer ({report['max_new']} patches
= {report['max_new'] * PATCH_S:.2f} s of audio), chunks of {report['chunk_steps']} steps; TTS
requests (`/v1/audio/speech`, greedy, streamed PCM) sent back to back by `concurrency` clients.
Baseline: the same requests one after another at batch 1 without the server (`MimoAudio.stream`).
Random weights steered to speak (audio is noise; the work per request is fixed).

| model | mode | requests | requests/s | audio s/s | latency p50 / p99 (s) | first audio p50 / p99 (s) | load before |
|---|---|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
  main()

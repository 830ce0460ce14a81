"""Throughput of the training input pipeline on this CPU: packed sequences/s from pre-tokenised
shards, for several Grain worker-process counts and record-prefetch thread counts.

The shards hold synthetic utterances shaped like real ones: 2-20 s of codes (25 Hz, 8 channels,
random entries), transcripts of about 2.5 words per second cut from the bundled sentence list, the
real MiMo-Audio text tokenizer, and the phase-2 ("generation") task mixture, so every task
template runs. For each (sequence length, read threads, worker count) one iterator is warmed up
(worker start included), then `--calls` timed calls each pull `--batches` batches. Worker
processes' CPU time is counted as ours; a call is clean when other processes took under
benchlib.CLEAN_SHARE of the machine. Read threads 0 is the pipeline's default for local shards;
-1 is Grain's own default (16 threads). Results: experiments/results/data_pipeline.{json,md}.

  python experiments/bench/data_pipeline.py [--records 1500 --seq 8192,2048 --workers 0,1,2
                                             --read_threads -1,0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grain
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

from mimo_jax import config  # noqa: E402
from mimo_jax.data import corpus, packing, pipeline, pretokenize, templates  # noqa: E402
from mimo_jax.data.tokenizer import TextTokenizer  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RESULTS_DIR = os.path.join(ROOT, "experiments", "results")
RECORDS_PER_SHARD = 256


def write_shards(out: str, n_records: int, tokenizer: TextTokenizer, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  words = " ".join(s for lang, s in corpus.load_sentences() if lang == "en").split()
  records = []
  for i in range(n_records):
    seconds = float(rng.uniform(2, 20))
    n_frames = int(seconds * 25)
    codes = np.stack([rng.integers(0, 1024 if c < 2 else 128, n_frames) for c in range(8)], 1)
    first = int(rng.integers(len(words)))
    text = " ".join(np.roll(words, -first)[:max(1, int(seconds * 2.5))])
    records.append(pretokenize.serialize({
        "key": str(i), "audio": f"{i}.wav", "text": text, "speaker": f"s{i % 7}",
        "language": "en", "task": "", "seconds": seconds, "codes": codes.astype(np.uint16),
        "text_ids": tokenizer.encode(text, special=False)}))
  for k, first in enumerate(range(0, n_records, RECORDS_PER_SHARD)):
    n = -(-n_records // RECORDS_PER_SHARD)
    pretokenize.write_shard(os.path.join(out, pretokenize.shard_name(k, n)),
                            records[first:first + RECORDS_PER_SHARD])
  return pretokenize.shard_paths(out)


def _children_cpu() -> float:
  """CPU-seconds of this process's live children (the Grain workers)."""
  total = 0.0
  hz = os.sysconf("SC_CLK_TCK")
  for child in multiprocessing.active_children():
    try:
      with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / hz
    except (OSError, IndexError):
      pass
  return total


def timed_pull(it, n_batches: int) -> dict:
  before, children = benchlib.cpu_seconds(), _children_cpu()
  batches = [next(it) for _ in range(n_batches)]
  load = benchlib.load_since(before)
  workers_cpu = _children_cpu() - children
  load["own_cpu_s"] += workers_cpu
  load["others_cpu_s"] = max(0.0, load["others_cpu_s"] - workers_cpu)
  seg = np.concatenate([b["segment_ids"] for b in batches])
  return {**load, "sequences": int(seg.shape[0]), "examples": int(seg.max(axis=1).sum()),
          "filled": float(np.mean(seg > 0))}


def bench(shards, fmt, seq: int, workers: int, threads: int, batch: int, n_batches: int,
          calls: int, cores: int) -> dict:
  read_options = grain.ReadOptions() if threads < 0 else grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=4 * threads)
  ds = pipeline.make_dataset(shards, pipeline.PhaseExamples(fmt, "generation", 0),
                             packing.Packer(seq, fmt.layout), batch_size=batch, seed=0,
                             worker_count=workers, read_options=read_options)
  start = time.perf_counter()
  it = iter(ds)
  next(it)
  warm_s = time.perf_counter() - start
  rows = []
  for c in range(calls):
    rows.append(timed_pull(it, n_batches))
    r = rows[-1]
    print(f"  seq {seq} workers {workers} read threads {threads} call {c + 1}/{calls}: "
          f"{r['sequences'] / r['s']:.2f} seq/s" + (
              "" if benchlib.is_clean(r, cores) else
              f" (others took {r['others_cpu_s']:.1f} CPU-s)"), flush=True)
  clean = [r for r in rows if benchlib.is_clean(r, cores)]
  rate = lambda rs, key: statistics.median(r[key] / r["s"] for r in rs) if rs else None
  skipped = packing.skipped(it.get_state())
  return {"seq_positions": seq, "workers": workers, "read_threads": threads, "batch": batch,
          "batches_per_call": n_batches,
          "first_batch_s": warm_s, "calls": rows, "clean_calls": len(clean),
          "sequences_per_s_clean": rate(clean, "sequences"),
          "sequences_per_s_all": rate(rows, "sequences"),
          "examples_per_s_all": rate(rows, "examples"),
          "positions_per_s_all": rate(rows, "sequences") * seq,
          # Robust to a shared machine: sequences per CPU-second this pipeline (workers included)
          # spent, i.e. the rate one dedicated core would give if the work parallelises.
          "sequences_per_own_cpu_s": sum(r["sequences"] for r in rows) / sum(
              r["own_cpu_s"] for r in rows),
          "fill": statistics.mean(r["filled"] for r in rows), "skipped": skipped}


def markdown(report: dict) -> str:
  m = report["machine"]
  lines = [
      "# Training input pipeline throughput (CPU)", "",
      f"{report['date']}, commit {report['commit']}; {m['cpu_model']}, {m['cores_usable']} usable "
      f"cores, shared with other work (see the clean-call counts). Synthetic shards of "
      f"{report['records']} utterances (2-20 s of codes, ~2.5 words/s, real MiMo text "
      f"tokenizer), phase-2 task mixture, first-fit-decreasing packing (windows of 8 sequences). "
      f"Rates are medians over timed calls; 'clean' only counts calls where other processes took "
      f"< {benchlib.CLEAN_SHARE:.0%} of the machine (Grain workers count as ours). 'seq per "
      f"CPU-s' divides sequences by the CPU time the pipeline itself used (main process and "
      f"workers): the rate per dedicated core, little affected by other load. 'fill' is the "
      f"share of positions that hold examples (the rest is padding).", "",
      "| positions/seq | workers | read threads | seq/s (all calls) | seq/s (clean) | clean calls "
      "| examples/s | positions/s | seq per CPU-s | fill | first batch |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["rows"]:
    clean = "-" if r["sequences_per_s_clean"] is None else f"{r['sequences_per_s_clean']:.2f}"
    threads = "grain default (16)" if r["read_threads"] < 0 else str(r["read_threads"])
    lines.append(f"| {r['seq_positions']} | {r['workers']} | {threads} | "
                 f"{r['sequences_per_s_all']:.2f} | "
                 f"{clean} | {r['clean_calls']}/{len(r['calls'])} | "
                 f"{r['examples_per_s_all']:.1f} | {r['positions_per_s_all']:.0f} | "
                 f"{r['sequences_per_own_cpu_s']:.2f} | "
                 f"{r['fill']:.3f} | {r['first_batch_s']:.1f} s |")
  lines += ["", "Skipped examples (all runs): " + ", ".join(
      f"{k}: {v}" for k, v in report["skipped_total"].items()) if report["skipped_total"]
            else "No example was skipped."]
  lines += ["", "The 7B recipe needs 16.8 M positions per step (2048 sequences of 8192): divide by "
            "the positions/s above for the hosts' input cost per step, spread over the pod's "
            "hosts (each reads its share)."]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, default=1500)
  parser.add_argument("--seq", default="8192,2048")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--read_threads", default="-1,0",
                      help="record prefetch threads per pipeline (-1: Grain's default)")
  parser.add_argument("--batch", type=int, default=2, help="sequences per batch")
  parser.add_argument("--batches", type=int, default=16,
                      help="batches per timed call (several packing windows)")
  parser.add_argument("--calls", type=int, default=4)
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags
  machine = benchlib.machine_info()
  tokenizer = TextTokenizer.mimo()
  fmt = templates.Formatter.from_config(config.preset("7b"), tokenizer)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    shards = write_shards(tmp, args.records, tokenizer)
    print(f"{len(shards)} shards of {args.records} records in {time.perf_counter() - start:.1f} s")
    for seq in map(int, args.seq.split(",")):
      for threads in map(int, args.read_threads.split(",")):
        for workers in map(int, args.workers.split(",")):
          rows.append(bench(shards, fmt, seq, workers, threads, args.batch, args.batches,
                            args.calls, machine["cores_usable"]))
  skipped_total: dict = {}
  for r in rows:
    for k, v in r["skipped"].items():
      skipped_total[k] = skipped_total.get(k, 0) + v
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "machine": machine, "args": vars(args), "records": args.records, "rows": rows,
            "skipped_total": skipped_total}
  benchlib.write_results(report, markdown(report), RESULTS_DIR, "data_pipeline")


if __name__ == "__main__":
  main()

"""Batch-1 generation by the official MiMo-Audio code: the other side of
`experiments/bench/generate.py --official_src`, which starts this script in a subprocess.

The official sources (a clone of github.com/XiaomiMiMo/MiMo-Audio, never vendored here) pin
transformers 4.49, whose `PreTrainedModel` still carries `generate`'s machinery; this project's
environment has a later transformers, so this script runs under an interpreter of the official
environment (`--official_python`: torch and transformers==4.49.0, numpy, safetensors).

It loads an exported checkpoint (`mimo_jax.convert.hf.export_checkpoint`) into the official
`MiMoAudioForCausalLM` (float32, CPU), then for every line read from stdin runs one
`generate` -> `slm_sample` call of `--steps` new steps from the `--prompt` ([1 + c, g * p]
layout, .npy), with the text channel scripted to `--text_token` (as generate.py's
`forced_text`) and the official `MiMoSampler` for the audio, and prints one JSON line: the
first step (prefill and first patch) and the rest, timed by the official streamer hook (called
before the prefill and after every step), and this process's CPU-seconds during the call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="the official repository (or its src/)")
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--text_token", type=int, required=True)
  parser.add_argument("--empty_id", type=int, required=True)
  parser.add_argument("--greedy", action="store_true")
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--top_p", type=float, default=1.0)
  args = parser.parse_args()
  src = os.path.join(args.src, "src") if os.path.isdir(os.path.join(args.src, "src")) else args.src
  sys.path.insert(0, src)
  import torch  # noqa: PLC0415
  from transformers import GenerationConfig  # noqa: PLC0415
  from mimo_audio import modeling_mimo_audio as official  # noqa: PLC0415

  # Only empty_idx enters generation; the others are the official arguments' required fields.
  ids = dict(sosp_idx=-1, eosp_idx=-1, sostm_idx=-1, eostm_idx=-1, eot_idx=-1,
             empty_idx=args.empty_id)
  lm = official.MiMoAudioForCausalLM.from_pretrained(
      args.model_dir, args=official.MiMoAudioArguments(model_name_or_path=args.model_dir, **ids),
      torch_dtype=torch.float32).eval()
  prompt_kl = np.load(args.prompt)
  prompt = torch.tensor(prompt_kl.T.reshape(1, -1), dtype=torch.long)  # frame-major, as official
  positions = prompt_kl.shape[1] // lm.config.group_size

  class Scripted(official.MiMoSampler):
    def sample(self, scores, removed_tokens=None):
      return torch.full(scores.shape[:1], args.text_token, dtype=torch.long)

  local_sampler = official.MiMoSampler(do_sample=not args.greedy, temperature=args.temperature,
                                       top_k=args.top_k or None, top_p=args.top_p)

  class Clock:  # the streamer hook: put() before the prefill and after every step
    def __init__(self):
      self.times = []

    def put(self, _):
      self.times.append(time.perf_counter())

    def end(self):
      pass

  def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

  print(json.dumps({"ready": True, "torch": torch.__version__,
                    "threads": torch.get_num_threads()}), flush=True)
  for _ in sys.stdin:
    clock, cpu_before = Clock(), cpu_s()
    out = lm.generate(prompt, GenerationConfig(max_length=positions + args.steps),
                      streamer=clock, global_sampler=Scripted(), local_sampler=local_sampler)
    new_kl = out.reshape(-1, prompt_kl.shape[0]).T[:, prompt_kl.shape[1]:]
    assert len(clock.times) == args.steps + 1, len(clock.times)
    assert bool((new_kl[0] == args.text_token).all())
    print(json.dumps({"prefill_s": clock.times[1] - clock.times[0],
                      "decode_s": clock.times[-1] - clock.times[1],
                      "child_cpu_s": cpu_s() - cpu_before}), flush=True)


if __name__ == "__main__":
  main()

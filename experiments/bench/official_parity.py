"""How closely we reproduce the official PyTorch outputs of the tiny fixtures: max |difference| of
every array the parity tests check, and how many values are bit-equal.

  python experiments/bench/official_parity.py [--out experiments/results/official_parity.md]

Runs on the CPU in float32 (the fixtures are float32 PyTorch on CPU); prints a markdown table
and writes it with the machine and its load. The parity tests' tolerances are set from these
numbers with a margin (a 10x regression must fail them).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mimo_jax import config  # noqa: E402
from mimo_jax.codec import api, decoder, encoder, rvq  # noqa: E402
from mimo_jax.codec.checkpoint import import_codec  # noqa: E402
from mimo_jax.convert.hf import import_checkpoint  # noqa: E402
from mimo_jax.lm import backbone, model  # noqa: E402
from mimo_jax.lm import generate as gen  # noqa: E402
from mimo_jax.lm.layout import SpecialTokens  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "data", "official_tiny_a")
LM_DIR, CODEC_DIR = os.path.join(FIXTURE, "lm"), os.path.join(FIXTURE, "tokenizer")
# Special ids of the fixture's tiny text tokenizer (special_tokens.json).
TOKENS = SpecialTokens(endoftext=400, im_start=401, im_end=402, sosp=410, eosp=411, empty=412,
                       human=413, speechlm=414, sostm=415, eostm=416, eot=417)
EMPTY_ID = TOKENS.empty
STOP = (TOKENS.endoftext, TOKENS.eostm, TOKENS.im_end)


def row(name: str, ours, official) -> tuple[str, float, float, int]:
  ours, official = np.asarray(ours, np.float32), np.asarray(official, np.float32)
  assert ours.shape == official.shape, (name, ours.shape, official.shape)
  return name, float(np.abs(ours - official).max()), float(np.mean(ours == official)), ours.size


def lm_rows() -> list:
  io = dict(np.load(os.path.join(LM_DIR, "io.npz")))
  rows = []
  for official_sum, suffix in ((False, "_fp32acc"), (True, "")):
    cfg = config.load_config(LM_DIR, dtype="float32", official_bf16_speech_sum=official_sum)
    params, _ = import_checkpoint(LM_DIR, cfg, specs_fn=model.param_specs)
    mode = "bf16 sum vs as-is" if official_sum else "fp32 sum vs fp32acc"
    ids = io["input_ids"][None]
    embeds = model.input_embeds(params, cfg, ids, EMPTY_ID)
    hidden = jax.jit(lambda p, x, c=cfg: model.forward(p, c, x, EMPTY_ID))(params, ids)
    rows += [row(f"{mode}: inputs_embeds", embeds[0], io["inputs_embeds" + suffix]),
             row(f"{mode}: hidden", hidden[0], io["hidden" + suffix]),
             row(f"{mode}: text_logits", backbone.text_logits(params, hidden)[0],
                 io["text_logits" + suffix]),
             row(f"{mode}: local_cond", model.local_cond(params, cfg, hidden)[0],
                 io["local_cond" + suffix])]
    h, _ = backbone.hidden_states(params, cfg, embeds_btd=io["inputs_embeds" + suffix][None],
                                  positions_bt=io["position_ids"][None])
    rows += [row(f"{mode}: backbone hidden from official embeds", h[0], io["hidden" + suffix]),
             row(f"{mode}: backbone text_logits from official embeds",
                 backbone.text_logits(params, h)[0], io["text_logits" + suffix])]
    prefix = "" if official_sum else "fp32acc_"
    free = gen.Request(io["input_ids"], 6, STOP)
    forced = gen.Request(io["input_ids"], 6, STOP, forced_text=tuple(io["gen_forced_script"]))
    results = [gen.generate(params, cfg, [r], empty_id=EMPTY_ID, record_logits=True, batch=1,
                            prompt_positions=16, max_new=8)[0] for r in (free, forced)]
    for result, name in zip(results, ("free", "forced")):
      rows.append(row(f"{mode}: generation {name} text logits", result.text_logits_nv,
                      io[f"{prefix}gen_{name}_text_logits"]))
    if official_sum:
      _, codes_bpgc = model.split_channels(ids, cfg)
      logits = model.patch_decoder_logits(params, cfg, io["local_cond_for_patches"],
                                          codes_bpgc[0, io["audio_positions"]])
      rows.append(row("teacher-forced patch decoder logits (8 channels)",
                      np.concatenate([np.ravel(x) for x in logits]),
                      np.concatenate([np.ravel(io[f"local_logits_c{c}"]) for c in range(8)])))
      forced_result = results[1]
      steps = np.flatnonzero(forced_result.text_ids == EMPTY_ID)
      rows.append(row("generation forced patch-decoder logits (8 channels)",
                      np.concatenate([np.ravel(x[steps]) for x in forced_result.local_logits]),
                      np.concatenate([np.ravel(io[f"gen_forced_local_logits_c{c}"])
                                      for c in range(8)])))
      codec_params, codec_cfg = import_codec(CODEC_DIR)
      wav = api.decode(codec_params, codec_cfg, gen.output_codes(forced_result, TOKENS, cfg))
      rows.append(row("generation forced wav (decoded)", wav, io["gen_forced_wav"]))
  return rows


def codec_rows() -> list:
  params, cfg = import_codec(CODEC_DIR)
  io = dict(np.load(os.path.join(CODEC_DIR, "io.npz")))
  mel_tm = io["mel"].T
  features_btd, _ = jax.jit(encoder.encode_features, static_argnums=1)(
      params["encoder"], cfg, jnp.asarray(mel_tm[None]), jnp.array([len(mel_tm)]))
  _, zq_btd = rvq.quantize(params["quantizer"], cfg, features_btd, n_q=8)
  zq_official = rvq.dequantize(params["quantizer"], cfg, jnp.asarray(io["codes"].T[None]))
  lengths_b = jnp.array([io["codes"].shape[1]])
  mel_btm, _ = jax.jit(decoder.decode_mel, static_argnums=1)(params["decoder"], cfg, zq_official,
                                                              lengths_b)
  wav_bs, _ = jax.jit(decoder.decode_wav, static_argnums=1)(params["decoder"], cfg, zq_official,
                                                             lengths_b)
  return [row("codec: encoder pre-quantisation output", features_btd[0], io["enc_pre_quant"]),
          row("codec: codeword sum zq", zq_btd[0], io["zq"]),
          row("codec: decoder coarse mel", mel_btm[0], io["dec_coarse_mel"]),
          row("codec: decoded wav", wav_bs[0], io["wav_decoded"]),
          row("codec: api.decode wav", api.decode(params, cfg, io["codes"].T), io["wav_decoded"])]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                    "official_parity.md"))
  args = parser.parse_args()
  rows = lm_rows() + codec_rows()
  load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
  lines = ["# Parity with the official PyTorch outputs (tiny fixtures, float32, CPU)", "",
           f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
           f"{jax.devices()[0].platform}; load: {load}", "",
           "`experiments/bench/official_parity.py`. Max |ours - official| over every value of "
           "each array the parity tests check, and the fraction of values that are bit-equal.", "",
           "| array | max abs diff | bit-equal | values |", "|---|---|---|---|"]
  lines += [f"| {name} | {diff:.2e} | {equal:.1%} | {n} |" for name, diff, equal, n in rows]
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)


if __name__ == "__main__":
  main()

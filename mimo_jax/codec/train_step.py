"""Jitted codec training steps (spec §1.6).

Axis letters: b batch, s samples, t frames (100 or 25 Hz as named), d model width, q RVQ stage.

Stage 1 ("unified representation learning"): encoder + decoder (with vocoder) trained by gradient
on L = a2t * L_A2T + recon * multi-scale mel L1 + commit * commitment, the report's loss with its
weights 10 / 1 / 1 when a2t = 10. L_A2T is the transcript's cross-entropy under the auxiliary
decoder (`codec.a2t`), which reads the quantised frames (straight-through, so its gradient reaches
the encoder) and is trained jointly; a2t = 0 leaves it out entirely (no auxiliary parameters, the
recon + commit step as it was). The RVQ codebooks learn by EMA inside the same step
(`rvq_train.train_quantize`), not by the optimizer.

Stage 2 ("adversarial fine-tuning"): encoder and RVQ frozen (they are not in any optimizer and are
returned as the very arrays that came in), decoder + vocoder trained on
L_G = recon * mel L1 + adv * hinge + fm * feature matching, and the discriminators by their own
optimizer on the hinge loss. Each step first updates the discriminators on the current
reconstructions, then the generator against the updated discriminators.

States are plain dicts (pytrees, checkpointed whole):
  stage 1: {"step", "codec", "opt"}                       (opt: over {"encoder", "decoder"})
           {"step", "codec", "a2t", "opt"} with A2T       (opt: over {"encoder", "decoder", "a2t"};
                                                           "a2t" is never exported)
  stage 2: {"step", "codec", "opt", "disc", "sn", "disc_opt"}  (opt: over the decoder)
Random draws (k-means init, dead-code replacement) use fold_in(key(seed), step): replicated on
every device and reproduced exactly after a resume.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mimo_jax.codec import a2t, discriminators, losses, mel, rvq_train
from mimo_jax.codec.config import CodecConfig
from mimo_jax.codec.decoder import decode_wav
from mimo_jax.codec.encoder import encode_features
from mimo_jax.codec.layers import valid_mask


@dataclasses.dataclass(frozen=True)
class LossWeights:
  recon: float = 1.0
  commit: float = 1.0
  adv: float = 1.0
  fm: float = 2.0
  a2t: float = 0.0  # the report's stage 1 uses 10; 0 trains without the auxiliary decoder


def encode_quantize(codec: dict, cfg: CodecConfig, ecfg: rvq_train.EmaConfig, wav_bs: jax.Array,
                    lengths_b: jax.Array, key: jax.Array, update: bool):
  """Waveforms [b, s] (valid lengths_b samples) -> (quantized [b, t25, d], 25 Hz lengths, codes,
  commitment, new quantizer, RVQ stats)."""
  half = cfg.nfft // 2
  rows_bs = jnp.pad(wav_bs, ((0, 0), (half, half)), mode="reflect")
  frames_b = mel.num_frames(cfg, lengths_b)
  mel_btm = mel.log_mel(cfg, rows_bs, frames_b)
  features_btd, lengths25_b = encode_features(codec["encoder"], cfg, mel_btm, frames_b)
  mask_bt = valid_mask(lengths25_b, features_btd.shape[1])[..., 0] > 0
  quantized_btd, codes_btq, commit, quantizer, stats = rvq_train.train_quantize(
      codec["quantizer"], cfg, features_btd, mask_bt, key, ecfg, update)
  return quantized_btd, lengths25_b, codes_btq, commit, quantizer, stats


def reconstruct(decoder: dict, cfg: CodecConfig, quantized_btd: jax.Array, lengths25_b: jax.Array,
                num_samples: int) -> jax.Array:
  """Decoded waveform cut to the input's length [b, num_samples] (the decoder emits
  t25 * samples_per_frame >= num_samples samples, aligned with the input)."""
  return decode_wav(decoder, cfg, quantized_btd, lengths25_b)[0][:, :num_samples]


def stage1_trainable(state: dict) -> dict:
  """What the stage-1 optimizer updates: encoder, decoder and, with A2T, the auxiliary decoder."""
  parts = {"encoder": state["codec"]["encoder"], "decoder": state["codec"]["decoder"]}
  return {**parts, "a2t": state["a2t"]} if "a2t" in state else parts


def init_stage1(codec: dict, tx: optax.GradientTransformation, a2t_params: dict | None = None
                ) -> dict:
  """The stage-1 state; `a2t_params` (the auxiliary decoder) only when A2T is on."""
  state = {"step": jnp.zeros((), jnp.int32), "codec": codec}
  if a2t_params is not None:
    state["a2t"] = a2t_params
  return {**state, "opt": tx.init(stage1_trainable(state))}


def init_stage2(codec: dict, tx: optax.GradientTransformation, disc: dict, sn: dict,
                disc_tx: optax.GradientTransformation) -> dict:
  return {"step": jnp.zeros((), jnp.int32), "codec": codec, "opt": tx.init(codec["decoder"]),
          "disc": disc, "sn": sn, "disc_opt": disc_tx.init(disc)}


def stage1_loss(trainable: dict, codec: dict, cfg: CodecConfig, ecfg: rvq_train.EmaConfig,
                weights: LossWeights, a2t_cfg: a2t.A2TConfig | None, batch: dict,
                key: jax.Array):
  """(total, (new quantizer, metrics)) of one stage-1 batch; A2T counts when `trainable` holds
  the auxiliary decoder ("a2t") and then reads batch["text"] and batch["text_lengths"]."""
  wav_bs, lengths_b = batch["wav"], batch["lengths"]
  quantized_btd, lengths25_b, _, commit, quantizer, stats = encode_quantize(
      {**codec, "encoder": trainable["encoder"]}, cfg, ecfg, wav_bs, lengths_b, key, True)
  recon_bs = reconstruct(trainable["decoder"], cfg, quantized_btd, lengths25_b, wav_bs.shape[1])
  mel_loss = losses.multiscale_mel_loss(cfg, recon_bs, wav_bs, lengths_b)
  total = weights.recon * mel_loss + weights.commit * commit
  metrics = {"mel": mel_loss, "commit": commit, **stats}
  if "a2t" in trainable:
    text_loss, accuracy = a2t.a2t_loss(trainable["a2t"], a2t_cfg, quantized_btd, lengths25_b,
                                       batch["text"], batch["text_lengths"])
    total = total + weights.a2t * text_loss
    metrics.update(a2t=text_loss, a2t_accuracy=accuracy)
  return total, (quantizer, {"loss": total, **metrics})


def make_stage1_step(cfg: CodecConfig, ecfg: rvq_train.EmaConfig,
                     tx: optax.GradientTransformation, weights: LossWeights = LossWeights(),
                     seed: int = 0, a2t_cfg: a2t.A2TConfig | None = None) -> Callable:
  """step(state, batch) -> (state, metrics); batch {"wav": [b, s] fp32, "lengths": [b] int32},
  plus {"text", "text_lengths"} (`codec.a2t`) when weights.a2t > 0 (state from init_stage1 with
  the auxiliary decoder's parameters)."""
  if weights.a2t > 0 and a2t_cfg is None:
    raise ValueError("make_stage1_step: an A2T weight needs the auxiliary decoder's a2t_cfg")

  def step(state, batch):
    if ("a2t" in state) != (weights.a2t > 0):
      raise ValueError(f"stage-1 step: A2T weight {weights.a2t} but the state "
                       f"{'holds' if 'a2t' in state else 'lacks'} the auxiliary decoder")
    key = jax.random.fold_in(jax.random.key(seed), state["step"])
    codec = state["codec"]
    trainable = stage1_trainable(state)
    (_, (quantizer, metrics)), grads = jax.value_and_grad(stage1_loss, has_aux=True)(
        trainable, codec, cfg, ecfg, weights, a2t_cfg, batch, key)
    updates, opt = tx.update(grads, state["opt"], trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = {**state, "step": state["step"] + 1, "opt": opt,
                 "codec": {**codec, "encoder": trainable["encoder"],
                           "decoder": trainable["decoder"], "quantizer": quantizer}}
    if "a2t" in trainable:
      new_state["a2t"] = trainable["a2t"]
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


def make_stage2_step(cfg: CodecConfig, ecfg: rvq_train.EmaConfig,
                     dcfg: discriminators.DiscConfig, tx: optax.GradientTransformation,
                     disc_tx: optax.GradientTransformation,
                     weights: LossWeights = LossWeights()) -> Callable:
  """step(state, batch) -> (state, metrics); encoder and quantizer pass through untouched."""

  def step(state, batch):
    wav_bs, lengths_b = batch["wav"], batch["lengths"]
    codec = state["codec"]
    # Frozen encoder + RVQ: the quantised features are constants of this step.
    quantized_btd, lengths25_b, _, _, _, stats = jax.lax.stop_gradient(encode_quantize(
        codec, cfg, ecfg, wav_bs, lengths_b, jax.random.key(0), False))
    generate = lambda decoder: reconstruct(decoder, cfg, quantized_btd, lengths25_b,
                                           wav_bs.shape[1])
    inside_bs = jnp.arange(wav_bs.shape[1])[None, :] < lengths_b[:, None]
    fake_bs = jax.lax.stop_gradient(generate(codec["decoder"])) * inside_bs

    def disc_loss_fn(disc):
      real_logits, _, sn = discriminators.discriminate(disc, state["sn"], dcfg, wav_bs)
      fake_logits, _, _ = discriminators.discriminate(disc, sn, dcfg, fake_bs)
      return losses.discriminator_hinge(real_logits, fake_logits), sn

    (d_loss, sn), d_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(state["disc"])
    d_updates, disc_opt = disc_tx.update(d_grads, state["disc_opt"], state["disc"])
    disc = optax.apply_updates(state["disc"], d_updates)
    _, real_features, _ = discriminators.discriminate(disc, sn, dcfg, wav_bs)

    def gen_loss_fn(decoder):
      recon_bs = generate(decoder)
      mel_loss = losses.multiscale_mel_loss(cfg, recon_bs, wav_bs, lengths_b)
      fake_logits, fake_features, _ = discriminators.discriminate(disc, sn, dcfg,
                                                                   recon_bs * inside_bs)
      adv = losses.generator_hinge(fake_logits)
      fm = losses.feature_matching(real_features, fake_features)
      total = weights.recon * mel_loss + weights.adv * adv + weights.fm * fm
      return total, {"loss": total, "mel": mel_loss, "adv": adv, "fm": fm}

    (_, metrics), grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(codec["decoder"])
    updates, opt = tx.update(grads, state["opt"], codec["decoder"])
    decoder = optax.apply_updates(codec["decoder"], updates)
    metrics.update(stats, disc_loss=d_loss, grad_norm=optax.tree.norm(grads),
                   disc_grad_norm=optax.tree.norm(d_grads))
    new_state = {"step": state["step"] + 1, "codec": {**codec, "decoder": decoder}, "opt": opt,
                 "disc": disc, "sn": sn, "disc_opt": disc_opt}
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)

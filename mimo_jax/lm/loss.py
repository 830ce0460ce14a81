"""The single next-token objective over the text channel and the 8 audio channels (spec §10).

Axis letters as in `model.py`; k indexes chunks of positions in the text loss (audio slots in
the audio loss, as in `model.py`). Everything is aligned to the predicting position: row p of a
`*_bp` target/weight array describes what position p predicts, i.e. position p + 1 (the last row
predicts nothing and has weight 0).

- Text: cross-entropy of `lm_head` at every position; targets that are `<|empty|>` weigh
  `empty_loss_weight`; normalised by the summed weights.
- Audio (phases with audio weights only): for each target position that is an audio patch, the
  teacher-forced patch decoder's cross-entropy per channel, averaged over that channel's cells.
- Total: the channel losses weighted by `LossConfig.weights`, divided by their sum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mimo_jax.config import LossConfig, MimoAudioConfig
from mimo_jax.lm import backbone, model


def _shift_to_predictor(x_bp: jax.Array, fill) -> jax.Array:
  """Row p takes row p + 1 (what position p predicts); the last row gets `fill`."""
  return jnp.concatenate([x_bp[:, 1:], jnp.full_like(x_bp[:, :1], fill)], axis=1)


def target_mask(batch: dict, n_positions: int) -> jax.Array:
  """[b, p] bool: position p has a target (the next position exists, is in p's segment, is not
  padding, and the batch's loss_mask keeps it)."""
  b = batch["input_ids"].shape[0]
  segment_bp = batch.get("segment_ids", jnp.ones((b, n_positions), jnp.int32))
  next_segment_bp = _shift_to_predictor(segment_bp, 0)
  keep_bp = (next_segment_bp == segment_bp) & (next_segment_bp != 0)
  if "loss_mask" in batch:
    keep_bp &= _shift_to_predictor(batch["loss_mask"].astype(bool), False)
  return keep_bp


def _token_stats(logits_nv: jax.Array, targets_n: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood and correctness of each target, in float32."""
  logits_nv = logits_nv.astype(jnp.float32)
  target_logit_n = jnp.take_along_axis(logits_nv, targets_n[..., None], axis=-1)[..., 0]
  nll_n = jax.nn.logsumexp(logits_nv, axis=-1) - target_logit_n
  return nll_n, jnp.argmax(logits_nv, axis=-1) == targets_n


def text_loss(params: dict, hidden_bpd: jax.Array, targets_bp: jax.Array, weights_bp: jax.Array,
              empty_id: int, chunk_size: int = 0) -> tuple[jax.Array, dict]:
  """Weighted text cross-entropy, computed in chunks of positions.

  Each chunk's logits are rematerialised in the backward pass, so at most one chunk of
  [b, chunk, vocab] float32 logits is alive at a time.
  """
  b, p, d = hidden_bpd.shape
  chunk = p if chunk_size <= 0 else min(chunk_size, p)
  pad = -p % chunk
  pad_positions = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  to_chunks = lambda x: jnp.moveaxis(pad_positions(x).reshape(b, -1, chunk, *x.shape[2:]), 1, 0)
  is_empty_bp = targets_bp == empty_id

  @jax.checkpoint
  def chunk_sums(h_bkd, targets_bk, weights_bk, is_empty_bk):
    nll_bk, correct_bk = _token_stats(backbone.text_logits(params, h_bkd), targets_bk)
    counted_bk = weights_bk > 0
    return jnp.stack([
        jnp.sum(nll_bk * weights_bk), jnp.sum(weights_bk),
        jnp.sum(correct_bk & counted_bk & ~is_empty_bk), jnp.sum(counted_bk & ~is_empty_bk),
        jnp.sum(correct_bk & counted_bk & is_empty_bk), jnp.sum(counted_bk & is_empty_bk)])

  def body(total_6, xs):
    return total_6 + chunk_sums(*xs), None

  xs = tuple(map(to_chunks, (hidden_bpd, targets_bp, weights_bp, is_empty_bp)))
  sums_6, _ = jax.lax.scan(body, jnp.zeros(6, jnp.float32), xs)
  loss = sums_6[0] / jnp.maximum(sums_6[1], 1e-9)
  return loss, {"text_loss": loss, "text_acc": sums_6[2] / jnp.maximum(sums_6[3], 1),
                "empty_acc": sums_6[4] / jnp.maximum(sums_6[5], 1)}


def corrupt_codes(codes_bpgc: jax.Array, noise_c: tuple[float, ...], cfg: MimoAudioConfig,
                  key: jax.Array) -> jax.Array:
  """Each code of channel c replaced with probability noise_c[c] by one drawn uniformly from
  that channel's codebook (the ids below its empty id); empty ids are left as they are."""
  replace_key, draw_key = jax.random.split(key)
  replace_bpgc = jax.random.bernoulli(replace_key, jnp.asarray(noise_c, jnp.float32),
                                      codes_bpgc.shape) & model.is_code(codes_bpgc, cfg)
  drawn_bpgc = jax.random.randint(draw_key, codes_bpgc.shape, 0,
                                  jnp.asarray(cfg.speech_zeroemb_idx), codes_bpgc.dtype)
  return jnp.where(replace_bpgc, drawn_bpgc, codes_bpgc)


def audio_losses(params: dict, cfg: MimoAudioConfig, hidden_bpd: jax.Array,
                 codes_bpgc: jax.Array, slots: model.AudioSlots,
                 dropout_key: jax.Array | None = None,
                 input_codes_bpgc: jax.Array | None = None) -> tuple[list, dict]:
  """Per-channel patch-decoder cross-entropy over the patches that positions predict; slots
  (`model.audio_slots` on the audio target positions) says where the patch decoder runs. The
  decoder is teacher-forced with input_codes_bpgc (default: the target codes codes_bpgc)."""
  g, c = cfg.group_size, cfg.audio_channels
  hidden_bkd = model.gather_slots(hidden_bpd, slots)
  b, k, _ = hidden_bkd.shape
  cond_nd = model.local_cond(params, cfg, hidden_bkd).reshape(b * k, -1)
  next_patch = lambda x_bpgc: model.gather_slots(_shift_to_predictor(x_bpgc, 0), slots).reshape(
      b * k, g, c)
  target_codes_ngc = next_patch(codes_bpgc)
  input_codes_ngc = target_codes_ngc if input_codes_bpgc is None else next_patch(input_codes_bpgc)
  logits = model.patch_decoder_logits(params, cfg, cond_nd, input_codes_ngc, dropout_key)
  cells_ngc = slots.keep_bk.reshape(b * k, 1, 1) & model.is_code(target_codes_ngc, cfg)
  losses, metrics = [], {}
  for ch, logits_ngv in enumerate(logits):
    nll_ng, correct_ng = _token_stats(logits_ngv, target_codes_ngc[..., ch])
    cells_ng = cells_ngc[..., ch]
    count = jnp.maximum(jnp.sum(cells_ng), 1)
    losses.append(jnp.sum(nll_ng * cells_ng) / count)
    metrics[f"audio_loss_c{ch}"] = losses[-1]
    metrics[f"audio_acc_c{ch}"] = jnp.sum(correct_ng & cells_ng) / count
  return losses, metrics


def loss(params: dict, cfg: MimoAudioConfig, loss_cfg: LossConfig, batch: dict,
         empty_id: int, dropout_key: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Total weighted loss and per-channel metrics for a batch.

  batch: `input_ids` [b, 1 + c, g * p]; optional `segment_ids` [b, p] (packed sequences, 0 =
  padding), `positions` [b, p] (restarting per segment), `loss_mask` [b, p] (which positions'
  tokens are targets, e.g. 0 over an SFT prompt). With no audio weight (phase `understanding`)
  the patch decoder is never run and its parameters are not read.

  dropout_key (training) turns on the local stacks' attention dropout (`local_attn_dropout`)
  and the noise on the codes the model reads (`loss_cfg.input_code_noise`); without it the loss
  is deterministic (evaluation).

  With `loss_cfg.audio_capacity` set, the patch encoder runs on at most that share of each
  sequence's positions (its audio inputs) and the patch decoder on as many (its audio targets);
  audio positions past the capacity are dropped as MaxText drops tokens past an expert's
  capacity: a dropped input adds no patch embedding, a dropped target is not trained, and the
  metrics `audio_dropped_inputs` / `audio_dropped_targets` count them per (micro-)batch.
  """
  weights = loss_cfg.weights
  if len(weights) != 1 + cfg.audio_channels:
    raise ValueError(f"channel_weights: needs 1 + {cfg.audio_channels} entries, got {weights}")
  noise = loss_cfg.input_code_noise
  if noise is not None and len(noise) != cfg.audio_channels:
    raise ValueError(f"input_code_noise: needs {cfg.audio_channels} entries, got {noise}")
  text_bp, codes_bpgc = model.split_channels(batch["input_ids"], cfg)
  input_ids, input_codes_bpgc = batch["input_ids"], codes_bpgc
  encoder_key, decoder_key = (None, None) if dropout_key is None else jax.random.split(dropout_key)
  if dropout_key is not None and noise is not None:
    # A key of its own, so that runs without noise keep their dropout keys.
    noise_key = jax.random.fold_in(dropout_key, 1)
    input_codes_bpgc = corrupt_codes(codes_bpgc, noise, cfg, noise_key)
    input_ids = model.with_codes(input_ids, input_codes_bpgc)
  capacity = loss_cfg.audio_capacity
  input_slots = model.audio_slots(text_bp == empty_id, capacity)
  hidden_bpd = model.forward(params, cfg, input_ids, empty_id,
                             positions_bp=batch.get("positions"),
                             segment_ids_bp=batch.get("segment_ids"), dropout_key=encoder_key,
                             slots=input_slots)
  has_target_bp = target_mask(batch, text_bp.shape[1])
  targets_bp = _shift_to_predictor(text_bp, 0)
  text_weights_bp = has_target_bp * jnp.where(targets_bp == empty_id, loss_cfg.empty_loss_weight,
                                              1.0)
  text, metrics = text_loss(params, hidden_bpd, targets_bp, text_weights_bp, empty_id,
                            loss_cfg.text_chunk_size)
  channel_losses = [text]
  if loss_cfg.trains_audio:
    target_slots = model.audio_slots(has_target_bp & (targets_bp == empty_id), capacity)
    audio, audio_metrics = audio_losses(params, cfg, hidden_bpd, codes_bpgc, target_slots,
                                        decoder_key, input_codes_bpgc)
    channel_losses += audio
    metrics.update(audio_metrics)
    if capacity > 0:
      metrics["audio_dropped_targets"] = target_slots.dropped
  if capacity > 0:
    metrics["audio_dropped_inputs"] = input_slots.dropped
  used = [(w, l) for w, l in zip(weights, channel_losses) if w > 0]
  total = sum(w * l for w, l in used) / sum(w for w, _ in used)
  metrics["loss"] = total
  return total, metrics

"""MiMo-Audio: the patch encoder, the Qwen2 backbone and the delayed patch decoder.

Axis letters: b batch, p LLM positions (one text token or one audio patch each), g frames of a
patch (group_size = 4), c audio channels (RVQ codebooks), s delayed decoder steps (g + max delay),
n patches flattened over batch and positions, k audio slots of a sequence (see `AudioSlots`),
d widths, v vocabularies.

A batch holds `input_ids` in the official [b, 1 + c, g * p] layout (spec §2.2): row 0 carries the
text token of position p at column g * p; rows 1..c carry the g frames of patch p. Positions whose
text token is `<|empty|>` are audio patches; all others are text.

Params mirror the official module tree (`model.*`, `lm_head`, `input_local_transformer.*`,
`local_transformer.*`, `speech_embeddings.N`, `local_transformer_lm_heads.N`,
`speech_group_downcast`, `hidden_states_downcast`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax import sharding
from mimo_jax.config import MimoAudioConfig
from mimo_jax.lm import backbone
from mimo_jax.nn.params import ParamSpec
from mimo_jax.nn.stack import stack_forward, stack_param_specs


def param_specs(cfg: MimoAudioConfig) -> dict:
  enc, dec, g = cfg.patch_encoder, cfg.patch_decoder, cfg.group_size
  specs = backbone.param_specs(cfg)
  specs.update(
      input_local_transformer=stack_param_specs(enc),
      local_transformer=stack_param_specs(dec),
      # The tables are shared: the patch encoder reads them, the patch decoder feeds them back.
      speech_embeddings=[{"embedding": ParamSpec((v, enc.d_model), ("audio_vocab", "embed"))}
                         for v in cfg.speech_vocab_size],
      local_transformer_lm_heads=[{"kernel": ParamSpec((dec.d_model, v), ("embed", "audio_vocab"))}
                                  for v in cfg.speech_vocab_size],
      speech_group_downcast={"kernel": ParamSpec((g * enc.d_model, cfg.hidden_size),
                                                 ("mlp", "embed"))},
      hidden_states_downcast={"kernel": ParamSpec((cfg.hidden_size, dec.d_model),
                                                  ("embed", "mlp"))},
  )
  if enc.d_model != dec.d_model:  # the official model adds this projection only then
    specs["speech_embeddings_to_local"] = {"kernel": ParamSpec((enc.d_model, dec.d_model),
                                                               ("embed", "mlp"))}
  return specs


def split_channels(input_ids_bcl: jax.Array, cfg: MimoAudioConfig) -> tuple[jax.Array, jax.Array]:
  """[b, 1 + c, g * p] -> text tokens [b, p] and codes [b, p, g, c]."""
  b, _, length = input_ids_bcl.shape
  g, c = cfg.group_size, cfg.audio_channels
  text_bp = input_ids_bcl[:, 0, ::g]
  codes_bpgc = input_ids_bcl[:, 1:, :].reshape(b, c, length // g, g).transpose(0, 2, 3, 1)
  return text_bp, codes_bpgc


def with_codes(input_ids_bcl: jax.Array, codes_bpgc: jax.Array) -> jax.Array:
  """input_ids with its audio rows replaced by codes [b, p, g, c] (the inverse of
  split_channels for those rows)."""
  b, c, length = input_ids_bcl.shape[0], codes_bpgc.shape[-1], input_ids_bcl.shape[-1]
  rows_bcl = codes_bpgc.transpose(0, 3, 1, 2).reshape(b, c, length)
  return jnp.concatenate([input_ids_bcl[:, :1], rows_bcl.astype(input_ids_bcl.dtype)], axis=1)


def speech_embedding_sum(params: dict, codes_ngc: jax.Array, keep_ngc: jax.Array,
                         cfg: MimoAudioConfig, accum_dtype=None) -> jax.Array:
  """Sum over channels (in channel order) of each kept channel's code embedding: [..., c] ->
  [..., d], accumulated in accum_dtype (default: the compute dtype)."""
  total = jnp.zeros((), accum_dtype or cfg.dtype)
  for ch, table in enumerate(params["speech_embeddings"]):
    emb = jnp.take(table["embedding"], codes_ngc[..., ch], axis=0).astype(cfg.dtype)
    total = (total + jnp.where(keep_ngc[..., ch, None], emb, 0)).astype(total.dtype)
  return total


def is_code(codes_ngc: jax.Array, cfg: MimoAudioConfig) -> jax.Array:
  """False where a channel holds its empty id. The official model masks those rather than
  trusting the (padding) table rows to be zero."""
  return codes_ngc != jnp.asarray(cfg.speech_zeroemb_idx, codes_ngc.dtype)


class AudioSlots(NamedTuple):
  """Where the audio-only stacks (patch encoder, patch decoder and their heads) run.

  index_bk: the position held by each of a sequence's k slots, or None for every position in
  place (k = p, today's masked path); keep_bk: which slots hold an audio position; dropped:
  audio positions past the capacity, which the stacks do not run (float32, for the metrics).
  """
  index_bk: jax.Array | None
  keep_bk: jax.Array
  dropped: jax.Array


def audio_capacity(positions: int, fraction: float) -> int:
  """Slots per sequence for a capacity given as a fraction of its positions (0: none set, every
  position has a slot)."""
  return positions if fraction <= 0 else min(positions, math.ceil(fraction * positions))


def audio_slots(is_audio_bp: jax.Array, fraction: float) -> AudioSlots:
  """The first audio_capacity(p, fraction) audio positions of each sequence, in order; as in
  MaxText's token dropping, the positions past the capacity are not run and are counted."""
  if fraction <= 0:
    return AudioSlots(None, is_audio_bp, jnp.zeros((), jnp.float32))
  k = audio_capacity(is_audio_bp.shape[1], fraction)
  index_bk = jax.vmap(lambda row: jnp.nonzero(row, size=k, fill_value=0)[0])(is_audio_bp)
  count_b = jnp.sum(is_audio_bp, axis=1)
  keep_bk = jnp.arange(k)[None, :] < count_b[:, None]
  return AudioSlots(index_bk, keep_bk, jnp.sum(jnp.maximum(count_b - k, 0)).astype(jnp.float32))


def gather_slots(x_bp: jax.Array, slots: AudioSlots) -> jax.Array:
  """[b, p, ...] -> [b, k, ...]; per sequence, so a batch-sharded array stays where it is."""
  if slots.index_bk is None:
    return x_bp
  index = slots.index_bk.reshape(slots.index_bk.shape + (1,) * (x_bp.ndim - 2))
  return jnp.take_along_axis(x_bp, index, axis=1)


def scatter_slots(x_bk: jax.Array, slots: AudioSlots, positions: int) -> jax.Array:
  """[b, k, ...] -> [b, p, ...], zero where no slot is. x_bk must be zero in slots that keep
  nothing: those all point at position 0, hence an add rather than a set."""
  if slots.index_bk is None:
    return x_bk
  b = x_bk.shape[0]
  rows_b1 = jnp.arange(b)[:, None]
  return jnp.zeros((b, positions) + x_bk.shape[2:], x_bk.dtype).at[rows_b1, slots.index_bk].add(
      x_bk)


def input_embeds(params: dict, cfg: MimoAudioConfig, input_ids_bcl: jax.Array,
                 empty_id: int, dropout_key: jax.Array | None = None,
                 slots: AudioSlots | None = None) -> jax.Array:
  """Backbone input [b, p, d]: text embedding at text positions, encoded patch at audio ones.
  dropout_key (training) turns on the patch encoder's attention dropout. slots (from
  `audio_slots` on the audio positions) runs the patch encoder on those slots only; by default
  it runs on every position and text positions are masked."""
  text_bp, codes_bpgc = split_channels(input_ids_bcl, cfg)
  b, p, g, _ = codes_bpgc.shape
  is_audio_bp = text_bp == empty_id
  slots = audio_slots(is_audio_bp, 0.0) if slots is None else slots
  codes_bkgc = gather_slots(codes_bpgc, slots)
  keep_bk11 = slots.keep_bk[:, :, None, None]
  k = codes_bkgc.shape[1]
  official_dtype = jnp.bfloat16 if cfg.official_bf16_speech_sum else None
  frames_bkgd = speech_embedding_sum(params, codes_bkgc, is_code(codes_bkgc, cfg), cfg,
                                     accum_dtype=official_dtype)
  frames_bkgd = jnp.where(keep_bk11, frames_bkgd, 0)
  encoded_ngd, _ = stack_forward(params["input_local_transformer"],
                                 frames_bkgd.reshape(b * k, g, -1), cfg.patch_encoder,
                                 torch_input_dtype=official_dtype, dropout_key=dropout_key)
  encoded_bkgd = jnp.where(keep_bk11, encoded_ngd.reshape(b, k, g, -1), 0)
  # Frame-major concatenation of the g frame vectors, as the official view(b, p, -1).
  patch_bkd = jnp.einsum("bke,ed->bkd", encoded_bkgd.reshape(b, k, -1),
                         params["speech_group_downcast"]["kernel"].astype(cfg.dtype))
  patch_bpd = scatter_slots(patch_bkd, slots, p)
  text_bpd = jnp.where(is_audio_bp[..., None], 0, backbone.embed_tokens(params, text_bp, cfg))
  return sharding.constrain(text_bpd + patch_bpd, ("batch", "length", "activation_embed"))


def forward(params: dict, cfg: MimoAudioConfig, input_ids_bcl: jax.Array, empty_id: int, *,
            positions_bp: jax.Array | None = None,
            segment_ids_bp: jax.Array | None = None,
            dropout_key: jax.Array | None = None,
            slots: AudioSlots | None = None) -> jax.Array:
  """Backbone hidden states [b, p, d]. Row p drives the prediction of position p + 1: its text
  token through `backbone.text_logits`, its patch through `local_cond` + the patch decoder.
  dropout_key and slots as in `input_embeds` (the backbone itself has no dropout)."""
  x_bpd = input_embeds(params, cfg, input_ids_bcl, empty_id, dropout_key, slots)
  hidden_bpd, _ = backbone.hidden_states(params, cfg, embeds_btd=x_bpd, positions_bt=positions_bp,
                                         segment_ids_bt=segment_ids_bp)
  return hidden_bpd


def local_cond(params: dict, cfg: MimoAudioConfig, hidden_bpd: jax.Array) -> jax.Array:
  """The patch decoder's step-0 input [b, p, d_local]."""
  return jnp.einsum("bpd,de->bpe", hidden_bpd,
                    params["hidden_states_downcast"]["kernel"].astype(cfg.dtype))


def delay_schedule(cfg: MimoAudioConfig) -> tuple[np.ndarray, np.ndarray]:
  """Which frame each channel emits at each decoder step: frame_sc [s, c] and valid_sc [s, c].

  Channel r emits frame t - delay_r at step t while 0 <= t - delay_r < g (spec §3.4).
  """
  steps = cfg.group_size + max(cfg.delay_pattern)
  frame_sc = np.arange(steps)[:, None] - np.asarray(cfg.delay_pattern)[None, :]
  valid_sc = (frame_sc >= 0) & (frame_sc < cfg.group_size)
  return frame_sc, valid_sc


def decoder_inputs(params: dict, cfg: MimoAudioConfig, local_cond_nd: jax.Array,
                   codes_ngc: jax.Array) -> jax.Array:
  """Teacher-forced patch-decoder inputs [n, s, d_local] for patches with known codes.

  Step 0 reads the conditioning vector; step t + 1 reads the sum of the embeddings of the codes
  emitted at step t (the same tables the patch encoder reads).
  """
  frame_sc, valid_sc = delay_schedule(cfg)
  delayed_nsc = codes_ngc[:, np.clip(frame_sc, 0, cfg.group_size - 1),
                          np.arange(cfg.audio_channels)]
  emitted_nsd = speech_embedding_sum(params, delayed_nsc, np.broadcast_to(
      valid_sc, delayed_nsc.shape), cfg)
  if "speech_embeddings_to_local" in params:
    emitted_nsd = jnp.einsum("nse,ed->nsd", emitted_nsd,
                             params["speech_embeddings_to_local"]["kernel"].astype(cfg.dtype))
  return jnp.concatenate([local_cond_nd[:, None].astype(cfg.dtype), emitted_nsd[:, :-1]], axis=1)


def patch_decoder_logits(params: dict, cfg: MimoAudioConfig, local_cond_nd: jax.Array,
                         codes_ngc: jax.Array,
                         dropout_key: jax.Array | None = None) -> list[jax.Array]:
  """Teacher-forced patch decoder: per channel, logits [n, g, v_c] (fp32) for each frame.

  Channel r's frame f is read at step f + delay_r. One causal pass over all steps equals the
  official step-by-step decoding with a fresh cache per patch. dropout_key (training) turns on
  the decoder's attention dropout.
  """
  steps_nsd = decoder_inputs(params, cfg, local_cond_nd, codes_ngc)
  out_nsd, _ = stack_forward(params["local_transformer"], steps_nsd, cfg.patch_decoder,
                             dropout_key=dropout_key)
  logits = []
  for head, delay in zip(params["local_transformer_lm_heads"], cfg.delay_pattern):
    out_ngd = out_nsd[:, delay:delay + cfg.group_size]
    logits.append(jnp.einsum("ngd,dv->ngv", out_ngd, head["kernel"].astype(cfg.dtype),
                             preferred_element_type=jnp.float32))
  return logits


def mask_empty_code(logits_ngv: jax.Array, channel: int, cfg: MimoAudioConfig) -> jax.Array:
  """Logits of one channel's head with its empty id made unsamplable (official local sampler)."""
  return jnp.asarray(logits_ngv).at[..., cfg.speech_zeroemb_idx[channel]].set(-jnp.inf)

"""Batched generation: prefill, then one LLM step per patch, the delayed patch decoder inside.

Axis letters: b batch rows, k layout rows (1 + c), l layout columns (g * positions), p prompt
positions, n generated steps, g frames of a patch, c audio channels, s patch-decoder steps
(g + max delay), d widths, v vocabularies.

The official `slm_sample` runs one sequence with Python loops; here the whole loop is two jitted
functions over static shapes, one compilation per (batch, prompt bucket, step bucket):

- `prefill` runs the left-padded prompts through the model into a preallocated KV cache (row b's
  real positions are 0..len_b-1 and its padding has segment 0, which no real token attends to);
- `decode` runs LLM steps in a `lax.while_loop` until a step bound or until every row is done.
  One step samples the text token from `lm_head`; rows whose token is `<|empty|>` get a patch from
  the patch decoder (`decode_patch`: its g + max(delay) steps in a `lax.scan` with its own KV
  cache, skipped by `lax.cond` when no row needs a patch); text and patch are written to the
  output and fed back through the patch encoder and the backbone. A row given the text of the
  stream it opened (`Request.given_text`, TTS) has that text imposed on the stream's chunk
  schedule and samples only where the layout leaves a choice: patch or next token, patch or stop.

A row stops after a token of its stop set once it has made `min_new` steps (stop tokens are
banned before that, as the official sampler does) or after `max_new` steps; a stopped row's
later columns keep the layout's filler text and empty audio ids. `decode` can be called again on
its result with a higher bound, which is how the streaming iterator advances.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.config import MimoAudioConfig
from mimo_jax.lm import backbone, model
from mimo_jax.lm.layout import FILLER, SpecialTokens
from mimo_jax.lm.sampling import SamplerConfig, SamplerParams, sample
from mimo_jax.nn.attention import KVCache
from mimo_jax.nn.stack import init_cache, stack_forward


class Settings(NamedTuple):
  """Per-row controls of a decode, all arrays (changing them never recompiles)."""

  text: SamplerParams  # the global (text-channel) sampler
  audio: SamplerParams  # the local (patch-decoder) sampler
  stop_bs: jax.Array  # int32 [b, S]: stop token ids, -1 = unused slot
  min_new_b: jax.Array  # int32 [b]: stop tokens are banned before this many steps
  max_new_b: jax.Array  # int32 [b]: at most this many steps (<= the buffer's n)
  forced_bn: jax.Array  # int32 [b, n]: text token to emit at each step instead of sampling; -1 = sample
  given_bn: jax.Array  # int32 [b, n]: text of the stream a row speaks as given (-1 padded)
  given_len_b: jax.Array  # int32 [b]: its length (0: the row generates its stream freely)
  chunks_b2: jax.Array  # int32 [b, 2]: text tokens and patches per chunk of a stream


class GivenProgress(NamedTuple):
  """Where each row is in a stream whose text is given (`Request.given_text`)."""

  pos_b: jax.Array  # int32 [b]: next token of the given text
  fill_b: jax.Array  # int32 [b]: positions of the current chunk made (its text, then its patches)
  audio_ended_b: jax.Array  # bool [b]: text came where a patch could: the audio is over


class State(NamedTuple):
  """Everything a decode carries between steps (and between `decode` calls)."""

  cache: KVCache  # the backbone's, p + n slots
  hidden_bd: jax.Array  # last backbone hidden state: drives the next step
  step: jax.Array  # int32 scalar: steps taken (the same for every row)
  positions_b: jax.Array  # int32 [b]: position of each row's next token
  done_b: jax.Array  # bool [b]
  n_new_b: jax.Array  # int32 [b]: steps each row took before it stopped
  stopped_b: jax.Array  # bool [b]: the row ended on a stop token (not on max_new)
  cache_full_b: jax.Array  # bool [b]: the row was ended because the KV cache had no free slot
  given: GivenProgress
  text_bn: jax.Array  # int32 [b, n]: generated text tokens (FILLER after a row stops)
  codes_bngc: jax.Array  # int32 [b, n, g, c]: generated patches (empty ids where none)
  keys_b: jax.Array  # PRNG keys, one per row
  text_logits_bnv: jax.Array | None  # fp32 [b, n, v] when recorded (parity tests)
  local_logits: tuple | None  # per channel fp32 [b, n, g, v_c] when recorded


def _fold(keys_b: jax.Array, data) -> jax.Array:
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_b, data)


def _id_mask(ids_bs: jax.Array, v: int, when_b: jax.Array) -> jax.Array:
  """[b, v] mask of the ids in ids_bs (-1 = none), only for rows where when_b holds."""
  rows_bs = jnp.broadcast_to(jnp.arange(ids_bs.shape[0])[:, None], ids_bs.shape)
  cols_bs = jnp.where(ids_bs >= 0, ids_bs, v)  # out of range: dropped
  return jnp.zeros((ids_bs.shape[0], v), bool).at[rows_bs, cols_bs].set(
      jnp.broadcast_to(when_b[:, None], ids_bs.shape), mode="drop")


def patch_heads(params: dict, cfg: MimoAudioConfig) -> jax.Array:
  """The c audio heads as one [d, c * v] matrix, each padded to the widest vocabulary v.

  Built once per decode, outside its loops: stacked inside the patch decoder's scan as
  [c, d, v], XLA re-laid it out for the dot (a copy of the whole matrix) at every step, which
  cost more than the rest of the step on the tiny model.
  """
  v = max(cfg.speech_vocab_size)
  return jnp.concatenate([jnp.pad(h["kernel"].astype(cfg.dtype),
                                  ((0, 0), (0, v - h["kernel"].shape[1])))
                          for h in params["local_transformer_lm_heads"]], axis=1)


def _emitting(cfg: MimoAudioConfig) -> tuple[np.ndarray, np.ndarray]:
  """The channels that emit a frame at each patch-decoder step, padded with c to the most at
  any step (g for the official delays): chan_sw [s, w], and for each channel its g slots as
  (step, slot) pairs slot_cg2 [c, g, 2]."""
  _, valid_sc = model.delay_schedule(cfg)
  steps, c = valid_sc.shape
  chan_sw = np.full((steps, int(valid_sc.sum(1).max())), c, np.int32)
  slot_cg2 = np.zeros((c, cfg.group_size, 2), np.int32)
  for t in range(steps):
    emitting = np.flatnonzero(valid_sc[t])
    chan_sw[t, :len(emitting)] = emitting
    for j, ch in enumerate(emitting):
      slot_cg2[ch, t - cfg.delay_pattern[ch]] = t, j
  return chan_sw, slot_cg2


def decode_patch(params: dict, cfg: MimoAudioConfig, cond_bd: jax.Array, keys_b: jax.Array,
                 sp: SamplerParams, heads_dn: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array, tuple]:
  """One patch per row from the patch decoder's delayed steps (spec §3.4).

  heads_dn: `patch_heads(params, cfg)`, passed in by a caller that decodes many patches.
  Returns the un-delayed codes [b, g, c], the codes as emitted [s, b, c] (channel r holds frame
  t - delay_r at step t and its empty id outside its g steps) and each channel's logits
  [b, g, v_c] (fp32, raw) at the steps it emitted. Empty ids are never sampled.
  """
  b = cond_bd.shape[0]
  g, c = cfg.group_size, cfg.audio_channels
  _, valid_sc = model.delay_schedule(cfg)
  chan_sw, slot_cg2 = _emitting(cfg)
  steps, w = chan_sw.shape
  vocab_c = np.asarray(cfg.speech_vocab_size)
  empty_c = jnp.asarray(cfg.speech_zeroemb_idx, jnp.int32)
  # The c heads padded to the widest vocabulary; at each step only the w channels that emit
  # (4 of 8 with the official delays) are sampled, as one [b * w, v] batch. Padded ids are -inf
  # before the filters, so each channel's top-k / top-p see its own vocabulary only, and the
  # empty ids are banned after them. A padding slot (index c) samples channel c - 1 in vain.
  v = int(vocab_c.max())
  if heads_dn is None:
    heads_dn = patch_heads(params, cfg)
  outside_cv = np.arange(v)[None, :] >= vocab_c[:, None]
  banned_cv = np.arange(v)[None, :] == np.asarray(cfg.speech_zeroemb_idx)[:, None]
  sp_n = SamplerParams(*(jnp.repeat(jnp.asarray(x), w) for x in sp))
  # Every step's keys at once (one batched hash instead of one per step): step t, channel ch
  # draws with fold_in(keys_b, t * c + ch).
  keys_sbw = jax.vmap(lambda t, chan_w: jax.vmap(lambda ch: _fold(keys_b, t * c + ch),
                                                 out_axes=1)(chan_w))(
      jnp.arange(steps), jnp.minimum(chan_sw, c - 1))

  def body(carry, xs):
    t, chan_w, keys_bw = xs
    x_bd, cache = carry
    out_b1d, cache = stack_forward(params["local_transformer"], x_bd[:, None], cfg.patch_decoder,
                                   positions_bt=jnp.full((b, 1), t, jnp.int32), cache=cache)
    logits_bcv = jnp.einsum("bd,dn->bn", out_b1d[:, 0], heads_dn,
                            preferred_element_type=jnp.float32).reshape(b, c, v)
    read_w = jnp.minimum(chan_w, c - 1)
    logits_bwv = jnp.where(jnp.asarray(outside_cv)[read_w], -jnp.inf, logits_bcv[:, read_w])
    tokens_n = sample(keys_bw.reshape(-1), logits_bwv.reshape(b * w, v), sp_n,
                      jnp.broadcast_to(jnp.asarray(banned_cv)[read_w], (b, w, v)).reshape(b * w, v))
    tokens_bc = jnp.broadcast_to(empty_c, (b, c)).at[:, chan_w].set(tokens_n.reshape(b, w),
                                                                     mode="drop")
    valid_c = jnp.asarray(valid_sc)[t]
    # The next step reads the sum of the embeddings of the codes emitted now (shared tables).
    x_bd = model.speech_embedding_sum(params, tokens_bc, jnp.broadcast_to(valid_c, (b, c)), cfg)
    if "speech_embeddings_to_local" in params:
      x_bd = jnp.einsum("be,ed->bd", x_bd,
                        params["speech_embeddings_to_local"]["kernel"].astype(cfg.dtype))
    return (x_bd, cache), (tokens_bc, logits_bwv)

  cache = init_cache(cfg.patch_decoder, b, steps)
  _, (delayed_sbc, logits_sbwv) = jax.lax.scan(body, (cond_bd.astype(cfg.dtype), cache),
                                               (jnp.arange(steps), jnp.asarray(chan_sw), keys_sbw))
  codes_bgc = jnp.stack([delayed_sbc[d:d + g, :, ch].T
                         for ch, d in enumerate(cfg.delay_pattern)], axis=-1)
  logits = tuple(jnp.moveaxis(logits_sbwv[slot_cg2[ch, :, 0], :, slot_cg2[ch, :, 1], :vocab_c[ch]],
                              0, 1)
                 for ch in range(c))
  return codes_bgc, delayed_sbc, logits


def _feed(params: dict, cfg: MimoAudioConfig, empty_id: int, ids_bkl: jax.Array,
          positions_bp: jax.Array, segments_bp: jax.Array,
          cache: KVCache) -> tuple[jax.Array, KVCache]:
  """Appends positions to the cache; returns the last position's hidden state [b, d]."""
  x_bpd = model.input_embeds(params, cfg, ids_bkl, empty_id)
  hidden_bpd, cache = backbone.hidden_states(params, cfg, embeds_btd=x_bpd,
                                             positions_bt=positions_bp,
                                             segment_ids_bt=segments_bp, cache=cache)
  return hidden_bpd[:, -1], cache


@functools.partial(jax.jit, static_argnames=("cfg", "empty_id", "max_new", "record_logits"))
def prefill(params: dict, cfg: MimoAudioConfig, prompt_bkl: jax.Array, prompt_len_b: jax.Array,
            keys_b: jax.Array, *, empty_id: int, max_new: int,
            record_logits: bool = False) -> State:
  """Runs left-padded prompts [b, 1 + c, g * p] (row b's last prompt_len_b positions are real)
  into a fresh cache of p + max_new slots."""
  b, _, length = prompt_bkl.shape
  g, c = cfg.group_size, cfg.audio_channels
  p = length // g
  pad_b = p - prompt_len_b
  positions_bp = jnp.maximum(jnp.arange(p)[None, :] - pad_b[:, None], 0).astype(jnp.int32)
  segments_bp = (jnp.arange(p)[None, :] >= pad_b[:, None]).astype(jnp.int32)
  cache = backbone.init_cache(cfg, b, p + max_new)
  hidden_bd, cache = _feed(params, cfg, empty_id, prompt_bkl, positions_bp, segments_bp, cache)
  empty_c = jnp.asarray(cfg.speech_zeroemb_idx, jnp.int32)
  recorded = None, None
  if record_logits:
    recorded = (jnp.zeros((b, max_new, cfg.vocab_size), jnp.float32),
                tuple(jnp.zeros((b, max_new, g, v), jnp.float32) for v in cfg.speech_vocab_size))
  return State(cache=cache, hidden_bd=hidden_bd, step=jnp.zeros((), jnp.int32),
               positions_b=prompt_len_b.astype(jnp.int32), done_b=jnp.zeros((b,), bool),
               n_new_b=jnp.zeros((b,), jnp.int32), stopped_b=jnp.zeros((b,), bool),
               cache_full_b=jnp.zeros((b,), bool),
               given=GivenProgress(jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.int32),
                                   jnp.zeros((b,), bool)),
               text_bn=jnp.full((b, max_new), FILLER, jnp.int32),
               codes_bngc=jnp.broadcast_to(empty_c, (b, max_new, g, c)),
               keys_b=keys_b, text_logits_bnv=recorded[0], local_logits=recorded[1])


def _given_slot(settings: Settings, progress: GivenProgress):
  """Per row: speaks a given text, has text left, is at a text slot of the layout (the chunk's
  text, or anywhere once the audio is over), and the next given token."""
  given_b = settings.given_len_b > 0
  text_left_b = progress.pos_b < settings.given_len_b
  text_slot_b = (progress.fill_b < settings.chunks_b2[:, 0]) | progress.audio_ended_b
  last = settings.given_bn.shape[1] - 1
  next_b = jnp.take_along_axis(settings.given_bn, jnp.minimum(progress.pos_b, last)[:, None],
                               axis=1)[:, 0]
  return given_b, text_left_b, text_slot_b, next_b


def _given_choices(settings: Settings, progress: GivenProgress, empty_id: int, v: int):
  """A given stream follows the layout's chunk schedule (`layout.StreamSegment`): the given text
  fills each chunk's text slots; at a patch slot the model chooses between a patch and the next
  text token (the audio is over: the rest of the text follows at once); after the text, between
  a patch and a stop token until the audio is over, then a stop. Only the audio's length is the
  model's. Returns the imposed token per row (-1: none), which rows choose, and among what [b, v]."""
  given_b, text_left_b, text_slot_b, next_b = _given_slot(settings, progress)
  imposed_b = jnp.where(given_b & text_left_b & text_slot_b, next_b, -1)
  patch_or_text_b = given_b & text_left_b & ~text_slot_b
  after_text_b = given_b & ~text_left_b
  patch_or_stop_b = after_text_b & ~progress.audio_ended_b
  rows_b = jnp.arange(len(next_b))
  allowed_bv = _id_mask(settings.stop_bs, v, after_text_b)
  allowed_bv = allowed_bv.at[:, empty_id].set(patch_or_text_b | patch_or_stop_b)
  allowed_bv = allowed_bv.at[rows_b, next_b].set(allowed_bv[rows_b, next_b] | patch_or_text_b)
  return imposed_b, patch_or_text_b | after_text_b, allowed_bv


def _given_advance(settings: Settings, progress: GivenProgress, token_b: jax.Array,
                   active_b: jax.Array, empty_id: int) -> GivenProgress:
  given_b, text_left_b, text_slot_b, _ = _given_slot(settings, progress)
  given_b &= active_b
  wrote_text_b = token_b != empty_id
  return GivenProgress(
      pos_b=progress.pos_b + (given_b & text_left_b & wrote_text_b),
      fill_b=jnp.where(given_b, (progress.fill_b + 1) % settings.chunks_b2.sum(axis=1),
                       progress.fill_b),
      audio_ended_b=progress.audio_ended_b | (given_b & text_left_b & ~text_slot_b
                                              & wrote_text_b))


def _step(params: dict, heads_dn: jax.Array, cfg: MimoAudioConfig, empty_id: int,
          wrap_cache: bool, settings: Settings, state: State) -> State:
  b = state.hidden_bd.shape[0]
  g, c = cfg.group_size, cfg.audio_channels
  rows_b = jnp.arange(b)
  # Each row counts its own steps (a row put into a serving slot starts at 0 while the others
  # go on); rows that started together share the count, as the batch's step.
  step_b = state.n_new_b
  keys_b = jax.vmap(jax.random.fold_in)(state.keys_b, step_b)
  logits_bv = backbone.text_logits(params, state.hidden_bd[:, None])[:, 0]
  v = logits_bv.shape[-1]
  imposed_b, choosing_b, allowed_bv = _given_choices(settings, state.given, empty_id, v)
  banned_bv = jnp.where(choosing_b[:, None], ~allowed_bv,
                        _id_mask(settings.stop_bs, v, step_b < settings.min_new_b))
  token_b = sample(_fold(keys_b, 0), logits_bv, settings.text, banned_bv)
  last = settings.forced_bn.shape[1] - 1
  forced_b = settings.forced_bn[rows_b, jnp.minimum(step_b, last)]
  token_b = jnp.where(forced_b >= 0, forced_b, jnp.where(imposed_b >= 0, imposed_b, token_b))
  active_b = ~state.done_b
  patch_b = active_b & (token_b == empty_id)

  cond_bd = model.local_cond(params, cfg, state.hidden_bd[:, None])[:, 0]
  empty_c = jnp.asarray(cfg.speech_zeroemb_idx, jnp.int32)

  def run_decoder(_):
    codes_bgc, _, logits = decode_patch(params, cfg, cond_bd, _fold(keys_b, 1), settings.audio,
                                        heads_dn)
    return codes_bgc, logits

  def skip_decoder(_):
    return (jnp.broadcast_to(empty_c, (b, g, c)),
            tuple(jnp.zeros((b, g, v), jnp.float32) for v in cfg.speech_vocab_size))

  codes_bgc, local_logits = jax.lax.cond(jnp.any(patch_b), run_decoder, skip_decoder, None)
  codes_bgc = jnp.where(patch_b[:, None, None], codes_bgc, empty_c)

  def write(buf, new, keep_b):  # row b's entry at its step, where keep_b (else out of range)
    return buf.at[rows_b, jnp.where(keep_b, step_b, buf.shape[1])].set(new, mode="drop")

  text_bn = write(state.text_bn, token_b, active_b)
  codes_bngc = write(state.codes_bngc, codes_bgc, active_b)
  n_new_b = state.n_new_b + active_b
  is_stop_b = jnp.any((settings.stop_bs == token_b[:, None]) & (settings.stop_bs >= 0), axis=1)
  stop_b = active_b & is_stop_b & (n_new_b >= settings.min_new_b)
  done_b = state.done_b | stop_b | (active_b & (n_new_b >= settings.max_new_b))

  text_logits_bnv, recorded_local = state.text_logits_bnv, state.local_logits
  if text_logits_bnv is not None:
    text_logits_bnv = write(text_logits_bnv, logits_bv, active_b)
    recorded_local = tuple(write(buf, new, patch_b)
                           for buf, new in zip(recorded_local, local_logits))

  # Feed text + patch back (the text token sits at the group's first column; the patch encoder
  # and the text embedding read nothing else of row 0).
  text_bl = jnp.full((b, g), FILLER, jnp.int32).at[:, 0].set(token_b)
  ids_bkl = jnp.concatenate([text_bl[:, None], codes_bgc.transpose(0, 2, 1)], axis=1)
  hidden_bd, cache = _feed(params, cfg, empty_id, ids_bkl, state.positions_b[:, None],
                           jnp.ones((b, 1), jnp.int32), state.cache)
  slots = cache.positions_bs.shape[1]
  if wrap_cache:
    # A ring (serving slots): the next write goes to the oldest slot; whoever fills the row keeps
    # its prompt and steps within `slots` (`serve.slots`).
    cache, cache_full_b = cache._replace(index=cache.index % slots), jnp.zeros_like(done_b)
  else:
    # No slot left for the next step's token (a cache shorter than the buffers): end the rows
    # that would go on, rather than let the next write clamp onto the last slot.
    cache_full_b = ~done_b & (cache.index >= slots)
  return state._replace(cache=cache, hidden_bd=hidden_bd, step=state.step + 1,
                        positions_b=state.positions_b + 1, done_b=done_b | cache_full_b,
                        n_new_b=n_new_b, stopped_b=state.stopped_b | stop_b,
                        cache_full_b=state.cache_full_b | cache_full_b,
                        given=_given_advance(settings, state.given, token_b, active_b, empty_id),
                        text_bn=text_bn,
                        codes_bngc=codes_bngc, text_logits_bnv=text_logits_bnv,
                        local_logits=recorded_local)


@functools.partial(jax.jit, static_argnames=("cfg", "empty_id", "wrap_cache"),
                   donate_argnames=("state",))
def decode(params: dict, cfg: MimoAudioConfig, state: State, settings: Settings,
           until: jax.Array, *, empty_id: int, wrap_cache: bool = False) -> State:
  """Takes LLM steps until `until` steps in total or all rows are done. Without `wrap_cache`
  `until` is at most the buffer's n; with it the KV cache is a ring (each row must then end
  before its writes come round to its own prompt: `serve.slots` sees to it)."""
  if not wrap_cache:
    until = jnp.minimum(until, state.text_bn.shape[1])
  return jax.lax.while_loop(lambda s: (s.step < until) & ~jnp.all(s.done_b),
                            functools.partial(_step, params, patch_heads(params, cfg), cfg,
                                              empty_id, wrap_cache, settings), state)


# --- host side ----------------------------------------------------------------------------------


def bucket(n: int, minimum: int = 8) -> int:
  """n rounded up to a power of two times 1, 1.25, 1.5 or 1.75 (<= 25% padding)."""
  n = max(n, minimum)
  step = 1 << max(0, n.bit_length() - 3)
  return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation: a prompt in the [1 + c, g * p] layout and how to continue it."""

  prompt_kl: np.ndarray
  max_new: int
  stop_ids: tuple[int, ...] = ()
  min_new: int = 0
  text: SamplerConfig = SamplerConfig(greedy=True)
  audio: SamplerConfig = SamplerConfig(greedy=True)
  seed: int = 0
  forced_text: tuple[int, ...] = ()  # text tokens imposed on the first steps (tests, scripts)
  # The text (ending with `<|eot|>`) of the stream the prompt opened, spoken as given: the model
  # makes only the audio and its length (`_given_choices`); () = the model writes the text too.
  given_text: tuple[int, ...] = ()
  stream_chunks: tuple[int, int] = (5, 5)  # text tokens and patches per stream chunk (layout)


@dataclasses.dataclass(frozen=True)
class Generation:
  """What one row generated: its new columns [1 + c, g * n] (text at each group's first column,
  FILLER in the others, as the layout writes it), whether it ended on a stop token, whether it
  was cut short because the KV cache was full, and the recorded logits (text [n, v]; per channel
  [n, g, v_c]) when asked for."""

  tokens_kl: np.ndarray
  stopped: bool
  cache_full: bool = False
  text_logits_nv: np.ndarray | None = None
  local_logits: tuple | None = None

  @property
  def text_ids(self) -> np.ndarray:
    """The text token of every step, [n]."""
    return self.tokens_kl[0][self.tokens_kl[0] != FILLER]


def pack(cfg: MimoAudioConfig, requests: list[Request], *, batch: int | None = None,
         prompt_positions: int | None = None, max_new: int | None = None):
  """Left-pads the prompts into one batch; returns (prompt_bkl, prompt_len_b, keys_b, settings,
  max_new) with the batch, prompt length and step count rounded up to buckets (or as given)."""
  g, c = cfg.group_size, cfg.audio_channels
  lens = [_positions(r.prompt_kl, cfg) for r in requests]
  p = prompt_positions or bucket(max(lens))
  n = max_new or bucket(max(r.max_new for r in requests))
  b = batch or 1 << (len(requests) - 1).bit_length()
  if p < max(lens) or n < max(r.max_new for r in requests) or b < len(requests):
    raise ValueError(f"pack: batch {b}, prompt_positions {p}, max_new {n} cannot hold "
                     f"{len(requests)} requests of up to {max(lens)} positions and "
                     f"{max(r.max_new for r in requests)} steps")
  # Padding: text id 0 with empty audio rows (finite embeddings; segment 0 hides them), and
  # dummy rows of one such position that stop after one step.
  prompt_bkl = np.zeros((b, 1 + c, g * p), np.int32)
  prompt_bkl[:, 1:] = np.asarray(cfg.speech_zeroemb_idx, np.int32)[None, :, None]
  len_b = np.ones((b,), np.int32)
  stop_len = max([len(r.stop_ids) for r in requests] + [1])
  stop_bs = np.full((b, stop_len), -1, np.int32)
  min_b, max_b = np.zeros((b,), np.int32), np.ones((b,), np.int32)
  forced_bn, given_bn = np.full((b, n), -1, np.int32), np.full((b, n), -1, np.int32)
  given_len_b, chunks_b2 = np.zeros((b,), np.int32), np.ones((b, 2), np.int32)
  dummy = Request(np.zeros((1 + c, 0), np.int32), 1)
  rows = requests + [dummy] * (b - len(requests))
  for i, (r, length) in enumerate(zip(requests, lens)):
    prompt_bkl[i, :, g * (p - length):] = r.prompt_kl
    len_b[i] = length
    stop_bs[i, :len(r.stop_ids)] = r.stop_ids
    min_b[i], max_b[i] = r.min_new, r.max_new
    forced_bn[i, :len(r.forced_text)] = r.forced_text
    if len(r.given_text) > n:
      raise ValueError(f"pack: request {i} gives a stream text of {len(r.given_text)} tokens, "
                       f"more than its {n} steps")
    given_bn[i, :len(r.given_text)] = r.given_text
    given_len_b[i], chunks_b2[i] = len(r.given_text), r.stream_chunks
  keys_b = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(
      jnp.asarray([r.seed for r in rows], jnp.uint32))
  settings = Settings(SamplerParams.of([r.text for r in rows]),
                      SamplerParams.of([r.audio for r in rows]),
                      stop_bs, min_b, max_b, forced_bn, given_bn, given_len_b, chunks_b2)
  return prompt_bkl, len_b, keys_b, settings, n


def _positions(prompt_kl: np.ndarray, cfg: MimoAudioConfig) -> int:
  k, length = np.shape(prompt_kl)
  if k != 1 + cfg.audio_channels or length % cfg.group_size or length == 0:
    raise ValueError(f"prompt: expected a non-empty [1 + {cfg.audio_channels}, "
                     f"{cfg.group_size} * P] layout array, got shape {np.shape(prompt_kl)}")
  return length // cfg.group_size


def unpack(cfg: MimoAudioConfig, state: State, n_rows: int) -> list[Generation]:
  """Each real row's generated columns, trimmed to the steps it took."""
  g = cfg.group_size
  text_bn, codes_bngc = np.asarray(state.text_bn), np.asarray(state.codes_bngc)
  n_new_b, stopped_b = np.asarray(state.n_new_b), np.asarray(state.stopped_b)
  cache_full_b = np.asarray(state.cache_full_b)
  out = []
  for i in range(n_rows):
    n = int(n_new_b[i])
    tokens_kl = np.full((1 + cfg.audio_channels, g * n), FILLER, np.int32)
    tokens_kl[0, ::g] = text_bn[i, :n]
    tokens_kl[1:] = codes_bngc[i, :n].reshape(g * n, -1).T
    recorded = {}
    if state.text_logits_bnv is not None:
      recorded = dict(text_logits_nv=np.asarray(state.text_logits_bnv[i, :n]),
                      local_logits=tuple(np.asarray(l[i, :n]) for l in state.local_logits))
    out.append(Generation(tokens_kl, bool(stopped_b[i]), bool(cache_full_b[i]), **recorded))
  return out


def generate(params: dict, cfg: MimoAudioConfig, requests: list[Request], *, empty_id: int,
             record_logits: bool = False, **buckets) -> list[Generation]:
  """Runs the requests as one batch (see `pack` for the buckets) and returns one result each."""
  prompt_bkl, len_b, keys_b, settings, n = pack(cfg, requests, **buckets)
  state = prefill(params, cfg, prompt_bkl, len_b, keys_b, empty_id=empty_id, max_new=n,
                  record_logits=record_logits)
  state = decode(params, cfg, state, settings, jnp.int32(n), empty_id=empty_id)
  return unpack(cfg, state, len(requests))


# --- reading a generation (official `MimoAudio.forward` post-processing, spec §3.5) ------------


def output_text_ids(result: Generation, tokens: SpecialTokens) -> np.ndarray:
  """The text a row said: its text tokens less the final stop token and less the stream markers
  `<|empty|>`, `<|eot|>`, `<|eostm|>`. (The official code drops the last token even when the row
  ran out of steps rather than stopping; we keep it then.)"""
  ids_n = result.text_ids[:-1] if result.stopped else result.text_ids
  return ids_n[~np.isin(ids_n, (tokens.empty, tokens.eot, tokens.eostm))]


def output_codes(result: Generation, tokens: SpecialTokens, cfg: MimoAudioConfig) -> np.ndarray:
  """The audio a row said, codes [t, c]: the frames after the first generated `<|sostm|>` (from
  the start without one) and before the first `<|eostm|>`, less the frames of text positions."""
  ids_n = result.text_ids[:-1] if result.stopped else result.text_ids
  starts, ends = np.flatnonzero(ids_n == tokens.sostm), np.flatnonzero(ids_n == tokens.eostm)
  first = starts[0] + 1 if len(starts) else 0
  last = ends[0] if len(ends) else len(ids_n)
  g = cfg.group_size
  codes_tc = result.tokens_kl[1:, g * first:g * last].T
  return codes_tc[codes_tc[:, 0] != cfg.speech_zeroemb_idx[0]]

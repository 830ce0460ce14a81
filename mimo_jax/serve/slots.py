"""Generation slots for continuous batching: a fixed batch of rows decoded by `lm.generate`'s
jitted loop, into which a new request is prefilled while the other rows keep their state.

Axis letters as in `lm.generate` (b slots, k layout rows, l layout columns, p prompt positions,
n steps of the output buffer, g frames of a patch, c audio channels, s cache slots).

Shapes are fixed when the slots are made (b rows, prompts of at most `max_prompt` positions,
answers of at most `max_new` steps), so the loop compiles once: `decode` once, `insert` once per
prompt bucket (`generate.bucket`), `read` once.

The KV cache is shared by the rows and written at one index for all of them (`nn.attention`), so
it is a ring of max_prompt + max_new slots (`generate.decode(wrap_cache=True)`). A request put
into row r at ring index i has its prompt written just behind i, in the slots the ring reaches
last; the row's other slots are emptied (segment 0: unseen). Its answer's max_new steps then
end before the ring comes round to its prompt. Attention reads positions and segments per slot,
not slot order, so a row sees exactly what a fresh cache would hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mimo_jax.config import MimoAudioConfig
from mimo_jax.lm import generate as gen

MAX_STOP_IDS = 8  # stop set width (fixed: a wider one would recompile)
# Fields of `generate.State` with one entry per row: an inserted request replaces its row's.
_ROW_FIELDS = ("hidden_bd", "positions_b", "done_b", "n_new_b", "stopped_b", "cache_full_b",
               "given", "text_bn", "codes_bngc", "keys_b")


class Slots(NamedTuple):
  state: gen.State
  settings: gen.Settings


class Progress(NamedTuple):
  """What the rows made in a `read` window: their new steps from `taken_b` on (host arrays)."""

  n_new_b: np.ndarray  # steps each row has made in all
  done_b: np.ndarray
  stopped_b: np.ndarray
  text_bw: np.ndarray  # text tokens of steps taken_b .. taken_b + w - 1
  codes_bwgc: np.ndarray  # their patches


class Made(NamedTuple):
  text_n: np.ndarray  # a row's new text tokens
  codes_ngc: np.ndarray  # and patches
  stopped: bool  # it ended on a stop token (else on its step limit), once finished


@dataclasses.dataclass(frozen=True)
class Shape:
  slots: int
  max_prompt: int  # prompt positions (a bucket: `generate.bucket`)
  max_new: int  # steps per answer

  def __post_init__(self):
    if self.slots < 1 or self.max_new < 1 or self.max_prompt != gen.bucket(self.max_prompt):
      raise ValueError(f"slots: need >= 1 slots and steps and a bucketed prompt length, got "
                       f"{self}")


def _padded(request: gen.Request) -> gen.Request:
  """The stop set padded with -1 (unused) to the fixed width."""
  if len(request.stop_ids) > MAX_STOP_IDS:
    raise ValueError(f"stop: at most {MAX_STOP_IDS} stop ids, got {len(request.stop_ids)}")
  return dataclasses.replace(request, stop_ids=(*request.stop_ids,
                                                *[-1] * (MAX_STOP_IDS - len(request.stop_ids))))


def empty(params: dict, cfg: MimoAudioConfig, shape: Shape, *, empty_id: int) -> Slots:
  """b idle rows (done) over a cache of max_prompt + max_new slots."""
  idle = gen.Request(np.zeros((1 + cfg.audio_channels, cfg.group_size), np.int32), 1)
  prompt_bkl, len_b, keys_b, settings, _ = gen.pack(
      cfg, [_padded(idle)] * shape.slots, batch=shape.slots, prompt_positions=shape.max_prompt,
      max_new=shape.max_new)
  state = gen.prefill(params, cfg, prompt_bkl, len_b, keys_b, empty_id=empty_id,
                      max_new=shape.max_new)
  return Slots(state._replace(done_b=jnp.ones_like(state.done_b)), settings)


def insert(params: dict, cfg: MimoAudioConfig, slots: Slots, row: int, request: gen.Request,
           *, empty_id: int) -> Slots:
  """Prefills `request` into row `row` (the other rows keep their state)."""
  n = slots.state.text_bn.shape[1]
  ring = slots.state.cache.positions_bs.shape[1]
  positions = gen.bucket(request.prompt_kl.shape[1] // cfg.group_size)
  if positions + n > ring or request.max_new > n:
    raise ValueError(f"slots: a prompt of {positions} positions (bucketed) and {request.max_new} "
                     f"steps exceed the slots' {ring - n} and {n}")
  prompt_1kl, len_1, keys_1, settings_1, _ = gen.pack(cfg, [_padded(request)], batch=1,
                                                      prompt_positions=positions, max_new=n)
  return _insert(params, cfg, slots, jnp.int32(row), prompt_1kl, len_1, keys_1, settings_1,
                 empty_id=empty_id)


@functools.partial(jax.jit, static_argnames=("cfg", "empty_id"), donate_argnames=("slots",))
def _insert(params, cfg, slots: Slots, row, prompt_1kl, len_1, keys_1, settings_1, *,
            empty_id):
  one = gen.prefill(params, cfg, prompt_1kl, len_1, keys_1, empty_id=empty_id,
                    max_new=slots.state.text_bn.shape[1])
  state, cache = slots.state, slots.state.cache
  ring, p = cache.positions_bs.shape[1], prompt_1kl.shape[2] // cfg.group_size
  # Ring slot j holds prompt position src_s[j] when that is < p: the prompt sits just behind the
  # write index, the rest of the row is emptied.
  src_s = (jnp.arange(ring) - (cache.index - p)) % ring
  kept_s = src_s < p
  src_s = jnp.minimum(src_s, p - 1)
  take = lambda x_bs: jnp.where(kept_s.reshape((-1,) + (1,) * (x_bs.ndim - 2)),
                                x_bs[0, src_s], jnp.zeros((), x_bs.dtype))
  set_row = lambda all_b, one_b: all_b.at[row].set(one_b[0])
  cache = cache._replace(
      k_lbskh=cache.k_lbskh.at[:, row].set(jax.vmap(take)(one.cache.k_lbskh[:, :, :p])),
      v_lbskh=cache.v_lbskh.at[:, row].set(jax.vmap(take)(one.cache.v_lbskh[:, :, :p])),
      positions_bs=cache.positions_bs.at[row].set(take(one.cache.positions_bs[:, :p])),
      segment_ids_bs=cache.segment_ids_bs.at[row].set(take(one.cache.segment_ids_bs[:, :p])))
  rows = {f: jax.tree.map(set_row, getattr(state, f), getattr(one, f)) for f in _ROW_FIELDS}
  return Slots(state._replace(cache=cache, **rows),
               jax.tree.map(set_row, slots.settings, settings_1))


@functools.partial(jax.jit, donate_argnames=("slots",))
def release(slots: Slots, row) -> Slots:
  """Ends row `row` (its request was cancelled): it stops making steps."""
  return slots._replace(state=slots.state._replace(done_b=slots.state.done_b.at[row].set(True)))


def decode(params: dict, cfg: MimoAudioConfig, slots: Slots, steps: int, *,
           empty_id: int) -> Slots:
  """Up to `steps` more steps for every live row (fewer when all rows end)."""
  state = gen.decode(params, cfg, slots.state, slots.settings, slots.state.step + steps,
                     empty_id=empty_id, wrap_cache=True)
  return slots._replace(state=state)


def read(slots: Slots, taken_b: np.ndarray, window: int) -> Progress:
  """The rows' steps taken_b .. taken_b + window - 1 (host copies)."""
  out = _read(slots.state, jnp.asarray(taken_b, jnp.int32), window)
  return Progress(*(np.asarray(x) for x in out))


@functools.partial(jax.jit, static_argnames=("window",))
def _read(state: gen.State, taken_b, window: int):
  n = state.text_bn.shape[1]
  cols_bw = jnp.minimum(taken_b[:, None] + jnp.arange(window)[None, :], n - 1)
  rows_b1 = jnp.arange(len(taken_b))[:, None]
  return (state.n_new_b, state.done_b, state.stopped_b, state.text_bn[rows_b1, cols_bw],
          state.codes_bngc[rows_b1, cols_bw])


class SlotDecoder:
  """`loop.SlotModel` over the functions above: requests are `generate.Request`s, and what a row
  makes in a chunk is its new steps (`Made`)."""

  def __init__(self, params: dict, cfg: MimoAudioConfig, shape: Shape, *, empty_id: int,
               chunk_steps: int, mesh: jax.sharding.Mesh | None = None):
    self.params, self.cfg, self.empty_id, self.mesh = params, cfg, empty_id, mesh
    self.slots, self.chunk_steps = shape.slots, chunk_steps
    with self._on_mesh():
      self._slots = empty(params, cfg, shape, empty_id=empty_id)
    self._taken_b = np.zeros((shape.slots,), np.int32)
    self._live = set()

  def _on_mesh(self):
    # The model's activation constraints need the params' mesh, in whichever thread steps.
    return jax.set_mesh(self.mesh) if self.mesh else contextlib.nullcontext()

  def insert(self, row: int, request: gen.Request) -> None:
    with self._on_mesh():
        self._slots = insert(self.params, self.cfg, self._slots, row, request,
                           empty_id=self.empty_id)
    self._taken_b[row] = 0
    self._live.add(row)

  def release(self, row: int) -> None:
    self._slots = release(self._slots, jnp.int32(row))
    self._live.discard(row)

  def advance(self) -> list[tuple[int, Made, bool]]:
    with self._on_mesh():
      self._slots = decode(self.params, self.cfg, self._slots, self.chunk_steps,
                           empty_id=self.empty_id)
    got = read(self._slots, self._taken_b, self.chunk_steps)
    out = []
    for row in sorted(self._live):
      made = int(got.n_new_b[row]) - int(self._taken_b[row])
      self._taken_b[row] += made
      finished = bool(got.done_b[row])
      out.append((row, Made(got.text_bw[row, :made], got.codes_bwgc[row, :made],
                            bool(got.stopped_b[row])), finished))
      if finished:
        self._live.discard(row)
    return out

"""Generation: official traces (tiny fixture), the batched jitted loop against a plain no-cache
loop, the delayed patch order, samplers, stop sets and max lengths, and reading the outputs.

Compilations are shared: every run uses 16 prompt positions and 8 steps; the tiny random model
has the official tiny config, so its batch-1 runs reuse the official fp32 compilation, and its
batches of 3 run in one batch-4 bucket."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimo_jax import config
from mimo_jax.codec import api
from mimo_jax.codec.checkpoint import import_codec
from mimo_jax.convert.hf import import_checkpoint
from mimo_jax.lm import backbone, layout, model, sampling
from mimo_jax.lm import generate as gen
from mimo_jax.lm.layout import FILLER, Layout, SpecialTokens, StreamSegment
from mimo_jax.lm.sampling import SamplerConfig, SamplerParams
from tests.codec.common import random_codec_params

# Special ids of the fixture's tiny text tokenizer (special_tokens.json).
TOKENS = SpecialTokens(endoftext=400, im_start=401, im_end=402, sosp=410, eosp=411, empty=412,
                       human=413, speechlm=414, sostm=415, eostm=416, eot=417)
EMPTY = TOKENS.empty
BUCKETS = dict(prompt_positions=16, max_new=8)
REFERENCE_POSITIONS = 24  # prompt + steps of every plain-loop run, so it compiles once
SPEECH_STOP = (TOKENS.endoftext, TOKENS.eostm, TOKENS.im_end)
# Against the official arrays, max |difference| measured (experiments/results/
# official_parity.md): logits 5.7e-6, decoded wav 3.0e-7; these fail a 10x regression.
OFFICIAL_LOGITS_ATOL = 2e-5
OFFICIAL_WAV_ATOL = 2e-6


# --- official traces --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _official_run(lm_dir: str, official_sum: bool):
  cfg = config.load_config(lm_dir, dtype="float32", official_bf16_speech_sum=official_sum)
  params, _ = import_checkpoint(lm_dir, cfg, specs_fn=model.param_specs)
  io = dict(np.load(f"{lm_dir}/io.npz"))
  free = gen.Request(io["input_ids"], 6, SPEECH_STOP)
  forced = gen.Request(io["input_ids"], 6, SPEECH_STOP, forced_text=tuple(io["gen_forced_script"]))
  results = [gen.generate(params, cfg, [r], empty_id=EMPTY, record_logits=True, batch=1,
                          **BUCKETS)[0] for r in (free, forced)]
  return cfg, io, results


@pytest.mark.parametrize("official_sum", [False, True], ids=["fp32_sum", "official_bf16_sum"])
def test_greedy_generation_reproduces_the_official_traces(official_tiny_lm_dir, official_sum):
  """Free greedy run and text-scripted run (patches generated greedily): the same tokens as the
  official `slm_sample`, and the same text logits at every step (2e-5). The default fp32 sum
  gives the `fp32acc_` traces, the official bf16 buffer the as-is ones."""
  cfg, io, (free, forced) = _official_run(official_tiny_lm_dir, official_sum)
  prefix = "" if official_sum else "fp32acc_"
  g, p = cfg.group_size, io["input_ids"].shape[1]
  for result, name in ((free, "free"), (forced, "forced")):
    ref_kl = io[f"{prefix}gen_{name}_tokens"][:, p:]
    assert result.tokens_kl.shape == ref_kl.shape, name
    # The official loop repeats the text token over a group's columns; the layout keeps it in
    # the first column only.
    np.testing.assert_array_equal(result.text_ids, ref_kl[0, ::g], err_msg=name)
    assert (ref_kl[0].reshape(-1, g) == ref_kl[0, ::g, None]).all()
    assert (result.tokens_kl[0].reshape(-1, g)[:, 1:] == FILLER).all()
    np.testing.assert_array_equal(result.tokens_kl[1:], ref_kl[1:], err_msg=name)
    np.testing.assert_allclose(result.text_logits_nv, io[f"{prefix}gen_{name}_text_logits"],
                               atol=OFFICIAL_LOGITS_ATOL, rtol=0, err_msg=name)
  assert not free.stopped and forced.stopped  # max_new reached / <|eostm|>
  assert (forced.text_ids == EMPTY).sum() == 4


def test_forced_run_patch_decoder_logits_match_the_official(official_tiny_lm_dir):
  """Per-step raw logits of every channel's head while the 4 patches were generated (the
  official arrays exist for the as-is numeric mode)."""
  _, io, (_, forced) = _official_run(official_tiny_lm_dir, True)
  patch_steps = np.flatnonzero(forced.text_ids == EMPTY)
  for ch, logits_ngv in enumerate(forced.local_logits):
    np.testing.assert_allclose(logits_ngv[patch_steps], io[f"gen_forced_local_logits_c{ch}"],
                               atol=OFFICIAL_LOGITS_ATOL, rtol=0, err_msg=f"channel {ch}")
    assert not logits_ngv[np.flatnonzero(forced.text_ids != EMPTY)].any()  # text steps: none


def test_forced_run_audio_decodes_to_the_official_wav(official_tiny_lm_dir, official_tiny_codec_dir):
  """The official `MimoAudio.forward(return_audio=True)` output: the generated frames (after the
  official post-processing) decoded by the tiny audio tokenizer."""
  cfg, io, (_, forced) = _official_run(official_tiny_lm_dir, True)
  text_ids = gen.output_text_ids(forced, TOKENS)
  np.testing.assert_array_equal(text_ids, [io["gen_forced_script"][2]])  # "ok"; markers dropped
  codes_tc = gen.output_codes(forced, TOKENS, cfg)
  assert codes_tc.shape == (16, 8)
  codec_params, codec_cfg = import_codec(official_tiny_codec_dir)
  wav = api.decode(codec_params, codec_cfg, codes_tc)
  np.testing.assert_allclose(wav, io["gen_forced_wav"], atol=OFFICIAL_WAV_ATOL, rtol=0)


# --- the batched loop against a plain loop ----------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tiny():
  cfg = config.tiny()
  return cfg, jax.tree.map(jnp.asarray, random_codec_params(model.param_specs(cfg), seed=3))


def _with_empty_column(params: dict, column) -> dict:
  """params whose `<|empty|>` logit comes from `column` (steers text-only / audio-only runs)."""
  kernel = params["lm_head"]["kernel"]
  return {**params, "lm_head": {"kernel": kernel.at[:, EMPTY].set(column)}}


def _prompt(cfg, rng, n_text: int, n_patches: int) -> np.ndarray:
  """Text positions, then an input span of n_patches patches, then one more text position."""
  g = cfg.group_size
  p = n_text + n_patches + 1
  ids_kl = np.full((1 + cfg.audio_channels, g * p), FILLER, np.int32)
  ids_kl[1:] = np.asarray(cfg.speech_zeroemb_idx)[:, None]
  ids_kl[0, ::g] = rng.randint(0, 400, p)
  for q in range(n_text, n_text + n_patches):
    ids_kl[0, g * q] = EMPTY
    ids_kl[1:, g * q:g * q + g] = rng.randint(0, 128, (cfg.audio_channels, g))
  return ids_kl


@functools.lru_cache(maxsize=None)
def _reference_fns(cfg):
  fwd = jax.jit(lambda p, ids: model.forward(p, cfg, ids, EMPTY))
  heads = jax.jit(lambda p, h: (backbone.text_logits(p, h), model.local_cond(p, cfg, h)))
  local = jax.jit(lambda p, cond, codes: model.patch_decoder_logits(p, cfg, cond, codes))
  return fwd, heads, local


def reference_patch(params, cfg, cond_d) -> np.ndarray:
  """A greedy patch [g, c] built frame by frame: the teacher-forced patch decoder re-run on the
  codes chosen so far, each channel read at the step of its delay."""
  _, _, local = _reference_fns(cfg)
  frame_sc, valid_sc = model.delay_schedule(cfg)
  empty_c = np.asarray(cfg.speech_zeroemb_idx)
  codes_gc = np.tile(empty_c, (cfg.group_size, 1))
  for t in range(valid_sc.shape[0]):
    logits = local(params, cond_d[None], codes_gc[None])
    for ch in np.flatnonzero(valid_sc[t]):
      scores = np.array(logits[ch][0, frame_sc[t, ch]])
      scores[empty_c[ch]] = -np.inf
      codes_gc[frame_sc[t, ch], ch] = np.argmax(scores)
  return codes_gc


def reference_generate(params, cfg, prompt_kl, max_new, stop=(), forced=()):
  """Greedy decoding the plain way: the whole sequence through the model at every step (no
  cache; the sequence is right-padded to a fixed length, which a causal model never reads), and
  patches from `reference_patch`. Returns the generated columns [1 + c, g * n]."""
  fwd, heads, _ = _reference_fns(cfg)
  g, c = cfg.group_size, cfg.audio_channels
  empty_c = np.asarray(cfg.speech_zeroemb_idx)
  p = prompt_kl.shape[1] // g
  seq_kl = np.concatenate([prompt_kl, np.zeros((1 + c, g * (REFERENCE_POSITIONS - p)), np.int32)],
                          axis=1)
  seq_kl[1:, g * p:] = empty_c[:, None]
  for step in range(max_new):
    hidden = fwd(params, seq_kl[None])[:, p + step - 1:p + step]
    text_logits, cond = (np.asarray(a)[0, 0] for a in heads(params, hidden))
    token = int(forced[step]) if step < len(forced) else int(np.argmax(text_logits))
    codes_gc = reference_patch(params, cfg, cond) if token == EMPTY else np.tile(empty_c, (g, 1))
    seq_kl[0, g * (p + step)] = token
    seq_kl[1:, g * (p + step):g * (p + step + 1)] = codes_gc.T
    if token in stop:
      max_new = step + 1
      break
  out_kl = seq_kl[:, g * p:g * (p + max_new)].copy()
  out_kl[0] = FILLER
  out_kl[0, ::g] = seq_kl[0, g * p:g * (p + max_new):g]
  return out_kl


@pytest.fixture(scope="module")
def tiny_prompts():
  cfg, _ = _tiny()
  rng = np.random.RandomState(0)
  return [_prompt(cfg, rng, 2, 3), _prompt(cfg, rng, 6, 2), _prompt(cfg, rng, 1, 1)]


def _steered(kind: str):
  """The tiny model, its `<|empty|>` logit steered: never the argmax (a zero logit under a
  positive maximum) for text, often for mixed; audio scripts `<|empty|>` at every step (no
  weight makes one logit win for every hidden state without a bias), mixed its first two steps
  (a patch, then text) so that every row holds both kinds."""
  cfg, params = _tiny()
  kernel = params["lm_head"]["kernel"]
  column = {"text": jnp.zeros_like(kernel[:, 0]), "audio": kernel[:, EMPTY],
            "mixed": 1.05 * kernel[:, 408]}[kind]
  forced = {"text": (), "audio": (EMPTY,) * 8, "mixed": (EMPTY, 7)}[kind]
  return cfg, _with_empty_column(params, column), forced


@pytest.mark.parametrize("kind", ["text", "audio", "mixed"])
def test_batched_loop_equals_the_plain_loop(kind, tiny_prompts):
  """Batch of 3 prompts of 6, 9 and 3 positions (left-padded into one bucket) and the last one
  alone (a batch-1 compilation) against the plain loop: identical tokens."""
  cfg, params, forced = _steered(kind)
  requests = [gen.Request(p, 8, forced_text=forced) for p in tiny_prompts]
  batched = gen.generate(params, cfg, requests, empty_id=EMPTY, batch=4, **BUCKETS)
  alone = gen.generate(params, cfg, requests[2:], empty_id=EMPTY, batch=1, **BUCKETS)
  for i, (prompt, result) in enumerate(zip(tiny_prompts, batched)):
    ref_kl = reference_generate(params, cfg, prompt, 8, forced=forced)
    np.testing.assert_array_equal(result.tokens_kl, ref_kl, err_msg=f"row {i}")
    n_patches = int((result.text_ids == EMPTY).sum())
    assert {"text": n_patches == 0, "audio": n_patches == 8,
            "mixed": 0 < n_patches < 8}[kind], (kind, result.text_ids)
  np.testing.assert_array_equal(alone[0].tokens_kl, batched[2].tokens_kl)


def test_given_stream_follows_the_layout_of_its_text_and_audio(tiny_prompts):
  """A stream spoken from a given text is, token for token, what the layout builds from that
  text and the patches the model chose to make: the text fills the chunks' text slots, the
  model decides only where the audio ends. Sampled rows take every branch (audio that ends
  inside the text, audio after it); chunks of 2 + 2 show several of them in 8 steps."""
  cfg, params, _ = _steered("mixed")  # <|empty|> about as likely as token 408
  lay = Layout(TOKENS, cfg.group_size, cfg.speech_zeroemb_idx, cfg.speech_vocab_size,
               text_chunk=2, audio_chunk=2)
  given = (408, 408, 408, TOKENS.eot)
  sampler = SamplerConfig(temperature=1.5)
  requests = [gen.Request(tiny_prompts[i % 3], 8, (TOKENS.eostm,), text=sampler, seed=i,
                          given_text=given, stream_chunks=(2, 2)) for i in range(32)]
  results = [r for i in range(0, 32, 4)  # the batch-4 compilation of the other tests
             for r in gen.generate(params, cfg, requests[i:i + 4], empty_id=EMPTY, batch=4,
                                   **BUCKETS)]
  patches_after_text = set()
  for i, result in enumerate(results):
    text_n = result.text_ids
    codes_tc = result.tokens_kl[1:].T[np.repeat(text_n == EMPTY, cfg.group_size)]
    built_n = layout.text_tokens(layout.build_sequence(
        [StreamSegment(given[:-1], codes_tc)], lay), lay)[1:]  # less <|sostm|>
    if result.stopped:
      np.testing.assert_array_equal(text_n, built_n, err_msg=f"row {i}")
    else:
      np.testing.assert_array_equal(text_n, built_n[:len(text_n)], err_msg=f"row {i}")
    eot_at = np.flatnonzero(text_n == TOKENS.eot)
    if len(eot_at):
      patches_after_text.add(bool((text_n[eot_at[0]:] == EMPTY).any()))
  assert patches_after_text == {True, False}, "sampling took only one branch"


def test_patch_decoder_emits_in_the_delayed_order():
  """Channel r emits frame t - r at step t (spec §3.4 schedule) and its empty id at every other
  step; the un-delayed patch is what the plain frame-by-frame decoder builds."""
  cfg, params = _tiny()
  cond_bd = np.random.RandomState(1).randn(2, cfg.local_dim).astype(np.float32)
  keys_b = jax.random.split(jax.random.key(0), 2)
  greedy = SamplerParams.of([sampling.GREEDY] * 2)
  codes_bgc, delayed_sbc, _ = jax.jit(lambda p, x, k, s: gen.decode_patch(p, cfg, x, k, s))(
      params, cond_bd, keys_b, greedy)
  codes_bgc, delayed_sbc = np.asarray(codes_bgc), np.asarray(delayed_sbc)
  empty_c = np.asarray(cfg.speech_zeroemb_idx)
  assert delayed_sbc.shape == (11, 2, 8)
  for t in range(11):
    for ch in range(8):
      frame = t - cfg.delay_pattern[ch]
      if 0 <= frame < cfg.group_size:
        np.testing.assert_array_equal(delayed_sbc[t, :, ch], codes_bgc[:, frame, ch])
      else:
        assert (delayed_sbc[t, :, ch] == empty_c[ch]).all(), (t, ch)
  assert (codes_bgc != empty_c).all()
  for i in range(2):
    np.testing.assert_array_equal(codes_bgc[i], reference_patch(params, cfg, cond_bd[i]))


def test_stop_sets_min_and_max_lengths(tiny_prompts):
  """A row stops on the first token of its stop set (kept as its last step), never before
  min_new steps (stop tokens are banned until then, as the official sampler removes them), and
  otherwise after max_new steps; rows of one batch stop independently."""
  cfg, params, _ = _steered("text")
  free = reference_generate(params, cfg, tiny_prompts[0], 8)
  stop = int(free[0, 4 * 3])  # the token the free run makes at step 3
  assert stop not in free[0, :4 * 3:4]
  requests = [gen.Request(tiny_prompts[0], 8, (stop,)),
              gen.Request(tiny_prompts[0], 8, (stop,), min_new=5),
              gen.Request(tiny_prompts[0], 5, (999,)),
              gen.Request(tiny_prompts[1], 8)]
  first, banned, short, other = gen.generate(params, cfg, requests, empty_id=EMPTY, batch=4,
                                             **BUCKETS)
  assert first.stopped and len(first.text_ids) == 4
  np.testing.assert_array_equal(first.tokens_kl, free[:, :16])
  assert stop not in banned.text_ids[:5] and len(banned.text_ids) >= 5
  assert banned.stopped == (banned.text_ids[-1] == stop)
  assert not short.stopped and len(short.text_ids) == 5
  np.testing.assert_array_equal(short.tokens_kl, free[:, :20])
  np.testing.assert_array_equal(other.tokens_kl,
                                reference_generate(params, cfg, tiny_prompts[1], 8))


def _generation(text_ids, stopped, cfg):
  """A Generation whose patches (text <|empty|>) carry codes 1, 2, ... per frame."""
  g, c = cfg.group_size, cfg.audio_channels
  tokens_kl = np.full((1 + c, g * len(text_ids)), FILLER, np.int32)
  tokens_kl[1:] = np.asarray(cfg.speech_zeroemb_idx)[:, None]
  tokens_kl[0, ::g] = text_ids
  frame = 0
  for p in np.flatnonzero(np.asarray(text_ids) == EMPTY):
    tokens_kl[1:, g * p:g * p + g] = np.arange(frame, frame + g) % 100
    frame += g
  return gen.Generation(tokens_kl, stopped)


def test_text_and_audio_are_read_from_the_stream():
  """Official post-processing: text drops the final stop token, <|empty|>, <|eot|>, <|eostm|>;
  audio is the patches after the first <|sostm|> and before the first <|eostm|>."""
  cfg = config.tiny()
  t = TOKENS
  result = _generation([5, EMPTY, t.sostm, 6, 7, t.eot, EMPTY, EMPTY, t.eostm, EMPTY, t.im_end],
                       True, cfg)
  np.testing.assert_array_equal(gen.output_text_ids(result, t), [5, t.sostm, 6, 7])
  codes_tc = gen.output_codes(result, t, cfg)
  np.testing.assert_array_equal(codes_tc[:, 0], np.arange(4, 12))  # patches 2 and 3 only
  # Ran out of steps: the last token is text, kept; no stream markers: all patches.
  result = _generation([EMPTY, 8, EMPTY, 9], False, cfg)
  np.testing.assert_array_equal(gen.output_text_ids(result, t), [8, 9])
  np.testing.assert_array_equal(gen.output_codes(result, t, cfg)[:, 0], np.arange(8))


# --- samplers ---------------------------------------------------------------------------------


def _numpy_filter(x_v, temperature, top_k, top_p):
  """The official sampler's filters in numpy: temperature; drop scores under the k-th largest;
  drop the ascending prefix whose cumulative softmax mass is <= 1 - p, never the top score."""
  x_v = x_v / temperature
  if top_k > 0:
    x_v = np.where(x_v < np.sort(x_v)[::-1][min(top_k, len(x_v)) - 1], -np.inf, x_v)
  if top_p < 1:
    order = np.argsort(x_v, kind="stable")
    probs = np.exp(x_v[order] - x_v.max())
    drop = np.cumsum(probs / probs.sum()) <= 1 - top_p
    drop[-1] = False
    x_v = x_v.copy()
    x_v[order[drop]] = -np.inf
  return x_v


@pytest.mark.parametrize("vocab, scale", [(50, 2.0), (600, 4.0), (600, 0.05)],
                         ids=["small_vocab", "peaked", "flat_needs_full_sort"])
def test_filters_follow_the_official_sampler(vocab, scale):
  """Top-k and nucleus from the top candidates (peaked logits) and from a full sort (a flat
  distribution whose nucleus holds more than `sampling.CANDIDATES` tokens, or top-k above it)
  both keep exactly the official sets."""
  rng = np.random.RandomState(vocab)
  settings = [SamplerConfig(temperature=1.0), SamplerConfig(temperature=0.6, top_k=5),
              SamplerConfig(temperature=0.9, top_p=0.95), SamplerConfig(temperature=0.6, top_k=50,
                                                                        top_p=0.95),
              SamplerConfig(top_k=80, top_p=0.3), SamplerConfig(temperature=2.0, top_p=0.999),
              SamplerConfig(top_k=300)]
  logits_bv = (rng.randn(len(settings), vocab) * scale).astype(np.float32)
  ours = np.asarray(jax.jit(sampling.filter_logits)(jnp.asarray(logits_bv),
                                                    SamplerParams.of(settings)))
  for i, s in enumerate(settings):
    ref = _numpy_filter(logits_bv[i].astype(np.float64), s.temperature, s.top_k, s.top_p)
    np.testing.assert_array_equal(np.isinf(ours[i]), np.isinf(ref), err_msg=str(s))
    np.testing.assert_allclose(ours[i][np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-6)
  assert np.isfinite(ours[1]).sum() == 5
  if scale < 1:
    assert np.isfinite(ours[2]).sum() > sampling.CANDIDATES


def test_draws_are_seeded_per_row_follow_the_distribution_and_skip_banned_ids():
  logits_v = np.log(np.asarray([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))
  n = 4000
  keys_n = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(n))
  draw = jax.jit(sampling.sample)
  sampled = SamplerParams.of([SamplerConfig(temperature=0.7, top_k=4)] * n)
  tokens = np.asarray(draw(keys_n, jnp.tile(logits_v, (n, 1)), sampled))
  expected = np.exp(_numpy_filter(logits_v.astype(np.float64), 0.7, 4, 1.0))
  np.testing.assert_allclose(np.bincount(tokens, minlength=5) / n, expected / expected.sum(),
                             atol=0.03)
  np.testing.assert_array_equal(tokens, np.asarray(draw(keys_n, jnp.tile(logits_v, (n, 1)),
                                                        sampled)))  # same keys, same draws
  banned = jnp.zeros((n, 5), bool).at[:, 0].set(True)
  tokens = np.asarray(draw(keys_n, jnp.tile(logits_v, (n, 1)), sampled, banned))
  assert 0 not in tokens and len(set(tokens)) == 3  # top-4 of 5, less the banned one
  greedy = SamplerParams.of([sampling.GREEDY] * n)
  assert (np.asarray(draw(keys_n, jnp.tile(logits_v, (n, 1)), greedy, banned)) == 1).all()


def test_sampled_generation_is_reproducible_and_independent_of_the_batch(tiny_prompts):
  """Each row draws from its own seed: alone or beside other rows it makes the same tokens;
  another seed makes others."""
  cfg, params, _ = _steered("mixed")
  preset = sampling.PRESETS["default"]
  request = lambda seed: gen.Request(tiny_prompts[2], 8, forced_text=(EMPTY,), seed=seed,
                                     text=preset.text, audio=preset.audio)
  batch = gen.generate(params, cfg, [request(1), request(2), request(1)], empty_id=EMPTY,
                       batch=4, **BUCKETS)
  alone = gen.generate(params, cfg, [request(1)], empty_id=EMPTY, batch=1, **BUCKETS)
  np.testing.assert_array_equal(batch[0].tokens_kl, batch[2].tokens_kl)
  np.testing.assert_array_equal(batch[0].tokens_kl, alone[0].tokens_kl)
  assert not np.array_equal(batch[0].tokens_kl, batch[1].tokens_kl)

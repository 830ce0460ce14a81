"""Task templates: every task's example parses back (layout helpers) to the intended text and
audio, prompts are prefixes of their examples, loss masks cover exactly the answer, and the
phase mixtures are deterministic per seed."""

import numpy as np
import pytest

from mimo_jax import config
from mimo_jax.data import templates as T
from mimo_jax.data.tokenizer import TextTokenizer
from mimo_jax.lm import layout
from mimo_jax.lm.layout import AudioSegment, StreamSegment, TextSegment


@pytest.fixture(scope="module")
def fmt(official_tiny_lm_dir):
  return T.Formatter.from_config(config.preset("tiny"),
                                 TextTokenizer.load(official_tiny_lm_dir))


def _codes(n_frames, seed):
  """Random valid codes [T, 8] (below every channel's empty id)."""
  return np.random.default_rng(seed).integers(0, 128, (n_frames, 8)).astype(np.int32)


A, B, C = _codes(22, 0), _codes(13, 1), _codes(9, 2)  # 22 and 13 frames need padding


def _read(ex, fmt):
  """The example as (kind, text, codes) triples via `parse_sequence`."""
  out = []
  for seg in layout.parse_sequence(ex.ids_kl, fmt.layout):
    if isinstance(seg, TextSegment):
      out.append(("text", fmt.tokenizer.decode(seg.ids_n), None))
    elif isinstance(seg, AudioSegment):
      out.append(("audio", None, seg.codes_tc))
    else:
      out.append(("stream", fmt.tokenizer.decode(seg.ids_n), seg.codes_tc))
  return out


def _assert_reads(ex, fmt, expected):
  got = _read(ex, fmt)
  assert [(k, t) for k, t, _ in got] == [(k, t) for k, t, _ in expected]
  for (_, _, codes), (_, _, want) in zip(got, expected):
    if want is not None:
      np.testing.assert_array_equal(codes, layout.pad_frames(want, fmt.layout.group_size))


def _masked_text(ex, fmt):
  return fmt.tokenizer.decode(layout.text_tokens(ex.ids_kl, fmt.layout)[ex.loss_mask_p])


ASR_PROMPT = "<|im_start|>user\n"
EOS = "<|endoftext|>"
# (name, build the example, build the prompt, expected reading of the example)
CASES = [
    ("interleaved", lambda f: T.interleaved(f, "the kettle clicked off", A),
     lambda f: T.interleaved(f), [("stream", "the kettle clicked off", A), ("text", EOS, None)]),
    ("asr", lambda f: T.asr(f, A, "hello world"), lambda f: T.asr(f, A),
     [("audio", None, A), ("text", "\nhello world" + EOS, None)]),
    ("audio_caption", lambda f: T.audio_caption(f, B, "a dog barks"),
     lambda f: T.audio_caption(f, B), [("audio", None, B),
                                       ("text", "Description: a dog barks" + EOS, None)]),
    ("tts", lambda f: T.tts(f, "good morning", A), lambda f: T.tts(f, "good morning"),
     [("text", "good morning\n", None), ("stream", "good morning", A), ("text", EOS, None)]),
    ("speech_continuation", lambda f: T.speech_continuation(f, A[:8], B),
     lambda f: T.speech_continuation(f, A[:8]),
     [("audio", None, np.concatenate([A[:8], B])), ("text", EOS, None)]),
    ("text", lambda f: T.text(f, "", "once upon a time"), lambda f: T.text(f, ""),
     [("text", "once upon a time" + EOS, None)]),
    ("asr_sft", lambda f: T.asr_sft(f, A, "hello world"), lambda f: T.asr_sft(f, A),
     [("text", ASR_PROMPT, None), ("audio", None, A),
      ("text", T.ASR_ZH[0] + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"
       "hello world<|im_end|>\n", None)]),
    ("tts_sft", lambda f: T.tts_sft(f, "good morning", A), lambda f: T.tts_sft(f, "good morning"),
     [("text", f"<|im_start|>user\n{T.TTS_EN[0]}: good morning<|im_end|>\n"
       "<|im_start|>assistant\n", None), ("stream", "good morning", A),
      ("text", "<|im_end|>\n", None)]),
]


@pytest.mark.parametrize("name,build,prompt,expected", CASES, ids=[c[0] for c in CASES])
def test_example_reads_back_and_prompt_is_its_prefix(fmt, name, build, prompt, expected):
  ex, pr = build(fmt), prompt(fmt)
  assert ex.task == pr.task == name
  assert ex.ids_kl.dtype == np.int32 and ex.ids_kl.shape == (9, 4 * ex.n_positions)
  _assert_reads(ex, fmt, expected)
  assert pr.is_prompt and not pr.loss_mask_p.any() and not ex.is_prompt
  assert pr.prompt_positions == ex.prompt_positions
  np.testing.assert_array_equal(ex.ids_kl[:, :4 * pr.n_positions], pr.ids_kl)
  assert pr.stop_tokens == ex.stop_tokens


def test_prompts_end_where_the_model_continues(fmt):
  tok = fmt.layout.tokens
  last = lambda ex: int(layout.text_tokens(ex.ids_kl, fmt.layout)[-1])
  for ex in (T.interleaved(fmt), T.tts(fmt, "hi"), T.tts_sft(fmt, "hi"),
             T.spoken_dialogue_sft(fmt, [T.Turn("user", (A,))])):
    assert last(ex) == tok.sostm and tok.eostm in ex.stop_tokens
  nl = fmt.tokenizer.encode("\n")[-1]
  assert last(T.asr(fmt, A)) == nl and last(T.asr_sft(fmt, A)) == nl
  assert fmt.tokenizer.decode(layout.text_tokens(T.text_dialogue_sft(
      fmt, [T.Turn("user", ("hi",))], thinking=True).ids_kl, fmt.layout)).endswith(
          "assistant\n<think>\n")
  # An open input span: <|sosp|> and the prompt's 2 patches, no <|eosp|>.
  cont = T.speech_continuation(fmt, A[:8])
  assert list(layout.text_tokens(cont.ids_kl, fmt.layout)) == [tok.sosp, tok.empty, tok.empty]
  np.testing.assert_array_equal(layout.patch_codes(cont.ids_kl, fmt.layout)[1:].reshape(-1, 8),
                                A[:8])
  assert tok.eosp in cont.stop_tokens


@pytest.mark.parametrize("tokenizer", ["fixture", "bpe"])
def test_no_prompt_is_a_prefix_of_another_tasks_example(fmt, tokenizer):
  """A prompt that is also the start of another task's examples gets that task's answer: the
  ASR prompt (span, newline) once began every caption, and greedy ASR answered with the
  caption's fixed cue. Checked with the fixture's tokenizer and a small BPE trained on
  transcripts, as the demo's is (its merges differ)."""
  if tokenizer == "bpe":
    texts = ["the kettle clicked off", "a dog barks twice", "she painted the kitchen green"]
    fmt = T.Formatter.from_config(config.preset("tiny"),
                                  TextTokenizer.train(texts * 4, vocab_size=300))
  utt = T.Utterance("the kettle clicked off", A, speaker="en_us_m3", language="en",
                    caption="A man speaks calmly in a quiet room.")
  prompts = {"asr": T.asr(fmt, A), "audio_caption": T.audio_caption(fmt, A),
             "tts": T.tts(fmt, utt.text), "interleaved": T.interleaved(fmt)}
  for task, prompt in prompts.items():
    for other in prompts:
      example = T.render(fmt, other, utt, np.random.default_rng(0))
      is_prefix = (prompt.ids_kl.shape[1] <= example.ids_kl.shape[1] and np.array_equal(
          example.ids_kl[:, :prompt.ids_kl.shape[1]], prompt.ids_kl))
      assert is_prefix == (task == other), (task, other)


@pytest.mark.parametrize("name", ["interleaved", "asr", "audio_caption", "tts",
                                  "speech_continuation", "text"])
def test_pretraining_formats_train_every_position(fmt, name):
  ex = dict((c[0], c[1]) for c in CASES)[name](fmt)
  assert ex.loss_mask_p.all()


def test_sft_masks_cover_exactly_the_text_answer(fmt):
  ex = T.asr_sft(fmt, A, "hello world")
  assert _masked_text(ex, fmt) == "hello world<|im_end|>"
  first = np.argmax(ex.loss_mask_p)
  assert first == ex.prompt_positions and ex.loss_mask_p[first:].sum() == ex.loss_mask_p.sum()
  # Only the closing newline follows the answer, untrained.
  assert fmt.tokenizer.decode(layout.text_tokens(ex.ids_kl, fmt.layout)[
      ~ex.loss_mask_p][ex.prompt_positions:]) == "\n"


def test_sft_masks_cover_exactly_the_speech_answer(fmt):
  ex = T.tts_sft(fmt, "good morning", A)
  tok = fmt.layout.tokens
  tokens_p = layout.text_tokens(ex.ids_kl, fmt.layout)
  assert tokens_p[ex.prompt_positions - 1] == tok.sostm
  assert not ex.loss_mask_p[:ex.prompt_positions].any()
  masked_p = tokens_p[ex.loss_mask_p]
  # Trained: every text and audio position of the stream after <|sostm|>, then <|im_end|>.
  assert fmt.tokenizer.decode(masked_p[masked_p != tok.empty]) == \
      "good morning<|eot|><|eostm|><|im_end|>"
  audio_pgc = layout.patch_codes(ex.ids_kl, fmt.layout)[ex.loss_mask_p & (tokens_p == tok.empty)]
  np.testing.assert_array_equal(audio_pgc.reshape(-1, 8), layout.pad_frames(A, 4))


def test_multiturn_spoken_dialogue_trains_only_the_last_reply(fmt):
  history = [T.Turn("user", (B,)), T.Turn("assistant", (T.Speech("sure thing", C),)),
             T.Turn("user", ("and now?", A))]
  ex = T.spoken_dialogue_sft(fmt, history, T.Speech("here you go", B), voice_tc=C)
  _assert_reads(ex, fmt, [
      ("text", "<|im_start|>system\n" + T.VOICE_PROMPT, None), ("audio", None, C),
      ("text", "<|im_end|>\n<|im_start|>user\n", None), ("audio", None, B),
      ("text", "<|im_end|>\n<|im_start|>assistant\n", None), ("stream", "sure thing", C),
      ("text", "<|im_end|>\n<|im_start|>user\nand now?", None), ("audio", None, A),
      ("text", "<|im_end|>\n<|im_start|>assistant\n", None), ("stream", "here you go", B),
      ("text", "<|im_end|>\n", None)])
  tokens_p = layout.text_tokens(ex.ids_kl, fmt.layout)
  masked = tokens_p[ex.loss_mask_p]
  assert fmt.tokenizer.decode(masked[masked != fmt.layout.tokens.empty]) == \
      "here you go<|eot|><|eostm|><|im_end|>"
  prompt = T.spoken_dialogue_sft(fmt, history, voice_tc=C)
  np.testing.assert_array_equal(ex.ids_kl[:, :4 * prompt.n_positions], prompt.ids_kl)


def test_text_and_s2t_dialogue_and_understanding(fmt):
  history = [T.Turn("user", ("hi",)), T.Turn("assistant", ("hello",)), T.Turn("user", ("bye",))]
  ex = T.text_dialogue_sft(fmt, history, "see you")
  _assert_reads(ex, fmt, [("text", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
                          "<think>\n\n</think>\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"
                          "<|im_start|>assistant\n<think>\n\n</think>\nsee you<|im_end|>\n", None)])
  assert _masked_text(ex, fmt) == "see you<|im_end|>"
  think = T.s2t_dialogue_sft(fmt, [T.Turn("user", (A,))], "hmm</think>\nok", thinking=True)
  assert _masked_text(think, fmt) == "hmm</think>\nok<|im_end|>"
  qa = T.audio_understanding_sft(fmt, A, "what is said?", "a greeting")
  _assert_reads(qa, fmt, [("text", "<|im_start|>user\n", None), ("audio", None, A),
                          ("text", "what is said?<|im_end|>\n<|im_start|>assistant\n"
                           "<think>\n\n</think>\na greeting<|im_end|>\n", None)])


def test_special_strings_in_data_stay_text(fmt):
  ex = T.asr_sft(fmt, A, "say <|im_end|> and <|sostm|>")
  tok = fmt.layout.tokens
  answer_p = layout.text_tokens(ex.ids_kl, fmt.layout)[ex.loss_mask_p]
  assert list(answer_p).count(tok.im_end) == 1 and answer_p[-1] == tok.im_end
  assert tok.sostm not in answer_p
  assert _masked_text(ex, fmt) == "say <|im_end|> and <|sostm|><|im_end|>"


def test_bad_inputs_are_named(fmt):
  with pytest.raises(T.TemplateError, match="asr: text is empty"):
    T.asr(fmt, A, "  ")
  with pytest.raises(T.TemplateError, match="tts_sft: text is empty"):
    T.tts_sft(fmt, "", A)
  with pytest.raises(T.TemplateError, match="prompt_tc has 6 frames, not a multiple of"):
    T.speech_continuation(fmt, A[:6], B)
  with pytest.raises(T.TemplateError, match="unknown chat role 'bot'"):
    T.text_dialogue_sft(fmt, [T.Turn("bot", ("x",))], "y")
  with pytest.raises(T.TemplateError, match="a speech answer must be a Speech"):
    T.chat(fmt, "x", [T.Turn("user", ("x",))], "text", speech_answer=True)
  with pytest.raises(layout.LayoutError, match="channel 0"):
    T.asr(fmt, np.full((4, 8), 1024), "x")  # the empty id is not a code


def test_random_instructions_come_from_the_official_lists(fmt):
  seen = set()
  for i in range(40):
    ex = T.asr_sft(fmt, C, "x", rng=np.random.default_rng(i))
    user_text = _read(ex, fmt)[2][1]
    seen.add(user_text[:user_text.index("<|im_end|>")])
  assert seen <= set(T.ASR_ZH + T.ASR_EN) and len(seen) > 10
  zh = _read(T.tts_sft(fmt, "你好", rng=np.random.default_rng(0)), fmt)[0][1]
  assert any(f"user\n{t}: 你好<|im_end|>" in zh for t in T.TTS_ZH)


def test_phase_mixtures(fmt):
  draws = lambda phase, seed: [T.sample_task(phase, np.random.default_rng([seed, i]))
                               for i in range(300)]
  assert draws("understanding", 0) == draws("understanding", 0)
  assert draws("understanding", 0) != draws("understanding", 1)
  assert set(draws("understanding", 0)) == {"interleaved", "asr", "audio_caption", "text"}
  assert set(draws("generation", 0)) == set(T.PRETRAIN_TASKS)
  assert set(draws("sft", 0)) == set(T.SFT_TASKS)
  with pytest.raises(T.TemplateError, match="unknown phase 'pretrain'"):
    T.sample_task("pretrain", np.random.default_rng(0))
  utt = T.Utterance("the kettle clicked off", _codes(40, 5), speaker="en_us_m3", language="en")
  for phase in config.PHASES:
    tasks = set()
    for index in range(12):
      ex = T.example_for(fmt, utt, phase, seed=7, index=index)
      again = T.example_for(fmt, utt, phase, seed=7, index=index)
      assert ex.task == again.task
      np.testing.assert_array_equal(ex.ids_kl, again.ids_kl)
      np.testing.assert_array_equal(ex.loss_mask_p, again.loss_mask_p)
      layout.parse_sequence(ex.ids_kl, fmt.layout)  # well formed
      tasks.add(ex.task)
    assert tasks <= set(T.PHASE_MIXTURES[phase]) and len(tasks) > 1


def test_captions_come_only_from_the_data(fmt):
  """Only a manifest caption is trained; an utterance without one never draws audio_caption
  (unless the mixture has nothing else) and cannot be rendered as one."""
  utt = T.Utterance("the kettle clicked off", _codes(40, 5), speaker="en_us_m3", language="en")
  captioned = T.Utterance(utt.text, utt.audio_tc, caption="A man speaks calmly.")
  caption = _read(T.render(fmt, "audio_caption", captioned, np.random.default_rng(0)), fmt)[1][1]
  assert caption == "Description: A man speaks calmly." + EOS
  with pytest.raises(T.TemplateError, match="audio_caption: caption is empty"):
    T.render(fmt, "audio_caption", utt, np.random.default_rng(0))
  draws = lambda u: {T.sample_task("understanding", np.random.default_rng(i), utt=u)
                     for i in range(200)}
  assert "audio_caption" not in draws(utt) and "audio_caption" in draws(captioned)
  only_captions = {"understanding": {"audio_caption": 1.0}}
  assert T.sample_task("understanding", np.random.default_rng(0), only_captions,
                       utt) == "audio_caption"


@pytest.fixture(scope="module")
def mimo_fmt():
  return T.Formatter.from_config(config.preset("7b"), TextTokenizer.mimo())


def test_mimo_tokenizer_examples_fit_the_7b_vocab(mimo_fmt):
  fmt = mimo_fmt
  ex = T.tts_sft(fmt, "今天天气很好", A)
  tokens_p = layout.text_tokens(ex.ids_kl, fmt.layout)
  assert tokens_p.max() < config.preset("7b").vocab_size
  _assert_reads(ex, fmt, [("text", f"<|im_start|>user\n{T.TTS_ZH[0]}: 今天天气很好<|im_end|>\n"
                           "<|im_start|>assistant\n", None), ("stream", "今天天气很好", A),
                          ("text", "<|im_end|>\n", None)])


def test_sft_prompts_tokenise_as_the_official_segment_strings(mimo_fmt):
  """The official builders tokenise each `InputSegment` string whole; ours splits markup from data
  text. With the real tokenizer both give the same ids (special tokens and the newline rule of
  the Qwen2 split keep the pieces apart)."""
  fmt = mimo_fmt
  tok, enc = fmt.layout.tokens, fmt.tokenizer.encode
  for text in ("The kettle clicked off.", "今天天气很好", "  spaced  out "):
    rng = np.random.default_rng(len(text))
    prompt = T.tts_sft(fmt, text, rng=rng)
    template = (T.TTS_ZH if "天" in text else T.TTS_EN)[
        int(np.random.default_rng(len(text)).integers(10))]
    official = [*enc(f"<|im_start|>user\n{template}: {text}<|im_end|>\n"),
                *enc("<|im_start|>assistant\n<|sostm|>")]
    assert list(layout.text_tokens(prompt.ids_kl, fmt.layout)) == official
  prompt = T.asr_sft(fmt, A)
  official = [*enc("<|im_start|>user\n"), tok.sosp, *[tok.empty] * 6, tok.eosp, *enc(T.ASR_ZH[0]),
              *enc("<|im_end|>\n"), *enc("<|im_start|>assistant\n"), *enc("<think>\n\n</think>\n")]
  assert list(layout.text_tokens(prompt.ids_kl, fmt.layout)) == official


def test_instruct_tts_prompts_tokenise_as_the_official_segment_strings(mimo_fmt):
  """Instruct TTS, without and with a voice prompt (official `get_tts_sft_prompt` with
  `instruct` and `prompt_speech`): the prompt ends after `<think>\\n`; trained data closes the
  think block empty, then speaks the text."""
  fmt = mimo_fmt
  tok, enc = fmt.layout.tokens, fmt.tokenizer.encode
  text, instruct = "The kettle clicked off.", "whispering, slowly"
  template = T.TTS_EN[int(np.random.default_rng(3).integers(10))]
  user = [*enc(f"<|im_start|>user\n{template}: {text}({instruct})<|im_end|>\n"),
          *enc("<|im_start|>assistant\n<think>\n")]
  voice = [tok.sosp, *[tok.empty] * 3, tok.eosp]  # C: 9 frames, 3 patches
  for voice_tc, system in ((None, [*enc(T.STYLE_SYSTEM)]), (C, [*enc(T.VOICE_STYLE_SYSTEM),
                                                                  *voice])):
    prompt = T.instruct_tts_sft(fmt, text, instruct, voice_tc=voice_tc,
                                rng=np.random.default_rng(3))
    official = [*enc("<|im_start|>system\n"), *system, *enc("<|im_end|>\n"), *user]
    assert list(layout.text_tokens(prompt.ids_kl, fmt.layout)) == official
    assert prompt.stream_text_ids is None and tok.eostm in prompt.stop_tokens
    ex = T.instruct_tts_sft(fmt, text, instruct, A, voice_tc, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(ex.ids_kl[:, :prompt.ids_kl.shape[1]], prompt.ids_kl)
    masked_p = layout.text_tokens(ex.ids_kl, fmt.layout)[ex.loss_mask_p]
    assert fmt.tokenizer.decode(masked_p[masked_p != tok.empty]) == (
        f"\n</think>\n<|sostm|>{text}<|eot|><|eostm|><|im_end|>")
    assert ex.loss_mask_p[prompt.n_positions:].sum() == ex.loss_mask_p.sum()


def _assistant_runs(ex):
  """[start, stop) of each run of trained positions."""
  edges_p = np.diff(np.concatenate([[0], ex.loss_mask_p.astype(int), [0]]))
  return list(zip(np.flatnonzero(edges_p == 1), np.flatnonzero(edges_p == -1)))


def test_conversation_trains_every_assistant_turn_and_nothing_else(fmt):
  turns = [T.Turn("system", ("be brief",)), T.Turn("user", (A, "what is this?")),
           T.Turn("assistant", ("a kettle",)), T.Turn("user", (B,)),
           T.Turn("assistant", (T.Speech("it clicked", C),)), T.Turn("user", ("why?",)),
           T.Turn("assistant", ("it boiled</think>\nwater boiled",), thinking=True)]
  ex = T.conversation(fmt, "chat", turns)
  tok = fmt.layout.tokens
  tokens_p = layout.text_tokens(ex.ids_kl, fmt.layout)
  replies = []
  for start, stop in _assistant_runs(ex):
    run_p = tokens_p[start:stop]
    replies.append(fmt.tokenizer.decode(run_p[run_p != tok.empty]))
    # A run starts right after the opener the context gives: the think block or <|sostm|>.
    before = fmt.tokenizer.decode(tokens_p[:start])
    assert before.endswith(("</think>\n", "<think>\n", "<|sostm|>")), before[-30:]
  assert replies == ["a kettle<|im_end|>", "it clicked<|eot|><|eostm|><|im_end|>",
                     "it boiled</think>\nwater boiled<|im_end|>"]
  audio_pgc = layout.patch_codes(ex.ids_kl, fmt.layout)[ex.loss_mask_p & (tokens_p == tok.empty)]
  np.testing.assert_array_equal(audio_pgc.reshape(-1, 8), layout.pad_frames(C, 4))
  prompt = T.chat(fmt, "chat", turns[:-1], thinking=True)
  assert ex.prompt_positions == prompt.n_positions
  np.testing.assert_array_equal(ex.ids_kl[:, :prompt.ids_kl.shape[1]], prompt.ids_kl)
  with pytest.raises(T.TemplateError, match="chat: a conversation must end with an assistant"):
    T.conversation(fmt, "chat", turns[:-1])


def test_every_chat_task_is_a_conversation(fmt):
  """Each SFT template is the conversation of its turns: same ids, and the same mask where the
  template has one reply (a multi-turn conversation also trains its past replies)."""
  rng = lambda: np.random.default_rng(5)
  asr_text = T._pick(T.ASR_ZH + T.ASR_EN, rng())
  tts_text = T._pick(T.TTS_EN, rng())
  voice = T.Turn("system", (T.VOICE_PROMPT, C))
  dialogue = [T.Turn("user", (A,)), T.Turn("assistant", (T.Speech("sure", B),)),
              T.Turn("user", (B,))]
  cases = {
      "asr_sft": (T.asr_sft(fmt, A, "hello", rng()),
                  [T.Turn("user", (A, asr_text)), T.Turn("assistant", ("hello",))]),
      "tts_sft": (T.tts_sft(fmt, "good day", A, rng()),
                  [T.Turn("user", (f"{tts_text}: good day",)),
                   T.Turn("assistant", (T.Speech("good day", A),))]),
      "instruct_tts_sft": (T.instruct_tts_sft(fmt, "good day", "loudly", A, C, rng()), [
          T.Turn("system", (T.VOICE_STYLE_SYSTEM, C)),
          T.Turn("user", (f"{tts_text}: good day(loudly)",)),
          T.Turn("assistant", (T.EMPTY_THOUGHT, T.Speech("good day", A)), thinking=True)]),
      "audio_understanding_sft": (T.audio_understanding_sft(fmt, A, "who?", "a man"),
                                  [T.Turn("user", (A, "who?")), T.Turn("assistant", ("a man",))]),
      "spoken_dialogue_sft": (T.spoken_dialogue_sft(fmt, dialogue, T.Speech("ok", C), C),
                              [voice, *dialogue, T.Turn("assistant", (T.Speech("ok", C),))]),
      "s2t_dialogue_sft": (T.s2t_dialogue_sft(fmt, dialogue[:1], "fine"),
                           [*dialogue[:1], T.Turn("assistant", ("fine",))]),
      "text_dialogue_sft": (T.text_dialogue_sft(fmt, [T.Turn("user", ("hi",))], "hello"),
                            [T.Turn("user", ("hi",)), T.Turn("assistant", ("hello",))]),
  }
  assert set(cases) | {"chat"} == set(T.CHAT_TASKS)
  for task, (template, turns) in cases.items():
    ex = T.conversation(fmt, task, turns)
    np.testing.assert_array_equal(ex.ids_kl, template.ids_kl, err_msg=task)
    assert ex.prompt_positions == template.prompt_positions, task
    assert ex.stop_tokens == template.stop_tokens, task
    n_replies = sum(t.role == "assistant" for t in turns)
    assert len(_assistant_runs(ex)) == n_replies, task
    if n_replies == 1:
      np.testing.assert_array_equal(ex.loss_mask_p, template.loss_mask_p, err_msg=task)
    else:
      assert (ex.loss_mask_p >= template.loss_mask_p).all(), task

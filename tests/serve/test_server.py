"""The real server on localhost (uvicorn in a thread, one per module) driven with httpx: greedy
answers are the same concurrent and alone (and the same as `MimoAudio.stream`'s), streams arrive
in chunks before the answer ends, a client that goes away frees its slot, a full queue answers
429, malformed input gets its 4xx and the server goes on, /metrics parses."""

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from mimo_jax import serve
from mimo_jax.data import templates
from mimo_jax.lm.sampling import GREEDY
from mimo_jax.serve import api, slots
from tests.serve.conftest import EMPTY

SLOTS, MAX_QUEUE, MAX_NEW, CHUNK = 2, 2, 16, 2
LIMITS = api.Limits(max_body_bytes=1 << 20, max_audio_s=3.0, max_text_chars=200, timeout_s=120)
TEXTS = ["hi", "good morning", "one two three"]


@pytest.fixture(scope="module")
def url(speaking):
  voice_tc = speaking.encode_audio(np.sin(np.arange(24000) / 10).astype(np.float32), 24000)
  app, _ = serve.build(speaking, shape=slots.Shape(SLOTS, 256, MAX_NEW), chunk_steps=CHUNK,
                       max_queue=MAX_QUEUE, voices={"calm": voice_tc}, limits=LIMITS)
  with serve.running(app) as base_url:
    yield base_url


def _speech(text, **extra):
  return {"model": "mimo-audio", "input": text, "voice": "default", "response_format": "pcm",
          "temperature": 0, **extra}


def _wav_bytes(seconds, sr=16000, fmt="WAV"):
  out = io.BytesIO()
  soundfile.write(out, 0.1 * np.sin(np.arange(int(seconds * sr)) / 7), sr, format=fmt)
  return out.getvalue()


def _health(url):
  return httpx.get(f"{url}/health").json()


def _wait_for(condition, timeout_s=60.0):
  end = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < end, "timed out"
    time.sleep(0.02)


def test_greedy_answers_are_the_same_concurrent_and_alone(url, speaking):
  """Each text's audio alone (sequential requests), then all at once with more requests than
  slots (so some wait and are inserted while others decode): byte-equal PCM, and equal to
  `MimoAudio.stream` with the same chunking (batch 1, no slots), so token for token the same."""
  alone = [httpx.post(f"{url}/v1/audio/speech", json=_speech(t), timeout=120) for t in TEXTS]
  assert [r.status_code for r in alone] == [200] * len(TEXTS)

  async def together():
    async with httpx.AsyncClient(timeout=120) as client:
      return await asyncio.gather(*[client.post(f"{url}/v1/audio/speech", json=_speech(t))
                                    for t in TEXTS])

  concurrent = asyncio.run(together())
  for text, a, c in zip(TEXTS, alone, concurrent):
    assert c.status_code == 200
    assert len(a.content) > 0, text
    assert a.content == c.content, text
    streamed = np.concatenate(list(speaking.stream(
        templates.tts_sft(speaking.fmt, text), max_new=MAX_NEW, chunk_steps=CHUNK,
        text_sampler=GREEDY, audio_sampler=GREEDY, scfg=LIMITS.stream)))
    np.testing.assert_array_equal(np.frombuffer(a.content, "<i2"),
                                  np.frombuffer(serve.audio.pcm16(streamed), "<i2"))


def test_speech_streams_chunks_before_the_answer_ends(url):
  """A WAV header with the first audio, then more chunks as they are decoded: the first comes
  well before the response ends."""
  arrivals = []
  with httpx.stream("POST", f"{url}/v1/audio/speech",
                    json=_speech("hi", response_format="wav"), timeout=120) as r:
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    start = time.monotonic()
    for chunk in r.iter_raw():
      arrivals.append((time.monotonic() - start, chunk))
  assert arrivals[0][1][:4] == b"RIFF" and len(arrivals[0][1]) > 44  # header + audio
  assert len(arrivals) >= 3, [t for t, _ in arrivals]
  assert arrivals[-1][0] > arrivals[0][0], [t for t, _ in arrivals]


def test_a_client_that_goes_away_frees_its_slot(url):
  cancelled = _ended(url, "cancelled")
  with httpx.stream("POST", f"{url}/v1/audio/speech", json=_speech("hi"), timeout=120) as r:
    assert r.status_code == 200
    next(r.iter_raw())
    assert _health(url)["busy"] == 1
  _wait_for(lambda: _health(url)["busy"] == 0)
  assert _ended(url, "cancelled") == cancelled + 1  # ended early, not done
  assert httpx.post(f"{url}/v1/audio/speech", json=_speech("hi"), timeout=120).status_code == 200


def test_a_full_queue_answers_429(url):
  """Twice as many requests at once as slots and queue places hold: the ones that find the
  queue full get 429 (queue_full), the others their audio; the server goes on."""
  async def run():
    async with httpx.AsyncClient(timeout=120) as client:
      return await asyncio.gather(*[client.post(f"{url}/v1/audio/speech", json=_speech("hi"))
                                    for _ in range(2 * (SLOTS + MAX_QUEUE))])

  codes = [r.status_code for r in asyncio.run(run())]
  assert 429 in codes and set(codes) == {200, 429}, codes
  assert codes.count(200) > MAX_QUEUE, codes  # a slot and the queue were used
  refused = _families(url)["mimo_errors"].samples
  assert any(s.labels == {"kind": "queue_full"} and s.value == codes.count(429)
             for s in refused if s.name.endswith("_total")), refused
  assert httpx.post(f"{url}/v1/audio/speech", json=_speech("hi"), timeout=120).status_code == 200


@pytest.mark.parametrize("case", [
    "corrupt_audio", "empty_audio", "long_audio", "missing_file", "misspelt_field",
    "missing_voice", "unknown_voice", "chunked_unknown_voice", "mp3_format", "oversize_body",
    "oversize_chunked_body", "bad_base64", "long_text",
    "long_prompt", "audio_out_without_voice", "multi_token_stop", "max_tokens_over_limit",
])
def test_malformed_input_gets_its_4xx_and_the_server_goes_on(url, case):
  speech, chat = f"{url}/v1/audio/speech", f"{url}/v1/chat/completions"
  transcribe = f"{url}/v1/audio/transcriptions"
  user = lambda content: {"model": "m", "messages": [{"role": "user", "content": content}]}
  audio_part = lambda data: [{"type": "input_audio", "input_audio": {"data": data}}]
  requests = {
      "corrupt_audio": (400, "bad_audio", lambda: httpx.post(
          transcribe, data={"model": "m"}, files={"file": ("a.wav", b"RIFF garbage")})),
      "empty_audio": (400, "bad_audio", lambda: httpx.post(
          transcribe, data={"model": "m"}, files={"file": ("a.wav", b"")})),
      "long_audio": (413, "audio_too_long", lambda: httpx.post(
          transcribe, data={"model": "m"}, files={"file": ("a.wav", _wav_bytes(4))})),
      "missing_file": (400, "bad_request", lambda: httpx.post(transcribe, data={"model": "m"})),
      "misspelt_field": (400, "bad_request", lambda: httpx.post(
          speech, json={**_speech("hi"), "inptu": "x"})),
      "missing_voice": (400, "bad_request", lambda: httpx.post(
          speech, json={"model": "m", "input": "hi"})),
      "unknown_voice": (400, "unknown_voice", lambda: httpx.post(
          speech, json=_speech("hi", voice="alloy"))),
      "mp3_format": (400, "bad_request", lambda: httpx.post(
          speech, json=_speech("hi", response_format="mp3"))),
      "oversize_body": (413, "body_too_large", lambda: httpx.post(
          transcribe, data={"model": "m"}, files={"file": ("a.wav", b"0" * (2 << 20))})),
      # Chunked (no Content-Length): read (its voice is named) or, over the limit, refused.
      "chunked_unknown_voice": (400, "unknown_voice", lambda: httpx.post(
          speech, content=iter([json.dumps(_speech("hi", voice="alloy")).encode()]),
          headers={"content-type": "application/json"})),
      "oversize_chunked_body": (413, "body_too_large", lambda: httpx.post(
          speech, content=(b"0" * (1 << 16) for _ in range(32)),
          headers={"content-type": "application/json"})),
      "bad_base64": (400, "bad_audio", lambda: httpx.post(chat, json=user(audio_part("%%")))),
      "long_text": (413, "text_too_long", lambda: httpx.post(speech, json=_speech("a" * 201))),
      "long_prompt": (413, "prompt_too_long", lambda: httpx.post(
          chat, json={"model": "m", "messages": [{"role": "user", "content": "word " * 39}] * 8})),
      "audio_out_without_voice": (400, "bad_request", lambda: httpx.post(
          chat, json={**user("hi"), "modalities": ["text", "audio"]})),
      "multi_token_stop": (400, "bad_request", lambda: httpx.post(
          chat, json={**user("hi"), "stop": ["a long stop string"]})),
      "max_tokens_over_limit": (400, "bad_request", lambda: httpx.post(
          chat, json={**user("hi"), "max_tokens": MAX_NEW + 1})),
  }
  status, kind, send = requests[case]
  response = send()
  assert response.status_code == status, response.text
  error = response.json()["error"]
  assert error["type"] == kind and error["message"], error
  assert _health(url)["status"] == "ok"


def test_transcription_and_chat_answer_in_openai_shapes(url, speaking):
  wav = _wav_bytes(1)
  r = httpx.post(f"{url}/v1/audio/transcriptions", data={"model": "m"},
                 files={"file": ("a.wav", wav)}, timeout=120)
  assert r.status_code == 200 and isinstance(r.json()["text"], str)
  audio_b64 = base64.b64encode(wav).decode()
  body = {"model": "m", "modalities": ["text", "audio"], "audio": {"voice": "calm"},
          "temperature": 0, "max_tokens": 8,
          "messages": [{"role": "user", "content": [
              {"type": "text", "text": "Say hi."},
              {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}}]}]}
  r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
  assert r.status_code == 200, r.text
  message = r.json()["choices"][0]["message"]
  reply, sr = soundfile.read(io.BytesIO(base64.b64decode(message["audio"]["data"])))
  assert sr == 24000 and len(reply) > 0 and isinstance(message["audio"]["transcript"], str)
  # The same as server-sent events: audio deltas, then a finish reason, then [DONE].
  lines = []
  with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                    timeout=120) as r:
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.iter_lines() if line]
  assert lines[-1] == "data: [DONE]"
  chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
  pcm = b"".join(base64.b64decode(c["choices"][0]["delta"].get("audio", {}).get("data", ""))
                 for c in chunks)
  assert len(pcm) == 2 * len(reply)
  assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_speech_in_a_voice_with_a_style_instruction(url):
  """`instructions` and a `--voices` voice: the official instruction-TTS prompt with the voice's
  audio (the reply opens with its reasoning block, so the audio may be empty)."""
  r = httpx.post(f"{url}/v1/audio/speech", timeout=120, json=_speech(
      "hi", voice="calm", instructions="slowly", response_format="flac"))
  assert r.status_code == 200, r.text
  wav, sr = soundfile.read(io.BytesIO(r.content)) if r.content else (np.zeros(0), 24000)
  assert sr == 24000 and wav.ndim == 1


def _families(url):
  return {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def _ended(url, how):
  return next(s.value for s in _families(url)["mimo_requests_ended"].samples
              if s.labels == {"how": how} and s.name.endswith("_total"))


def test_metrics_parse(url):
  assert httpx.post(f"{url}/v1/audio/speech", json=_speech("hi"), timeout=120).status_code == 200
  families = _families(url)
  for name in ("mimo_queue_depth", "mimo_slots_busy", "mimo_slots", "mimo_generated_tokens",
               "mimo_generated_tokens_per_second", "mimo_audio_seconds",
               "mimo_audio_seconds_per_second", "mimo_time_to_first_audio_seconds",
               "mimo_request_duration_seconds", "mimo_requests", "mimo_errors",
               "mimo_requests_ended"):
    assert name in families, name
  value = lambda name: families[name].samples[0].value
  assert value("mimo_slots") == SLOTS
  assert value("mimo_generated_tokens") >= MAX_NEW
  assert value("mimo_audio_seconds") > 0
  count = [s for s in families["mimo_time_to_first_audio_seconds"].samples
           if s.name.endswith("_count")]
  assert count[0].value >= 1

"""The HTTP API (OpenAI's shapes) over a `ServingLoop` of `MimoAudio` generation slots.

Each request becomes one `generate.Request` (the task templates and official sampler presets
of `MimoAudio`), waits in the loop's queue for a slot, and is read back through an
`inference.AnswerStream` as its steps come. Bad input is answered with a 4xx and an OpenAI-style
error body naming what was wrong, and counted in `mimo_errors{kind}`; the server goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import fastapi
import numpy as np
import pydantic
from fastapi import responses
from fastapi.exceptions import RequestValidationError

from mimo_jax import inference
from mimo_jax.codec import streaming
from mimo_jax.data import templates
from mimo_jax.lm import generate as gen
from mimo_jax.lm import sampling
from mimo_jax.serve import audio
from mimo_jax.serve.loop import QueueFull, ServingLoop
from mimo_jax.serve.metrics import Metrics

SAMPLE_RATE = 24000  # of the codec's output


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 25 << 20  # OpenAI's upload limit
  max_audio_s: float = 60.0  # per input audio
  max_text_chars: int = 4096  # per text field (OpenAI's for speech input)
  timeout_s: float = 300.0  # per request, queue wait included
  # Audio the codec's streaming decode holds back (frames) before it emits: smaller than the
  # official 40 so that the first audio of a short answer comes early.
  stream: streaming.StreamingConfig = streaming.StreamingConfig(right_overlap=8)


class ApiError(Exception):
  def __init__(self, status: int, kind: str, message: str):
    super().__init__(message)
    self.status, self.kind = status, kind


# --- request bodies ---------------------------------------------------------------------------


class _Body(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class SpeechBody(_Body):
  model: str
  input: str = pydantic.Field(min_length=1)
  voice: str
  response_format: Literal["wav", "pcm", "flac"] = "wav"
  speed: Literal[1.0] = 1.0
  instructions: str | None = None  # a speaking style (`templates.instruct_tts_sft`)
  # Ours: official sampler presets unless given; "given" imposes the text (`STREAM_TEXT`).
  temperature: float | None = pydantic.Field(None, ge=0)
  seed: int = 0
  stream_text: Literal["free", "given"] = "free"


class InputAudio(_Body):
  data: str  # base64
  format: Literal["wav", "mp3", "flac", "ogg"] = "wav"


class ContentPart(_Body):
  type: Literal["text", "input_audio"]
  text: str | None = None
  input_audio: InputAudio | None = None


class Message(_Body):
  role: Literal["system", "user", "assistant"]
  content: str | list[ContentPart] | None = None
  name: str | None = None


class AudioOut(_Body):
  voice: str
  format: Literal["wav", "pcm16"] = "wav"


class ChatBody(_Body):
  model: str
  messages: list[Message] = pydantic.Field(min_length=1)
  modalities: list[Literal["text", "audio"]] = ["text"]
  audio: AudioOut | None = None
  stream: bool = False
  temperature: float | None = pydantic.Field(None, ge=0)
  max_tokens: int | None = pydantic.Field(None, ge=1)
  max_completion_tokens: int | None = pydantic.Field(None, ge=1)
  seed: int = 0
  stop: str | list[str] | None = None


# --- the server -------------------------------------------------------------------------------


class Server:
  """Builds requests from API bodies and runs them through the loop."""

  def __init__(self, mimo: inference.MimoAudio, loop: ServingLoop, *, max_new: int,
               max_prompt: int, voices: dict[str, np.ndarray | None], limits: Limits):
    self.mimo, self.loop, self.limits = mimo, loop, limits
    self.max_new, self.max_prompt, self.voices = max_new, max_prompt, voices
    self.metrics = Metrics(loop)

  # --- inputs -----------------------------------------------------------------------------------

  def codes(self, data: bytes, name: str) -> np.ndarray:
    try:
      wav, sr = audio.read(data, name)
    except audio.BadAudio as e:
      raise ApiError(400, "bad_audio", str(e)) from None
    if len(wav) > self.limits.max_audio_s * sr:
      raise ApiError(413, "audio_too_long", f"{name}: {len(wav) / sr:.1f} s of audio, over the "
                     f"{self.limits.max_audio_s:g} s limit")
    return self.mimo.encode_audio(wav, sr)

  def voice(self, name: str) -> np.ndarray | None:
    if name not in self.voices:
      raise ApiError(400, "unknown_voice", f"voice: unknown {name!r}; known: {sorted(self.voices)}")
    return self.voices[name]

  def text(self, value: str, name: str) -> str:
    if len(value) > self.limits.max_text_chars:
      raise ApiError(413, "text_too_long", f"{name}: {len(value)} characters, over the "
                     f"{self.limits.max_text_chars} limit")
    return value

  def request(self, example: templates.Example, *, temperature: float | None, seed: int,
              max_new: int | None = None, stop: tuple[int, ...] = (),
              stream_text: str = "free") -> gen.Request:
    """The generation of `example` (`MimoAudio`'s preset, stop set and stream text) with the
    API's limits; a temperature replaces both presets' samplers (0: greedy)."""
    if example.n_positions > self.max_prompt:
      raise ApiError(413, "prompt_too_long", f"prompt: {example.n_positions} positions, over "
                     f"the server's {self.max_prompt} (--max_prompt)")
    if max_new is not None and max_new > self.max_new:
      raise ApiError(400, "bad_request", f"max_tokens: {max_new}, over the server's "
                     f"{self.max_new} (--max_new)")
    sampler = None if temperature is None else sampling.from_temperature(temperature)
    try:
      request = self.mimo.request(example, None, max_new or self.max_new, 0, seed, sampler,
                                   sampler, stream_text)
    except ValueError as e:
      raise ApiError(400, "bad_request", str(e)) from None
    return dataclasses.replace(request, stop_ids=request.stop_ids + stop)

  # --- running ----------------------------------------------------------------------------------

  def submit(self, request: gen.Request) -> tuple[object, asyncio.Queue]:
    events, running = asyncio.Queue(), asyncio.get_running_loop()
    try:
      job = self.loop.submit(request, self.limits.timeout_s,
                             lambda *e: running.call_soon_threadsafe(events.put_nowait, e))
    except QueueFull as e:
      raise ApiError(429, "queue_full", f"busy: {e}; retry later") from None
    return job, events

  async def pieces(self, job, events: asyncio.Queue, arrived: float
                   ) -> AsyncIterator[tuple[inference.Piece, bool]]:
    """The answer's pieces and, with the last, whether it ended on a stop token. A client that
    goes away (the iterator is closed) frees the job's slot."""
    answer = inference.AnswerStream(self.mimo, self.limits.stream)
    heard = False
    try:
      while True:
        kind, payload = await events.get()
        if kind == "timeout":
          raise ApiError(504, "timeout", f"the request ran past {self.limits.timeout_s:g} s")
        if kind == "error":
          raise ApiError(400, "bad_request", str(payload)) if isinstance(payload, ValueError) \
              else payload
        if kind == "cancelled":
          return
        self.metrics.tokens.add(len(payload.text_n))
        piece = await asyncio.to_thread(answer.feed, payload.text_n, payload.codes_ngc,
                                        kind == "done")
        if len(piece.wav):
          self.metrics.audio_seconds.add(len(piece.wav) / SAMPLE_RATE)
          if not heard:
            self.metrics.time_to_first_audio.observe(time.monotonic() - arrived)
            heard = True
        yield piece, payload.stopped
        if piece.finished:
          return
    finally:
      self.loop.cancel(job)  # a no-op once the job ended; frees the slot when it has not


async def _streaming(server: Server, job, chunks: AsyncIterator[bytes],
                     media_type: str) -> responses.Response:
  """A streamed response whose first chunk is awaited before it starts, so that a request that
  fails before it makes anything (a timeout in the queue, a refused prompt) gets its 4xx/5xx.
  However the stream ends (a client that goes away cancels it), the job's slot is freed."""
  try:
    first = await anext(chunks, b"")
  except BaseException:
    server.loop.cancel(job)
    raise

  async def body():
    try:
      yield first
      async for chunk in chunks:
        yield chunk
    finally:
      server.loop.cancel(job)

  return responses.StreamingResponse(body(), media_type=media_type)


def _error_response(e: ApiError) -> responses.JSONResponse:
  return responses.JSONResponse({"error": {"message": str(e), "type": e.kind, "code": e.status}},
                                status_code=e.status)


class _Guard:
  """ASGI middleware: stamps each request's arrival, refuses bodies over the limit (by their
  Content-Length before they are read; a chunked body, which has none, as it arrives), counts
  responses by path and status."""

  def __init__(self, inner, server: Server):
    self.inner, self.server = inner, server

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.inner(scope, receive, send)
    scope.setdefault("state", {})["arrived"] = time.monotonic()
    metrics, limit = self.server.metrics, self.server.limits.max_body_bytes
    length = dict(scope["headers"]).get(b"content-length")
    status = {}

    async def send_status(message):
      if message["type"] == "http.response.start":
        status["code"] = message["status"]
      await send(message)

    if length is None:
      receive, length = await _read_chunked(receive, limit)
    if not length.isdigit() or int(length) > limit:
      metrics.errors.labels("body_too_large").inc()
      await _error_response(ApiError(413, "body_too_large", f"body: {length.decode()} bytes, "
                                     f"over the {limit} limit"))(scope, receive, send_status)
    else:
      await self.inner(scope, receive, send_status)
    metrics.requests.labels(scope["path"], str(status.get("code", 0))).inc()


async def _read_chunked(receive, limit: int):
  """A body sent without Content-Length, read until it ends or passes `limit`: a `receive` that
  replays what was read (then the connection's own), and the bytes counted (b"over N" when it
  passed the limit, which stops the reading)."""
  messages, size = [], 0
  while True:
    message = await receive()
    messages.append(message)
    if message["type"] != "http.request":  # the client left
      break
    size += len(message.get("body", b""))
    if size > limit:
      return receive, f"over {limit}".encode()
    if not message.get("more_body"):
      break
  replay = iter(messages)

  async def receive_again():
    return next(replay, None) or await receive()

  return receive_again, str(size).encode()


def app(server: Server) -> fastapi.FastAPI:
  @contextlib.asynccontextmanager
  async def lifespan(_):
    server.loop.start()
    yield
    await asyncio.to_thread(server.loop.stop)

  api = fastapi.FastAPI(title="mimo-jax", docs_url=None, redoc_url=None, lifespan=lifespan)
  metrics = server.metrics

  api.add_middleware(_Guard, server=server)

  @api.exception_handler(ApiError)
  async def api_error(_, e: ApiError):
    metrics.errors.labels(e.kind).inc()
    return _error_response(e)

  @api.exception_handler(RequestValidationError)
  async def invalid(_, e: RequestValidationError):
    where = "; ".join(f"{'.'.join(map(str, err['loc'][1:])) or 'body'}: {err['msg']}"
                      for err in e.errors())
    return await api_error(_, ApiError(400, "bad_request", where))

  @api.get("/health")
  async def health():
    return {"status": "ok", "slots": server.loop.model.slots,
            "busy": server.loop.stats.busy, "queued": server.loop.stats.queued}

  @api.get("/metrics")
  async def prometheus():
    return responses.Response(metrics.text(), media_type="text/plain; version=0.0.4")

  @api.post("/v1/audio/transcriptions")
  async def transcriptions(request: fastapi.Request, file: fastapi.UploadFile,
                           model: str = fastapi.Form(), language: str | None = fastapi.Form(None),
                           prompt: str | None = fastapi.Form(None),
                           response_format: Literal["json", "text"] = fastapi.Form("json"),
                           temperature: float = fastapi.Form(0.0, ge=0)):
    del model, language, prompt  # the model is the one served; ASR needs no language hint
    codes_tc = await asyncio.to_thread(server.codes, await file.read(), "file")
    req = server.request(templates.asr_sft(server.mimo.fmt, codes_tc), temperature=temperature,
                         seed=0)
    job, events = server.submit(req)
    text = await _collect(request, server, job, events)
    metrics.duration.labels("transcriptions").observe(time.monotonic() - request.state.arrived)
    return (responses.PlainTextResponse(text) if response_format == "text"
            else {"text": text})

  @api.post("/v1/audio/speech")
  async def speech(request: fastapi.Request, body: SpeechBody):
    voice_tc = server.voice(body.voice)
    text = server.text(body.input, "input")
    fmt = server.mimo.fmt
    if body.instructions:  # the official instruction TTS, in the voice when one is named
      example = templates.instruct_tts_sft(fmt, text, server.text(body.instructions,
                                                                  "instructions"),
                                           voice_tc=voice_tc)
    else:
      example = (templates.tts_sft(fmt, text) if voice_tc is None else
                 _voiced_tts(fmt, text, voice_tc))
    req = server.request(example, temperature=body.temperature, seed=body.seed,
                         stream_text=body.stream_text)
    job, events = server.submit(req)
    pieces = server.pieces(job, events, request.state.arrived)
    media = audio.MEDIA_TYPES[body.response_format]
    if body.response_format in audio.STREAMED_FORMATS:
      async def chunks():
        header = audio.wav_header(SAMPLE_RATE) if body.response_format == "wav" else b""
        async for piece, _ in pieces:
          if len(piece.wav) or piece.finished:
            yield header + audio.pcm16(piece.wav)
            header = b""
        metrics.duration.labels("speech").observe(time.monotonic() - request.state.arrived)
      return await _streaming(server, job, chunks(), media)
    wav = np.concatenate([np.zeros(0, np.float32)] + [p.wav async for p, _ in pieces])
    metrics.duration.labels("speech").observe(time.monotonic() - request.state.arrived)
    return responses.Response(audio.encode(wav, SAMPLE_RATE, body.response_format),
                              media_type=media)

  @api.post("/v1/chat/completions")
  async def chat(request: fastapi.Request, body: ChatBody):
    spoken = "audio" in body.modalities
    if spoken and body.audio is None:
      raise ApiError(400, "bad_request", "audio: required when modalities include 'audio'")
    history = [await asyncio.to_thread(_turn, server, m, i) for i, m in enumerate(body.messages)]
    fmt = server.mimo.fmt
    if spoken:
      example = templates.spoken_dialogue_sft(fmt, history, voice_tc=server.voice(body.audio.voice))
    elif any(isinstance(p, np.ndarray) for t in history for p in t.parts):
      example = templates.s2t_dialogue_sft(fmt, history)
    else:
      example = templates.text_dialogue_sft(fmt, history)
    req = server.request(example, temperature=body.temperature, seed=body.seed,
                         max_new=body.max_completion_tokens or body.max_tokens,
                         stop=_stop_ids(server, body.stop))
    job, events = server.submit(req)
    pieces = server.pieces(job, events, request.state.arrived)
    reply = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model)
    audio_id = f"audio-{uuid.uuid4().hex}"
    if body.stream:
      async def events_sse():
        async for piece, stopped in pieces:
          delta = {}
          if spoken and (len(piece.wav) or piece.text):
            delta["audio"] = {"id": audio_id, "data": _b64_audio(piece.wav, "pcm16"),
                              "transcript": piece.text}
          elif piece.text:
            delta["content"] = piece.text
          finish = ("stop" if stopped else "length") if piece.finished else None
          if delta or finish:
            yield _sse({**reply, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        metrics.duration.labels("chat").observe(time.monotonic() - request.state.arrived)
        yield b"data: [DONE]\n\n"
      return await _streaming(server, job, events_sse(), "text/event-stream")
    wavs, texts, stopped = [], [], False
    async for piece, stopped in pieces:
      wavs.append(piece.wav)
      texts.append(piece.text)
    text = "".join(texts).strip()
    message = {"role": "assistant", "content": None if spoken else text}
    if spoken:
      wav = np.concatenate([np.zeros(0, np.float32)] + wavs)
      message["audio"] = {"id": audio_id, "data": _b64_audio(wav, body.audio.format),
                          "expires_at": int(time.time()) + 3600, "transcript": text}
    metrics.duration.labels("chat").observe(time.monotonic() - request.state.arrived)
    return {**reply, "object": "chat.completion",
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "stop" if stopped else "length"}]}

  return api


def _voiced_tts(fmt: templates.Formatter, text: str, voice_tc: np.ndarray) -> templates.Example:
  """TTS in a voice without a style instruction: the dialogue's system voice prompt, then the TTS
  request (the official voice prompt comes with a style instruction: `instruct_tts_sft`)."""
  plain = templates.tts_sft(fmt, text)
  turns = [templates.Turn("system", (templates.VOICE_PROMPT, voice_tc)),
           templates.Turn("user", (f"{templates.TTS_EN[0]}: {text}",))]
  example = templates.chat(fmt, "tts_sft", turns, None, speech_answer=True)
  return dataclasses.replace(example, stream_text_ids=plain.stream_text_ids)


def _turn(server: Server, message: Message, index: int) -> templates.Turn:
  name = f"messages[{index}]"
  if message.content is None:
    raise ApiError(400, "bad_request", f"{name}.content: required")
  if isinstance(message.content, str):
    return templates.Turn(message.role, (server.text(message.content, f"{name}.content"),))
  parts = []
  for j, part in enumerate(message.content):
    where = f"{name}.content[{j}]"
    if part.type == "text":
      if part.text is None:
        raise ApiError(400, "bad_request", f"{where}.text: required for a text part")
      parts.append(server.text(part.text, f"{where}.text"))
    else:
      if part.input_audio is None:
        raise ApiError(400, "bad_request", f"{where}.input_audio: required for an audio part")
      if message.role == "assistant":
        raise ApiError(400, "bad_request", f"{where}: an assistant turn's audio is not accepted")
      try:
        data = base64.b64decode(part.input_audio.data, validate=True)
      except ValueError:
        raise ApiError(400, "bad_audio", f"{where}.input_audio.data: not base64") from None
      parts.append(server.codes(data, f"{where}.input_audio"))
  return templates.Turn(message.role, tuple(parts))


def _stop_ids(server: Server, stop: str | list[str] | None) -> tuple[int, ...]:
  """OpenAI stop strings as stop tokens: each must be one token of the text tokenizer."""
  ids = []
  for s in [stop] if isinstance(stop, str) else stop or []:
    encoded = server.mimo.tokenizer.encode(s)
    if len(encoded) != 1:
      raise ApiError(400, "bad_request", f"stop: {s!r} is {len(encoded)} tokens; each stop must "
                     f"be one token")
    ids.append(int(encoded[0]))
  return tuple(ids)


def _b64_audio(wav: np.ndarray, fmt: str) -> str:
  data = audio.encode(wav, SAMPLE_RATE, "wav" if fmt == "wav" else "pcm")
  return base64.b64encode(data).decode()


def _sse(obj: dict) -> bytes:
  return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def _collect(request: fastapi.Request, server: Server, job, events) -> str:
  """A whole text answer; a client that goes away meanwhile frees the slot."""
  pieces = server.pieces(job, events, request.state.arrived)

  async def read():
    return "".join([p.text async for p, _ in pieces]).strip()

  reading = asyncio.ensure_future(read())
  while not reading.done():
    await asyncio.wait([reading], timeout=0.2)
    if not reading.done() and await request.is_disconnected():
      reading.cancel()
      await pieces.aclose()
      server.metrics.errors.labels("cancelled").inc()
      raise ApiError(499, "cancelled", "the client went away")
  return reading.result()

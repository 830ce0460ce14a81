"""Audio in and out of the HTTP API: uploads read with soundfile, answers as 16-bit PCM (raw, or
in a WAV whose header is sent before the length is known) or FLAC."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile

# OpenAI's formats we make; mp3 / opus / aac would need an encoder the project does not carry.
STREAMED_FORMATS = ("wav", "pcm")  # sent chunk by chunk as the audio is generated
FORMATS = (*STREAMED_FORMATS, "flac")  # flac: sent whole at the end
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
_UNKNOWN_SIZE = 0xFFFFFFFF  # the RIFF and data sizes of a WAV still being written


class BadAudio(ValueError):
  pass


def read(data: bytes, name: str) -> tuple[np.ndarray, int]:
  """Mono float32 samples and their rate from an uploaded file (wav, flac, ogg, mp3)."""
  if not data:
    raise BadAudio(f"{name}: empty")
  try:
    wav, sr = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
    raise BadAudio(f"{name}: cannot be read as audio ({e})") from None
  if len(wav) == 0 or not np.isfinite(wav).all():
    raise BadAudio(f"{name}: no samples, or samples that are not finite")
  return wav.mean(axis=1), int(sr)


def pcm16(wav: np.ndarray) -> bytes:
  """Signed 16-bit little-endian samples (OpenAI's `pcm`)."""
  return (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def wav_header(sr: int) -> bytes:
  """A mono 16-bit WAV header for a stream of unknown length (players read to the end)."""
  return (b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVEfmt "
          + struct.pack("<IHHIIHH", 16, 1, 1, sr, 2 * sr, 2, 16)
          + b"data" + struct.pack("<I", _UNKNOWN_SIZE))


def encode(wav: np.ndarray, sr: int, fmt: str) -> bytes:
  """A whole answer in `fmt` ("wav" and "flac" with their lengths in the header)."""
  if fmt == "pcm":
    return pcm16(wav)
  out = io.BytesIO()
  soundfile.write(out, wav, sr, format=fmt.upper(), subtype="PCM_16")
  return out.getvalue()

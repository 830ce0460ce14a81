"""The evaluation tasks: what each reads, how a batch of its items is scored, its summary.

Every task reads its items from local data (`load`), scores a batch through a backend and the
judges (`run`: one row per item), and summarises the rows (`summarize`). A row with a `skipped`
reason stands for an item that could not be scored (missing or unreadable audio, an empty
reference, ...): it is kept, so a resumed run does not retry it, and counted in the summary.

Judge scores on the reference audio itself (`ref_*` columns) sit beside the scores on generated
or reconstructed audio: a judge's error on real speech is the floor a model can be held to.

| task | data | model call | scores |
|---|---|---|---|
| asr | manifest / LibriSpeech folder | `backend.asr` | WER/CER; judge WER on the input |
| tts | Seed-TTS `meta.lst`, sentence list `.txt`, or manifest | `backend.tts` | judge WER, SIM to the prompt voice, DNSMOS |
| continuation | manifest | `backend.continue_speech` | SIM to the prompt, judge WER of prompt + continuation vs the transcript |
| codec | manifest / folder | codec encode + decode | PESQ NB/WB, STOI, SIM, kbps, DNSMOS |
| mmlu_t2t ... mmlu_s2s | SpeechMMLU folder (`choice`) | `backend.few_shot` | accuracy (option regex) |
| s2s | JSONL of in-context S2S items | `backend.in_context_s2s` | SIM to the target, judge WER vs its transcript |
| dialogue | manifest | `backend.dialogue` | non-empty speech answer; judge transcript |
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable

import numpy as np
import soundfile

from mimo_jax.codec import api as codec_api
from mimo_jax.data import manifest
from mimo_jax.data.manifest import Skips
from mimo_jax.eval import choice, codec_metrics, judges, wer

EMPTY_REFERENCE = "empty_reference"
NO_AUDIO = "no_audio"  # the model answered without speech: scored, not skipped


@dataclasses.dataclass
class Context:
  """What a task's `run` uses. backend: `backend.MimoBackend` (or a stand-in with its methods);
  codec: (params, cfg) for the codec task; judge / closed_judge: open and closed-set Sphinx;
  audio_dir: where generated audio is written; options: task settings (flags)."""

  backend: object
  judge: judges.SphinxJudge | None
  closed_judge: judges.SphinxJudge | None
  audio_dir: str
  codec: tuple | None = None
  options: dict = dataclasses.field(default_factory=dict)
  cache: dict = dataclasses.field(default_factory=dict)


class Skip(Exception):
  """An item that cannot be scored: `reason` is the count key."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


# --- reading data -----------------------------------------------------------------------------


def _records(path: str, skips: Skips) -> list[dict]:
  return [{"id": r.key, "audio": r.audio, "text": r.text, "language": r.language}
          for r in manifest.read_source(path, skips)]


def read_tts(path: str, skips: Skips) -> list[dict]:
  """Seed-TTS-eval `meta.lst` (`utt|prompt_text|prompt_wav|text`, its ground truth at
  `wavs/<utt>.wav` when present), a `.txt` list of sentences, or a manifest (text + reference
  audio, whose voice is the prompt voice)."""
  if path.endswith(".jsonl") or path.endswith(".json") or os.path.isdir(path):
    return [{"id": r["id"], "text": r["text"], "prompt_wav": r["audio"], "reference": r["audio"],
             "language": r["language"]} for r in _records(path, skips)]
  base = os.path.dirname(path)
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if not path.endswith(".lst"):
        items.append({"id": f"line{number:05d}", "text": line})
        continue
      fields = line.split("|")
      if len(fields) < 4:
        skips.add(manifest.MALFORMED_LINE, f"meta.lst:{number}",
                  f"{path}:{number}: expected utt|prompt_text|prompt_wav|text, got {line!r}")
        continue
      utt, prompt_text, prompt_wav, text = fields[:4]
      reference = os.path.join(base, "wavs", f"{utt}.wav")
      items.append({"id": utt, "text": text, "prompt_text": prompt_text,
                    "prompt_wav": os.path.join(base, prompt_wav),
                    "reference": reference if os.path.exists(reference) else ""})
  return items


def read_s2s(path: str, skips: Skips) -> list[dict]:
  """In-context S2S items, JSONL: {"id", "source", "target", "target_text", "instruction"
  (optional), "shots": [{"source", "target", "target_text"}]}; paths relative to the file."""
  base = os.path.dirname(path)
  resolve = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        raw = json.loads(line)
        items.append({"id": str(raw["id"]), "source": resolve(raw["source"]),
                      "target": resolve(raw["target"]), "target_text": str(raw["target_text"]),
                      "instruction": str(raw.get("instruction", "")),
                      "shots": [(resolve(s["source"]), resolve(s["target"]),
                                 str(s["target_text"])) for s in raw["shots"]]})
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        skips.add(manifest.MALFORMED_LINE, f"{os.path.basename(path)}:{number}",
                  f"{path}:{number}: {type(e).__name__}: {e}")
  return items


# --- shared scoring ---------------------------------------------------------------------------


def load_wav(ctx: Context, path: str) -> np.ndarray:
  """A file as mono float32 at the backend's rate, cached per run; Skip when unusable."""
  if path not in ctx.cache:
    try:
      wav, sr = codec_api.load_audio(path)
      ctx.cache[path] = codec_api.prepare_audio(wav, sr, ctx.codec[1], path)
    except codec_api.AudioError as e:
      raise Skip(e.reason, str(e)) from None
  return ctx.cache[path]


def _rate(ctx: Context) -> int:
  return ctx.codec[1].sampling_rate


def _judge_text(ctx: Context, prefix: str, wav: np.ndarray, text: str, language: str) -> dict:
  """Judge transcripts and WER (open and closed set) of speech that should say `text`."""
  out = {}
  if (language or ("zh" if wer.is_chinese(text) else "en")) != "en":
    return {f"{prefix}judge_note": "pocketsphinx judges English only"}
  for mode, judge in (("open", ctx.judge), ("closed", ctx.closed_judge)):
    if judge is None:
      continue
    try:
      hyp = judge.transcribe(wav, _rate(ctx)) if len(wav) else ""
    except judges.JudgeError as e:
      hyp, out[f"{prefix}judge_note"] = "", str(e)
    out[f"{prefix}transcript_{mode}"] = hyp
    out[f"{prefix}wer_{mode}"] = wer.error_rate(text, hyp, "en")["error_rate"]
  return out


def _sim(ctx: Context, a: np.ndarray, b: np.ndarray) -> float:
  try:
    return judges.speaker_similarity(a, _rate(ctx), b, _rate(ctx))
  except judges.JudgeError:
    return math.nan


def _mos(ctx: Context, prefix: str, wav: np.ndarray) -> dict:
  if not ctx.options.get("dnsmos", True):
    return {}
  try:
    return {f"{prefix}dnsmos_{k}": v for k, v in judges.dnsmos(wav, _rate(ctx)).items()}
  except judges.JudgeError:
    return {}


def _save(ctx: Context, item_id: str, wav: np.ndarray) -> str:
  path = os.path.join(ctx.audio_dir, "".join(c if c.isalnum() or c in "-_." else "_"
                                              for c in item_id) + ".wav")
  soundfile.write(path, wav, _rate(ctx))
  return path


def _per_item(batch: list[dict], prepare: Callable, generate: Callable, score: Callable
              ) -> list[dict]:
  """prepare(item) -> inputs (or Skip); generate([inputs]) -> outputs; score(item, inputs,
  output) -> row fields. Skipped items get a row with the reason and never reach the model."""
  rows, ready = {}, []
  for item in batch:
    try:
      ready.append((item, prepare(item)))
    except Skip as e:
      rows[item["id"]] = {"id": item["id"], "skipped": e.reason, "message": str(e)}
  if ready:
    for (item, inputs), output in zip(ready, generate([x for _, x in ready])):
      rows[item["id"]] = {"id": item["id"], **score(item, inputs, output)}
  return [rows[item["id"]] for item in batch]


def _text_of(item: dict) -> str:
  if not wer.normalize(item.get("text", "")):
    raise Skip(EMPTY_REFERENCE, f"{item['id']}: empty reference text")
  return item["text"]


# --- tasks ------------------------------------------------------------------------------------


def run_asr(ctx: Context, batch: list[dict]) -> list[dict]:
  def prepare(item):
    _text_of(item)
    return load_wav(ctx, item["audio"])

  def score(item, wav, hyp):
    cut = wer.cut_asr_hypothesis(hyp)
    row = {"ref": item["text"], "hyp": cut, **wer.error_rate(item["text"], cut,
                                                              item.get("language") or None)}
    return {**row, **_judge_text(ctx, "ref_", wav, item["text"], item.get("language", ""))}

  return _per_item(batch, prepare, ctx.backend.asr, score)


def run_tts(ctx: Context, batch: list[dict]) -> list[dict]:
  def prepare(item):
    text = _text_of(item)
    voice = load_wav(ctx, item["prompt_wav"]) if item.get("prompt_wav") else None
    reference = load_wav(ctx, item["reference"]) if item.get("reference") else None
    return text, voice, reference

  def score(item, inputs, wav):
    text, voice, reference = inputs
    row = {"text": text, "audio": _save(ctx, item["id"], wav), "seconds": len(wav) / _rate(ctx)}
    if not len(wav):
      row["note"] = NO_AUDIO
    row.update(_judge_text(ctx, "", wav, text, item.get("language", "")))
    row.update(_mos(ctx, "", wav) if len(wav) else {})
    if voice is not None:
      row["sim"] = _sim(ctx, wav, voice) if len(wav) else math.nan
    if reference is not None:
      row.update(_judge_text(ctx, "ref_", reference, text, item.get("language", "")))
      row.update(_mos(ctx, "ref_", reference))
      if voice is not None and item["reference"] != item["prompt_wav"]:
        row["ref_sim"] = _sim(ctx, reference, voice)
    return row

  return _per_item(batch, prepare, lambda xs: ctx.backend.tts([x[0] for x in xs]), score)


def run_continuation(ctx: Context, batch: list[dict]) -> list[dict]:
  seconds = ctx.options.get("continuation_seconds", 3.0)

  def prepare(item):
    _text_of(item)
    wav = load_wav(ctx, item["audio"])
    cut = int(seconds * _rate(ctx))
    if len(wav) <= cut:
      raise Skip("too_short_to_continue", f"{item['id']}: {len(wav) / _rate(ctx):.2f} s is not "
                 f"longer than the {seconds} s prompt")
    return wav, wav[:cut]

  def score(item, inputs, continuation):
    full, prompt = inputs
    row = {"text": item["text"], "audio": _save(ctx, item["id"], continuation),
           "seconds": len(continuation) / _rate(ctx),
           "sim": _sim(ctx, continuation, prompt) if len(continuation) else math.nan,
           "ref_sim": _sim(ctx, full[len(prompt):], prompt)}
    if not len(continuation):
      row["note"] = NO_AUDIO
    row.update(_judge_text(ctx, "", np.concatenate([prompt, continuation]), item["text"],
                           item.get("language", "")))
    row.update(_judge_text(ctx, "ref_", full, item["text"], item.get("language", "")))
    return row

  return _per_item(batch, prepare, lambda xs: ctx.backend.continue_speech([p for _, p in xs]),
                   score)


def codec_kbps(cfg, n_q: int) -> float:
  """Bit rate of the first n_q RVQ stages: frames/s x sum of log2(codebook size)."""
  return cfg.frame_rate * sum(math.log2(k) for k in cfg.codebook_sizes[:n_q]) / 1000


def run_codec(ctx: Context, batch: list[dict]) -> list[dict]:
  params, cfg = ctx.codec
  n_q = ctx.options.get("n_q") or min(codec_api.DEFAULT_N_Q, cfg.num_quantizers)

  def reconstruct(wavs):
    codes = codec_api.encode_batch(params, cfg, wavs, cfg.sampling_rate, n_q=n_q)
    return codec_api.decode_batch(params, cfg, codes)

  def score(item, wav, recon):
    metrics = codec_metrics.all_metrics(wav, recon, cfg.sampling_rate)
    return {**metrics, "sim": _sim(ctx, codec_metrics.match_length(wav, recon), wav),
            "kbps": codec_kbps(cfg, n_q), **_mos(ctx, "", recon), **_mos(ctx, "ref_", wav)}

  return _per_item(batch, lambda item: load_wav(ctx, item["audio"]), reconstruct, score)


def run_mmlu(ctx: Context, batch: list[dict]) -> list[dict]:
  split, folder = ctx.options["split"], ctx.options["data"]
  speech_answer = split[-1] == "s"

  def prepare(item):
    parts = choice.prompt_parts(folder, item, ctx.options["shots"], split,
                                ctx.options.get("n_shots", 5))
    return parts, {p.audio: load_wav(ctx, p.audio) for p in parts if p.audio}

  def generate(inputs):
    audio = {k: v for _, a in inputs for k, v in a.items()}
    return ctx.backend.few_shot([p for p, _ in inputs], audio, speech_answer)

  def score(item, inputs, output):
    text, wav = output
    row = {"subject": item["subject"], "answer": item["answer"], "output_text": text}
    if speech_answer:
      row["audio"] = _save(ctx, item["id"], wav)
      text = row["transcript_open"] = ctx.judge.transcribe(wav, _rate(ctx)) if len(wav) else ""
    row["prediction"] = choice.extract_choice(text)
    return row

  return _per_item(batch, prepare, generate, score)


def run_s2s(ctx: Context, batch: list[dict]) -> list[dict]:
  def prepare(item):
    shots = [(load_wav(ctx, a), load_wav(ctx, b), t) for a, b, t in item["shots"]]
    return (item["instruction"], shots, load_wav(ctx, item["source"])), load_wav(
        ctx, item["target"])

  def score(item, inputs, wav):
    (_, _, source), target = inputs
    row = {"target_text": item["target_text"], "audio": _save(ctx, item["id"], wav),
           "sim": _sim(ctx, wav, target) if len(wav) else math.nan,
           "ref_sim": _sim(ctx, source, target)}  # what copying the input would score
    if not len(wav):
      row["note"] = NO_AUDIO
    row.update(_judge_text(ctx, "", wav, item["target_text"], ""))
    row.update(_judge_text(ctx, "ref_", target, item["target_text"], ""))
    return row

  return _per_item(batch, prepare, lambda xs: ctx.backend.in_context_s2s([r for r, _ in xs]),
                   score)


def run_dialogue(ctx: Context, batch: list[dict]) -> list[dict]:
  def score(item, wav, answer):
    text, speech = answer
    row = {"answer_text": text, "audio": _save(ctx, item["id"], speech),
           "seconds": len(speech) / _rate(ctx), "speech_answer": bool(len(speech))}
    if len(speech) and ctx.judge is not None:
      row["transcript_open"] = ctx.judge.transcribe(speech, _rate(ctx))
    return row

  return _per_item(batch, lambda item: load_wav(ctx, item["audio"]), ctx.backend.dialogue, score)


# --- summaries --------------------------------------------------------------------------------


def _mean(rows: list[dict], key: str) -> float | None:
  values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and
            math.isfinite(r[key])]
  return float(np.mean(values)) if values else None


def _means(rows: list[dict], keys) -> dict:
  return {k: v for k in keys if (v := _mean(rows, k)) is not None}


def _wer_summary(rows: list[dict], key: str) -> dict:
  """Macro mean of a judge WER column over the rows that have it."""
  scored = [r for r in rows if key in r]
  return {f"{key}_macro": float(np.mean([r[key] for r in scored]))} if scored else {}


_JUDGE_KEYS = ("wer_open", "wer_closed", "ref_wer_open", "ref_wer_closed")
_MOS_KEYS = tuple(f"{p}dnsmos_{k}" for p in ("", "ref_") for k in ("ovrl", "sig", "bak", "p808"))


def summarize(task: str, rows: list[dict]) -> dict:
  """Headline figures of a task's scored rows (skipped rows are counted by the caller)."""
  scored = [r for r in rows if "skipped" not in r]
  out = {"n_scored": len(scored)}
  if task == "asr":
    counts = wer.summarize(scored)
    out.update({"wer_macro": counts["macro"], "wer_corpus": counts["corpus"],
                "unit": counts["unit"]})
  if task in ("asr", "tts", "continuation", "s2s"):
    for key in _JUDGE_KEYS:
      out.update(_wer_summary(scored, key))
  if task in ("tts", "continuation", "s2s", "codec"):
    out.update(_means(scored, ("sim", "ref_sim") + _MOS_KEYS))
  if task in ("tts", "continuation", "s2s"):
    out["no_audio"] = sum(r.get("note") == NO_AUDIO for r in scored)
  if task == "codec":
    out.update(_means(scored, ("pesq_nb", "pesq_wb", "stoi", "si_sdr", "mel_distance", "kbps")))
  if task.startswith("mmlu_"):
    out.update(choice.summarize(scored))
  if task == "dialogue":
    out["speech_answer_rate"] = (sum(r["speech_answer"] for r in scored) / len(scored)
                                 if scored else math.nan)
  return out


TASKS = ("asr", "tts", "continuation", "codec", "s2s", "dialogue") + tuple(
    f"mmlu_{s}" for s in choice.SPLITS)
RUNNERS = {"asr": run_asr, "tts": run_tts, "continuation": run_continuation, "codec": run_codec,
           "s2s": run_s2s, "dialogue": run_dialogue,
           **{f"mmlu_{s}": run_mmlu for s in choice.SPLITS}}
NEEDS_MODEL = frozenset(TASKS) - {"codec"}

"""The evaluation tasks: what each reads, how a batch of its items is scored, its summary.

Every task reads its items from local data (`load`), scores a batch through a backend and the
judges (`run`: one row per item), and summarises the rows (`summarize`). A row with a `skipped`
reason stands for an item that could not be scored (missing or unreadable audio, an empty
reference, ...): it is kept, so a resumed run does not retry it, and counted in the summary.

Judge scores on the reference audio itself (`ref_*` columns) sit beside the scores on generated
or reconstructed audio: a judge's error on real speech is the floor a model can be held to.

| task | data | model call | scores |
|---|---|---|---|
| asr | manifest / LibriSpeech folder | `backend.asr` | WER/CER; judges on the input |
| tts | Seed-TTS meta.lst, .txt sentences, manifest | `backend.tts` | judges, SIM, DNSMOS, length |
| continuation | manifest | `backend.continue_speech` | SIM to the prompt, judges |
| codec | manifest / folder | codec encode + decode | PESQ NB/WB, STOI, SIM, kbps, DNSMOS, judges |
| mmlu_t2t ... mmlu_s2s | SpeechMMLU folder (`choice`) | `backend.few_shot` | accuracy (regex) |
| s2s | JSONL of in-context S2S items | `backend.in_context_s2s` | SIM to the target, judges |
| dialogue | manifest | `backend.dialogue` | non-empty speech answer |

Judge columns of a row (prefix `ref_` on the reference audio): `open_transcript` / `open_wer`
(open-vocabulary pocketsphinx), `closed_transcript` / `closed_wer` / `closed_correct` (the
closed-set judge's answer, its WER against the asked sentence in the judge's spelling, and
whether it named that sentence). `summarize` documents the summary's keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from mimo_jax.lm import sampling

EMPTY_REFERENCE = "empty_reference"
NO_AUDIO = "no_audio"  # the model answered without speech: scored, not skipped
GENERATION_REFUSED = "generation_refused"


class Judged:
  """The judges' answers by (judge, audio samples), and the closed-set judges by sentence set,
  for one whole evaluation. The judges are deterministic, and a reference clip recurs in every
  task and checkpoint that reads it (ASR, TTS and codec over one manifest, for each of the
  `learn` recipe's three checkpoints): each clip is judged once."""

  def __init__(self):
    self._answers: dict[tuple, object] = {}
    self._closed: dict[frozenset, judges.SphinxJudge] = {}

  def closed_judge(self, sentences: list[str]) -> judges.SphinxJudge:
    key = frozenset(sentences)
    if key not in self._closed:
      self._closed[key] = judges.SphinxJudge(sentences)
    return self._closed[key]

  def __call__(self, judge: object, wav: np.ndarray, compute: Callable[[], object]):
    """compute()'s answer for `judge` on `wav`, computed on the first call only. judge: the
    judge object, or a name for a judge function."""
    wav = np.ascontiguousarray(wav)
    digest = hashlib.blake2b(wav.tobytes(), digest_size=16).digest()
    key = (judge, wav.shape, wav.dtype.str, digest)
    if key not in self._answers:
      self._answers[key] = compute()
    return self._answers[key]


@dataclasses.dataclass
class Context:
  """What a task's `run` uses. backend: `backend.MimoBackend` (or a stand-in with its methods);
  codec: (params, cfg) for the codec task; judge / closed_judge: open and closed-set Sphinx;
  audio_dir: where generated audio is written; options: task settings (flags); judged: the
  judges' answers so far (shared by every context of one evaluation)."""

  backend: object
  judge: judges.SphinxJudge | None
  closed_judge: judges.SphinxJudge | None
  audio_dir: str
  codec: tuple | None = None
  options: dict = dataclasses.field(default_factory=dict)
  cache: dict = dataclasses.field(default_factory=dict)
  judged: Judged = dataclasses.field(default_factory=Judged)


class Skip(Exception):
  """An item that cannot be scored: `reason` is the count key."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


# --- reading data -----------------------------------------------------------------------------


def _records(path: str, skips: Skips) -> list[dict]:
  return [{"id": r.key, "audio": r.audio, "text": r.text, "language": r.language}
          for r in manifest.utterances(manifest.read_source(path, skips), skips)]


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


def _wer_fields(prefix: str, reference: str, hypothesis: str, language: str | None) -> dict:
  """`<prefix>wer` of one utterance, with its error and reference-word counts for the corpus
  figure."""
  rate = wer.error_rate(reference, hypothesis, language)
  return {f"{prefix}wer": rate["error_rate"], f"{prefix}errors": rate["errors"],
          f"{prefix}units": rate["ref_units"]}


def _judge_text(ctx: Context, prefix: str, wav: np.ndarray, text: str, language: str) -> dict:
  """Judge transcripts and WER (open and closed set) of speech that should say `text`."""
  out = {}
  if (language or ("zh" if wer.is_chinese(text) else "en")) != "en":
    return {f"{prefix}judge_note": "pocketsphinx judges English only"}
  for mode, judge in (("open", ctx.judge), ("closed", ctx.closed_judge)):
    if judge is None:
      continue
    try:
      hyp = (ctx.judged(judge, wav, lambda judge=judge: judge.transcribe(wav, _rate(ctx)))
             if len(wav) else "")
    except judges.JudgeError as e:
      hyp, out[f"{prefix}judge_note"] = "", str(e)
    # The closed judge answers in its own spelling (words it cannot say dropped): compare alike.
    asked = judge.spell(text) if mode == "closed" else text
    if not asked:
      out[f"{prefix}judge_note"] = f"the {mode}-set judge can say no word of {text!r}"
      continue
    out[f"{prefix}{mode}_transcript"] = hyp
    out.update(_wer_fields(f"{prefix}{mode}_", asked, hyp, "en"))
    if mode == "closed":
      out[f"{prefix}closed_correct"] = hyp == asked
  return out


def _sim(ctx: Context, a: np.ndarray, b: np.ndarray) -> float:
  """judges.speaker_similarity, from the clips' voice embeddings (each computed once)."""
  try:
    embedding_a, embedding_b = (
        ctx.judged("voice_embedding", w, lambda w=w: judges.voice_embedding(w, _rate(ctx)))
        for w in (a, b))
    return float(np.dot(embedding_a, embedding_b))
  except judges.JudgeError:
    return math.nan


def _mos(ctx: Context, prefix: str, wav: np.ndarray) -> dict:
  if not ctx.options.get("dnsmos", True):
    return {}
  try:
    scores = ctx.judged("dnsmos", wav, lambda: judges.dnsmos(wav, _rate(ctx)))
    return {f"{prefix}dnsmos_{k}": v for k, v in scores.items()}
  except judges.JudgeError:
    return {}


def _save(ctx: Context, item_id: str, wav: np.ndarray) -> str:
  path = os.path.join(ctx.audio_dir, "".join(c if c.isalnum() or c in "-_." else "_"
                                              for c in item_id) + ".wav")
  soundfile.write(path, wav, _rate(ctx))
  return path


def _generate_each(generate: Callable, ready: list[tuple[dict, object]]) -> list:
  """generate's outputs for `ready` (item, inputs) pairs, or a Skip in place of each request the
  model refuses (ValueError: a prompt or given text beyond its limits). A refused batch is split
  in halves until the refused requests are alone, so the others are still generated together."""
  try:
    return list(generate([x for _, x in ready]))
  except ValueError as e:
    if len(ready) == 1:
      return [Skip(GENERATION_REFUSED, f"{ready[0][0]['id']}: {e} (a longer --max_new may fit "
                   f"it)")]
    half = len(ready) // 2
    return _generate_each(generate, ready[:half]) + _generate_each(generate, ready[half:])


def _per_item(batch: list[dict], prepare: Callable, generate: Callable, score: Callable
              ) -> list[dict]:
  """prepare(item) -> inputs (or Skip); generate([inputs]) -> outputs; score(item, inputs,
  output) -> row fields. Skipped items get a row with the reason and never reach the model."""
  rows, ready = {}, []

  def skip(item, e: Skip):
    rows[item["id"]] = {"id": item["id"], "skipped": e.reason, "message": str(e)}

  for item in batch:
    try:
      ready.append((item, prepare(item)))
    except Skip as e:
      skip(item, e)
  if ready:
    for (item, inputs), output in zip(ready, _generate_each(generate, ready)):
      if isinstance(output, Skip):
        skip(item, output)
      else:
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


def _generate_kwargs(ctx: Context) -> dict:
  """Options a TTS generation takes from the flags (`MimoAudio.generate`'s own defaults else)."""
  kwargs = {"stream_text": ctx.options["stream_text"]} if "stream_text" in ctx.options else {}
  if ctx.options.get("tts_audio_temperature") is not None:
    kwargs["audio_sampler"] = sampling.from_temperature(ctx.options["tts_audio_temperature"])
  return kwargs


def run_tts(ctx: Context, batch: list[dict]) -> list[dict]:
  def prepare(item):
    text = _text_of(item)
    voice = load_wav(ctx, item["prompt_wav"]) if item.get("prompt_wav") else None
    reference = load_wav(ctx, item["reference"]) if item.get("reference") else None
    return text, voice, reference

  def generate(inputs):
    wavs = ctx.backend.tts([x[0] for x in inputs], **_generate_kwargs(ctx))
    if not ctx.options.get("self_asr"):
      return [(w, None) for w in wavs]
    # The model's own ASR of what it said: a second judge, one more batched generation.
    spoken = [w for w in wavs if len(w)]
    heard = iter(ctx.backend.asr(spoken) if spoken else [])
    return [(w, wer.cut_asr_hypothesis(next(heard)) if len(w) else "") for w in wavs]

  def score(item, inputs, output):
    text, voice, reference = inputs
    wav, heard = output
    row = {"text": text, "audio": _save(ctx, item["id"], wav), "seconds": len(wav) / _rate(ctx)}
    if not len(wav):
      row["note"] = NO_AUDIO
    row.update(_judge_text(ctx, "", wav, text, item.get("language", "")))
    row.update(_mos(ctx, "", wav) if len(wav) else {})
    if heard is not None:
      row["self_asr_transcript"] = heard
      row.update(_wer_fields("self_asr_", text, heard, item.get("language") or None))
    if voice is not None:
      row["sim"] = _sim(ctx, wav, voice) if len(wav) else math.nan
    if reference is not None:
      row["ref_seconds"] = len(reference) / _rate(ctx)
      row["duration_ratio"] = row["seconds"] / row["ref_seconds"]
      row.update(_judge_text(ctx, "ref_", reference, text, item.get("language", "")))
      row.update(_mos(ctx, "ref_", reference))
      if voice is not None and item["reference"] != item["prompt_wav"]:
        row["ref_sim"] = _sim(ctx, reference, voice)
    return row

  return _per_item(batch, prepare, generate, score)


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
    row = {**metrics, "sim": _sim(ctx, codec_metrics.match_length(wav, recon), wav),
           "kbps": codec_kbps(cfg, n_q), **_mos(ctx, "", recon), **_mos(ctx, "ref_", wav)}
    # With a transcript, the judges' scores on the reconstruction bound what any TTS through
    # this codec can reach; beside them, the same judges on the original.
    if wer.normalize(item.get("text", "")):
      language = item.get("language", "")
      row.update(_judge_text(ctx, "", recon, item["text"], language))
      row.update(_judge_text(ctx, "ref_", wav, item["text"], language))
    return row

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
      text = row["open_transcript"] = ctx.judge.transcribe(wav, _rate(ctx)) if len(wav) else ""
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
      row["open_transcript"] = ctx.judge.transcribe(speech, _rate(ctx))
    return row

  return _per_item(batch, lambda item: load_wav(ctx, item["audio"]), ctx.backend.dialogue, score)


# --- summaries --------------------------------------------------------------------------------


def _finite(rows: list[dict], key: str) -> list[float]:
  return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and
          math.isfinite(r[key])]


def _mean(rows: list[dict], key: str) -> dict:
  values = _finite(rows, key)
  return {"mean": float(np.mean(values)) if values else None, "n": len(values)}


def _rates(rows: list[dict], prefix: str) -> dict:
  """Macro (mean of per-item rates) and corpus (all errors / all reference words) of the
  `<prefix>wer` / `<prefix>errors` / `<prefix>units` columns."""
  scored = [r for r in rows if f"{prefix}wer" in r]
  units = sum(r[f"{prefix}units"] for r in scored)
  return {"macro": float(np.mean([r[f"{prefix}wer"] for r in scored])) if scored else None,
          "corpus": sum(r[f"{prefix}errors"] for r in scored) / units if units else None,
          "n": len(scored)}


def _accuracy(rows: list[dict], key: str) -> float | None:
  judged = [r[key] for r in rows if key in r]
  return sum(judged) / len(judged) if judged else None


def _judges(rows: list[dict]) -> dict:
  out = {}
  for prefix in ("", "ref_"):
    for mode in ("open", "closed"):
      out[f"{prefix}{mode}_wer"] = _rates(rows, f"{prefix}{mode}_")
    out[f"{prefix}closed_accuracy"] = _accuracy(rows, f"{prefix}closed_correct")
  model, floor = out["open_wer"]["macro"], out["ref_open_wer"]["macro"]
  out["open_wer_vs_reference"] = model / floor if model is not None and floor else None
  return out


_MOS = tuple(f"{p}dnsmos_{k}" for p in ("", "ref_") for k in ("ovrl", "sig", "bak", "p808"))
_CODEC = ("pesq_nb", "pesq_wb", "stoi", "si_sdr", "mel_distance", "kbps")


def summarize(task: str, rows: list[dict]) -> dict:
  """Headline figures of a task's rows; skipped rows are left out (the caller counts them).

  Keys (every key of a task is always present; a figure nothing was scored for is null):
  - `n_scored`: rows scored.
  - error rates, {"macro", "corpus", "n"}: `wer` (asr: the model's WER, or CER for Chinese,
    with "unit"), `open_wer` / `closed_wer` (judges on the model's audio), `ref_open_wer` /
    `ref_closed_wer` (the same judges on the reference audio), `self_asr_wer` (tts: the model's
    own ASR of its speech).
  - `closed_accuracy` / `ref_closed_accuracy`: share of judged items whose closed-set answer is
    the asked sentence. `open_wer_vs_reference`: open_wer.macro / ref_open_wer.macro.
  - means, {"mean", "n"}: `sim` (speaker similarity to the prompt voice or input), `ref_sim`,
    `seconds`, `ref_seconds`, `duration_ratio` (generated / reference seconds), `dnsmos_*` /
    `ref_dnsmos_*` (ovrl, sig, bak, p808), codec `pesq_nb`, `pesq_wb`, `stoi`, `si_sdr`,
    `mel_distance`, `kbps`.
  - `no_audio`: items answered without speech (scored as such: empty transcripts).
  - mmlu_*: `accuracy`, `correct`, `n`, `no_option`, `per_subject`; dialogue:
    `speech_answer_rate`.
  """
  scored = [r for r in rows if "skipped" not in r]
  out = {"n_scored": len(scored)}
  if task == "asr":
    counts = wer.summarize(scored)
    out["wer"] = {"macro": counts["macro"] if scored else None,
                  "corpus": counts["corpus"] if scored else None, "n": counts["n"],
                  "unit": counts["unit"]}
  if task in ("asr", "tts", "continuation", "s2s", "codec"):
    out.update(_judges(scored))
  if task in ("tts", "continuation", "s2s", "codec"):
    out.update({k: _mean(scored, k) for k in ("sim", "ref_sim") + _MOS})
  if task in ("tts", "continuation", "s2s"):
    out["no_audio"] = sum(r.get("note") == NO_AUDIO for r in scored)
  if task == "tts":
    out["self_asr_wer"] = _rates(scored, "self_asr_")
    out.update({k: _mean(scored, k) for k in ("seconds", "ref_seconds", "duration_ratio")})
  if task == "codec":
    out.update({k: _mean(scored, k) for k in _CODEC})
  if task.startswith("mmlu_"):
    out.update(choice.summarize(scored))
  if task == "dialogue":
    out["speech_answer_rate"] = (sum(r["speech_answer"] for r in scored) / len(scored)
                                 if scored else None)
  return out


TASKS = ("asr", "tts", "continuation", "codec", "s2s", "dialogue") + tuple(
    f"mmlu_{s}" for s in choice.SPLITS)
RUNNERS = {"asr": run_asr, "tts": run_tts, "continuation": run_continuation, "codec": run_codec,
           "s2s": run_s2s, "dialogue": run_dialogue,
           **{f"mmlu_{s}": run_mmlu for s in choice.SPLITS}}
NEEDS_MODEL = frozenset(TASKS) - {"codec"}

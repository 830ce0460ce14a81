"""Few-shot multiple choice in the SpeechMMLU format (spec §6.1, MiMo-Audio-Eval).

A SpeechMMLU folder, local:
  items.jsonl            one question a line: {"id", "subject", "question_text",
                         "question_audio" (path relative to the folder), "voice_id", "answer"
                         (0-3 or "A"-"D")}: the rows of the HF dataset, written out as JSON
  few_shot_prompts.json  {subject: {"beginning": text, "examples": [{"question", "answer"}]}}
  audio/<subject>/prompts/<subject>_<voice_id>/<subject>_beginning.mp3,
      <subject>_<i>_question_and_choices.mp3, <subject>_<i>_answer.mp3   (the spoken shots)

Splits: T2T, S2T, T2S, S2S (input modality 2 answer modality). The prompt is the subject's
beginning and its first `n_shots` examples (question as input, answer as output) then the
question; the answer is read with MiMo-Audio-Eval's regex `option\\s*([abcd])` on the lower-cased
text (`选项\\s*([abcd])` with spaces removed for Chinese); a spoken answer is transcribed first.
"""

from __future__ import annotations

import collections
import json
import os
import re

from mimo_jax.data.manifest import MALFORMED_LINE, Skips
from mimo_jax.eval.fewshot import AUDIO, STREAM, TEXT, Part

SPLITS = ("t2t", "s2t", "t2s", "s2s")
LETTERS = "abcd"
_ANSWER = {"en": re.compile(r"option\s*([abcd])"), "zh": re.compile(r"选项\s*([abcd])")}


def extract_choice(text: str, language: str = "en") -> int:
  """The option index (0-3) an answer names, or -1 when it names none."""
  text = text.lower()
  if language == "zh":
    text = text.replace(" ", "")
  match = _ANSWER[language].search(text)
  return LETTERS.index(match.group(1)) if match else -1


def _answer_index(value) -> int:
  if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
    return value
  if isinstance(value, str) and value.strip().lower() in LETTERS and value.strip():
    return LETTERS.index(value.strip().lower())
  raise ValueError(f"'answer' must be 0-3 or A-D, got {value!r}")


def read_speechmmlu(folder: str, skips: Skips) -> tuple[list[dict], dict]:
  """(items, few-shot prompts by subject); malformed lines and items of a subject without
  few-shot prompts go to `skips`."""
  with open(os.path.join(folder, "few_shot_prompts.json"), encoding="utf-8") as f:
    shots = json.load(f)
  items = []
  with open(os.path.join(folder, "items.jsonl"), encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"items.jsonl:{number}"
      try:
        raw = json.loads(line)
        item = {"id": str(raw["id"]), "subject": str(raw["subject"]),
                "question_text": str(raw["question_text"]),
                "question_audio": os.path.join(folder, str(raw["question_audio"])),
                "voice_id": str(raw.get("voice_id", "")), "answer": _answer_index(raw["answer"])}
      except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        skips.add(MALFORMED_LINE, where, f"{where}: {type(e).__name__}: {e}")
        continue
      if item["subject"] not in shots:
        skips.add("no_few_shot_prompts", item["id"], f"{where}: subject {item['subject']!r} "
                  f"is not in few_shot_prompts.json")
        continue
      items.append(item)
  return items, shots


def prompt_parts(folder: str, item: dict, shots: dict, split: str, n_shots: int) -> list[Part]:
  """The few-shot prompt of one question (answer modality aside: see `fewshot`)."""
  speech_in, speech_out = split[0] == "s", split[-1] == "s"
  subject = shots[item["subject"]]
  voice = os.path.join(folder, "audio", item["subject"], "prompts",
                       f"{item['subject']}_{item['voice_id']}")
  stem = os.path.join(voice, item["subject"])

  def given(text: str, audio: str) -> Part:
    return Part(AUDIO, audio=audio) if speech_in else Part(TEXT, text)

  parts = [given(subject["beginning"], f"{stem}_beginning.mp3")]
  examples = subject["examples"]
  if n_shots > len(examples):
    raise ValueError(f"--n_shots={n_shots}: subject {item['subject']!r} has only "
                     f"{len(examples)} examples")
  for i, example in enumerate(examples[:n_shots]):
    parts.append(given(example["question"], f"{stem}_{i}_question_and_choices.mp3"))
    parts.append(Part(STREAM, example["answer"], f"{stem}_{i}_answer.mp3") if speech_out
                 else Part(TEXT, example["answer"]))
  parts.append(given(item["question_text"], item["question_audio"]))
  return parts


def summarize(rows: list[dict]) -> dict:
  """Accuracy overall and per subject; an answer naming no option counts as wrong."""
  per_subject = collections.defaultdict(lambda: [0, 0])
  for row in rows:
    per_subject[row["subject"]][0] += row["prediction"] == row["answer"]
    per_subject[row["subject"]][1] += 1
  correct = sum(c for c, _ in per_subject.values())
  total = sum(n for _, n in per_subject.values())
  return {"accuracy": correct / total if total else float("nan"), "correct": correct,
          "n": total, "no_option": sum(r["prediction"] == -1 for r in rows),
          "per_subject": {s: c / n for s, (c, n) in sorted(per_subject.items())}}

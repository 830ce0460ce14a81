"""Few-shot multiple choice: the answer regex, prompts in the SpeechMMLU layout, and scoring end
to end through `evaluate` with a deterministic stand-in model."""

import json
import os
import re

import numpy as np
import pytest
import soundfile

from mimo_jax import evaluate
from mimo_jax.codec import config as codec_config
from mimo_jax.eval import choice, fewshot

# What MiMo-Audio-Eval's regex reads from model outputs (-1: no option named).
ANSWERS = [
    ("option a", 0), ("The answer is option B.", 1), ("OPTION C", 2), ("optiond", 3),
    ("option  \n d", 3), ("I pick option e, no: option b", 1), ("options are a", -1),
    ("The answer is A.", -1), ("", -1), ("adoption c", 2),
]


@pytest.mark.parametrize("text, expected", ANSWERS)
def test_answer_regex(text, expected):
  assert choice.extract_choice(text) == expected


def test_chinese_answer_regex_ignores_spaces():
  assert choice.extract_choice("答案是 选项 C", "zh") == 2
  assert choice.extract_choice("option c", "zh") == -1


def test_prompt_prefix_follows_the_modalities():
  text, audio = fewshot.Part(fewshot.TEXT, "q"), fewshot.Part(fewshot.AUDIO, audio="a.wav")
  stream = fewshot.Part(fewshot.STREAM, "answer", "b.wav")
  assert fewshot.prefix([text, text]) == ""
  assert fewshot.prefix([audio, stream, audio]) == "<Spe>:"
  assert fewshot.prefix([audio, text, audio]) == "[Int]:"


SR = 24000
SUBJECTS = {"astronomy": 2, "law": 3}  # items per subject


@pytest.fixture(scope="module")
def mmlu_folder(tmp_path_factory):
  """A SpeechMMLU folder: 5 items over two subjects (one line malformed), two shots each."""
  folder = tmp_path_factory.mktemp("speechmmlu")
  tone = lambda f: (0.3 * np.sin(2 * np.pi * f * np.arange(SR) / SR)).astype(np.float32)
  shots = {s: {"beginning": f"Questions about {s}.",
               "examples": [{"question": f"{s} example {i}?", "answer": f"The answer is option "
                             f"{'ab'[i]}."} for i in range(2)]} for s in SUBJECTS}
  (folder / "few_shot_prompts.json").write_text(json.dumps(shots))
  lines = []
  for subject, n in SUBJECTS.items():
    prompts = folder / "audio" / subject / "prompts" / f"{subject}_v1"
    prompts.mkdir(parents=True)
    for name in ["beginning"] + [f"{i}_{k}" for i in range(2)
                                 for k in ("question_and_choices", "answer")]:
      soundfile.write(prompts / f"{subject}_{name}.mp3", tone(220), SR)
    for i in range(n):
      soundfile.write(folder / f"{subject}_{i}.wav", tone(330 + 10 * i), SR)
      lines.append(json.dumps({"id": f"{subject}-{i}", "subject": subject, "voice_id": "v1",
                               "question_text": f"{subject} question {i}? A) w B) x C) y D) z",
                               "question_audio": f"{subject}_{i}.wav", "answer": "ABCD"[i]}))
  lines.insert(2, "{not json")
  (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
  return str(folder)


class StandIn:
  """Answers from the question's last part: right on astronomy, "option d" on law (right only
  for a question whose answer is D), and nothing usable on law question 2."""

  def __init__(self):
    self.prompts = []

  def few_shot(self, prompts, audio, speech_answer):
    assert not speech_answer
    out = []
    for parts in prompts:
      self.prompts.append(parts)
      question = parts[-1]
      key = question.text if question.kind == fewshot.TEXT else os.path.basename(question.audio)
      subject, i = re.match(r"(\w+?)[ _](?:question )?(\d)", key).groups()
      i = int(i)
      assert all(p.audio in audio for p in parts if p.audio)
      answer = {"astronomy": f"option {'abcd'[i]}", "law": "option d" if i < 2 else "hmm"}
      out.append((answer[subject], np.zeros(0, np.float32)))
    return out


@pytest.mark.parametrize("split", ["t2t", "s2t"])
def test_multiple_choice_scoring_end_to_end(mmlu_folder, tmp_path, split):
  data = evaluate.read_task(f"mmlu_{split}", mmlu_folder, None, n_shots=2)
  assert len(data.items) == 5 and data.skips.counts == {"malformed_manifest_line": 1}
  model = StandIn()
  summary = evaluate.evaluate_checkpoint("standin", model, (None, codec_config.tiny()),
                                         {f"mmlu_{split}": data}, str(tmp_path), batch_size=2,
                                         options={"closed_judge": False})
  figures = summary["tasks"][f"mmlu_{split}"]
  # astronomy 0, 1 right; law 0 (A), 1 (B) answered D: wrong; law 2 names no option: wrong.
  assert figures["accuracy"] == pytest.approx(2 / 5) and figures["correct"] == 2
  assert figures["no_option"] == 1
  assert figures["per_subject"] == {"astronomy": 1.0, "law": 0.0}
  assert figures["n_skipped"] == 1
  # Beginning, two (question, answer) shots, the question: text or speech by split.
  parts = model.prompts[0]
  assert len(parts) == 6
  kinds = [p.kind for p in parts]
  assert kinds == (["text"] * 6 if split == "t2t" else
                   ["audio", "audio", "text", "audio", "text", "audio"])
  assert (tmp_path / "standin" / "report.md").read_text().count(f"mmlu_{split} | accuracy | 0.4")

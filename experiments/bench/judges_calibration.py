"""Calibration of the offline judges (`mimo_jax.eval.judges`) on espeak-ng ground truth.

Per English espeak-ng voice of the corpus (`data.corpus.VOICES`), `--per_voice` sentences drawn
(seeded) from a sentence set are synthesised, then:

- open-vocabulary pocketsphinx: WER of its transcript (macro over the voice's clips);
- closed-set pocketsphinx over the whole set (100 sentences): accuracy (answer == the sentence
  said), WER of its answer, how often it found no sentence, and its answer on the same clip
  played backwards (speech-like sound that says nothing: right answers there are luck, the
  judge's floor);
- resemblyzer: mean cosine similarity of two clips of this voice (different sentences) and of a
  clip of this voice with a clip of another voice, and how often a clip's nearest other clip is
  of its own voice.

Sets: `bundled` (data/sentences.txt, 100 varied sentences) and `grammar` (100 sentences of
`data.sentence_grammar`: the same few clause shapes over a small vocabulary, so sentences differ
in one or two words, the hard case for a closed set). `--ablation` also decodes the bundled set's
clips with the closed judge's search settings changed one at a time. CPU seconds per clip (this
process) and the machine's load are recorded: the machine is shared.

  python experiments/bench/judges_calibration.py [--per_voice 8] [--sets bundled grammar]

Results: experiments/results/judges_calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import numpy as np

from benchlib import machine_info, write_results  # noqa: E402
from mimo_jax.data import corpus
from mimo_jax.eval import judges, wer

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")
SR = corpus.SAMPLE_RATE
SET_SIZE = 100
# Closed-search variants, each one change from the judge's settings.
ABLATION = {
    "judge (CLOSED_SEARCH)": judges.CLOSED_SEARCH,
    "fillers allowed": {**judges.CLOSED_SEARCH, "fsgusefiller": True},
    "default beams and HMM cap": {"fsgusefiller": False, "bestpath": False},
    "lattice best path": {**judges.CLOSED_SEARCH, "bestpath": True},
}


def sentence_set(name: str, seed: int) -> list[str]:
  if name == "bundled":
    return [s for lang, s in corpus.load_sentences() if lang == "en"][:SET_SIZE]
  from mimo_jax.data import sentence_grammar  # noqa: PLC0415
  return sentence_grammar.sentences(SET_SIZE, seed=seed)


def timed(fn, *args):
  start = time.process_time()
  out = fn(*args)
  return out, time.process_time() - start


def closed_answers(judge: judges.SphinxJudge, clips: list[dict]) -> dict:
  answers, seconds = zip(*(timed(judge.transcribe, c["wav"], SR) for c in clips))
  right = [a == judge.spell(c["text"]) for a, c in zip(answers, clips)]
  return {"answers": list(answers), "right": right, "cpu_s": list(seconds)}


def calibrate_set(name: str, voices, per_voice: int, seed: int, ablation: bool) -> dict:
  sentences = sentence_set(name, seed)
  rng = np.random.default_rng(seed)
  clips = []
  for voice in voices:
    for i in rng.choice(len(sentences), per_voice, replace=False):
      clips.append({"voice": voice.speaker, "text": sentences[i],
                    "wav": corpus.synthesize(sentences[i], voice, SR)})
  open_judge = judges.SphinxJudge()
  closed_judge, build_s = timed(judges.SphinxJudge, sentences)
  open_hyps, open_s = zip(*(timed(open_judge.transcribe, c["wav"], SR) for c in clips))
  closed = closed_answers(closed_judge, clips)
  backwards = [closed_judge.transcribe(c["wav"][::-1].copy(), SR) == closed_judge.spell(c["text"])
               for c in clips]
  embeddings = np.stack([judges.voice_embedding(c["wav"], SR) for c in clips])
  cos = embeddings @ embeddings.T
  np.fill_diagonal(cos, -np.inf)
  speakers = np.array([c["voice"] for c in clips])
  per_voice_rows = {}
  for voice in voices:
    mine = speakers == voice.speaker
    idx = np.flatnonzero(mine)
    same = cos[np.ix_(idx, idx)][~np.eye(len(idx), dtype=bool)]
    other = cos[np.ix_(idx, np.flatnonzero(~mine))]
    open_wer = [wer.error_rate(clips[i]["text"], open_hyps[i], "en")["error_rate"] for i in idx]
    closed_wer = [wer.error_rate(closed_judge.spell(clips[i]["text"]), closed["answers"][i],
                                 "en")["error_rate"] for i in idx]
    per_voice_rows[voice.speaker] = {
        "espeak_voice": voice.espeak_voice, "clips": len(idx),
        "open_wer": float(np.mean(open_wer)),
        "closed_accuracy": float(np.mean([closed["right"][i] for i in idx])),
        "closed_wer": float(np.mean(closed_wer)),
        "closed_no_answer": int(sum(closed["answers"][i] == "" for i in idx)),
        "closed_backwards_right": int(sum(backwards[i] for i in idx)),
        "sim_same_voice": float(same.mean()), "sim_other_voices": float(other.mean()),
        "sim_other_voices_max": float(other.max()),
        "nearest_clip_same_voice": float(np.mean(mine[np.argmax(cos[idx], axis=1)])),
    }
  result = {
      "sentences": len(sentences), "clips": len(clips), "per_voice": per_voice_rows,
      "all": {
          "open_wer": float(np.mean([r["open_wer"] for r in per_voice_rows.values()])),
          "closed_accuracy": float(np.mean(closed["right"])),
          "closed_right": int(sum(closed["right"])),
          "closed_backwards_right": int(sum(backwards)),
          "sim_same_voice": float(np.mean([r["sim_same_voice"] for r in per_voice_rows.values()])),
          "sim_other_voices": float(np.mean([r["sim_other_voices"]
                                             for r in per_voice_rows.values()])),
          "closed_build_cpu_s": build_s,
          "open_cpu_s_per_clip": float(np.mean(open_s)),
          "closed_cpu_s_per_clip": float(np.mean(closed["cpu_s"])),
      },
      "closed_misses": [{"voice": c["voice"], "said": closed_judge.spell(c["text"]), "answer": a}
                        for c, a, r in zip(clips, closed["answers"], closed["right"]) if not r],
  }
  if ablation:
    result["ablation"] = {}
    for variant, search in ABLATION.items():
      run = closed_answers(judges.SphinxJudge(sentences, search=search), clips)
      result["ablation"][variant] = {"right": int(sum(run["right"])),
                                     "no_answer": int(sum(a == "" for a in run["answers"])),
                                     "cpu_s_per_clip": float(np.mean(run["cpu_s"]))}
  return result


def markdown(report: dict) -> str:
  m = report["machine"]
  lines = ["# Offline judges on espeak-ng ground truth", "",
           f"Written {report['written']}; {m['cpu_model']}, {m['cores_usable']} usable cores, "
           f"load average {report['load_before'][0]:.1f} before and {report['load_after'][0]:.1f} "
           f"after (the machine is shared), {report['wall_s']:.0f} s wall. Seed "
           f"{report['seed']}, {report['per_voice']} sentences per voice per set. Command: "
           f"`python experiments/bench/judges_calibration.py` ({' '.join(report['argv'])}).", "",
           "Open: open-vocabulary pocketsphinx WER. Closed: closed-set pocketsphinx over the "
           "set's 100 sentences: accuracy (named the sentence said), WER of its answer, clips "
           "with no answer, and right answers on the clips played backwards (luck: the floor). "
           "SIM: resemblyzer cosine of two clips of the voice (different sentences) / of a clip "
           "with the other voices' clips; nearest: share of clips whose most similar other clip "
           "is of the same voice.", ""]
  for name, res in report["sets"].items():
    a = res["all"]
    lines += [f"## Set `{name}`: {res['clips']} clips", "",
              f"All voices: open WER {a['open_wer']:.3f}; closed accuracy "
              f"{a['closed_accuracy']:.3f} ({a['closed_right']}/{res['clips']}), backwards right "
              f"{a['closed_backwards_right']}/{res['clips']}; SIM same voice "
              f"{a['sim_same_voice']:.3f} vs other voices {a['sim_other_voices']:.3f}. CPU per "
              f"clip: open {a['open_cpu_s_per_clip']:.2f} s, closed "
              f"{a['closed_cpu_s_per_clip']:.2f} s; building the closed judge "
              f"{a['closed_build_cpu_s']:.2f} s.", "",
              "| voice | espeak-ng | open WER | closed acc | closed WER | no answer | backwards "
              "right | SIM same | SIM other (max) | nearest same |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for voice, r in res["per_voice"].items():
      lines.append(f"| {voice} | {r['espeak_voice']} | {r['open_wer']:.3f} | "
                   f"{r['closed_accuracy']:.3f} | {r['closed_wer']:.3f} | "
                   f"{r['closed_no_answer']} | {r['closed_backwards_right']} | "
                   f"{r['sim_same_voice']:.3f} | {r['sim_other_voices']:.3f} "
                   f"({r['sim_other_voices_max']:.3f}) | {r['nearest_clip_same_voice']:.2f} |")
    if res["closed_misses"]:
      lines += ["", "Closed-set misses:", ""]
      lines += [f"- {x['voice']}: said \"{x['said']}\", answered \"{x['answer']}\""
                for x in res["closed_misses"]]
    if "ablation" in res:
      lines += ["", "Closed search settings, one change at a time (same clips):", "",
                "| settings | right | no answer | CPU s / clip |", "|---|---|---|---|"]
      lines += [f"| {v} | {r['right']}/{res['clips']} | {r['no_answer']} | "
                f"{r['cpu_s_per_clip']:.2f} |" for v, r in res["ablation"].items()]
    lines.append("")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--per_voice", type=int, default=8)
  parser.add_argument("--sets", nargs="+", default=["bundled", "grammar"],
                      choices=["bundled", "grammar"])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no_ablation", action="store_true")
  args = parser.parse_args()
  voices = [v for v in corpus.VOICES if v.language == "en"]
  start, load_before = time.perf_counter(), os.getloadavg()
  sets = {name: calibrate_set(name, voices, args.per_voice, args.seed,
                              ablation=name == "bundled" and not args.no_ablation)
          for name in args.sets}
  report = {"written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "load_before": load_before, "load_after": os.getloadavg(),
            "wall_s": time.perf_counter() - start, "seed": args.seed,
            "per_voice": args.per_voice, "argv": [f"--{k}={v}" for k, v in vars(args).items()],
            "closed_search": judges.CLOSED_SEARCH, "dither_seed": judges.DITHER_SEED,
            "sets": sets}
  write_results(report, markdown(report), RESULTS_DIR, "judges_calibration")


if __name__ == "__main__":
  main()

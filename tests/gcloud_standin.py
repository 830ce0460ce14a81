"""A stand-in `gcloud` for the tests of tpu_setup/tpu.sh: the subcommands the script uses, run
on this machine. Installed on PATH as `gcloud` by tests/test_tpu_setup.py.

$STANDIN_ROOT/tpus/NODE/worker-N/   the home folder of worker N of TPU node NODE (the test makes
                                    them; a node or worker that is not there does not exist)
$STANDIN_ROOT/gcs/BUCKET/           the bucket gs://BUCKET

`ssh --command=CMD` runs `bash -c CMD` in each chosen worker's home with HOME set to it, the
workers in parallel, and like ssh it returns only when CMD and everything holding its output
have finished: a job that is not detached from the session keeps `ssh` (and `tpu.sh run`)
waiting. Unlike ssh, the workers inherit this process's environment (PATH with the test's tools).
Anything else is refused with exit status 2, so the script cannot use a subcommand or flag the
stand-in does not model.
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys

ROOT = os.environ["STANDIN_ROOT"]


def refuse(args: list[str]) -> int:
  print(f"stand-in gcloud: not modelled: {' '.join(args)}", file=sys.stderr)
  return 2


def flags_and_words(args: list[str]) -> tuple[dict[str, str], list[str]]:
  flags = dict(a[2:].partition("=")[::2] for a in args if a.startswith("--"))
  return flags, [a for a in args if not a.startswith("--")]


def worker_homes(node: str, worker: str) -> list[str]:
  node_dir = os.path.join(ROOT, "tpus", node)
  if not os.path.isdir(node_dir):
    sys.exit(f"stand-in gcloud: NOT_FOUND: TPU node {node}")
  homes = sorted(os.path.join(node_dir, d) for d in os.listdir(node_dir) if d.startswith("worker-"))
  if worker != "all":
    homes = [h for h in homes if h.endswith(f"worker-{worker}")]
  if not homes:
    sys.exit(f"stand-in gcloud: node {node} has no worker {worker}")
  return homes


def ssh(node: str, worker: str, command: str) -> int:
  def run(home: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=home, env={**os.environ, "HOME": home},
                          capture_output=True, text=True)

  with concurrent.futures.ThreadPoolExecutor() as pool:
    results = list(pool.map(run, worker_homes(node, worker)))
  for result in results:
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
  return max(result.returncode for result in results)


def scp(source: str, target: str, worker: str) -> int:
  node, _, path = target.partition(":")
  for home in worker_homes(node, worker):
    shutil.copy(source, os.path.join(home, path))
  return 0


def local(path: str) -> str:
  """gs://BUCKET/PATH -> its folder here (the bucket must exist); local paths unchanged."""
  if not path.startswith("gs://"):
    return path
  bucket, _, rest = path[len("gs://"):].partition("/")
  if not os.path.isdir(os.path.join(ROOT, "gcs", bucket)):
    sys.exit(f"stand-in gcloud: bucket gs://{bucket} does not exist")
  return os.path.join(ROOT, "gcs", bucket, rest)


def rsync(source: str, target: str) -> int:
  # gcloud storage rsync --recursive: the source folder's contents into the target folder.
  shutil.copytree(local(source), local(target), dirs_exist_ok=True)
  return 0


def main(args: list[str]) -> int:
  flags, words = flags_and_words(args)
  if words[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and len(words) == 5 and "command" in flags:
    return ssh(words[4], flags.get("worker", "0"), flags["command"])
  if words[:4] == ["compute", "tpus", "tpu-vm", "scp"] and len(words) == 6:
    return scp(words[4], words[5], flags.get("worker", "0"))
  if words[:2] == ["storage", "rsync"] and len(words) == 4 and "recursive" in flags:
    return rsync(words[2], words[3])
  return refuse(args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

"""tpu_setup/tpu.sh: lint, flag checks, the gcloud commands of `create` / `delete`, and the remote
commands themselves, executed through a stand-in `gcloud` (tests/gcloud_standin.py) on 2 slices
of 2 workers, each worker with its own home folder: install, data, run, stop."""

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tpu_setup", "tpu.sh")
WHERE = "--project=my-proj-123 --zone=us-east5-a"
COMMON = ("--project=my-proj-123", "--zone=us-east5-a", "--name=mimo-p1")


def clean_env() -> dict:
  # No TPU_* or GCS_* variable of the caller leaks into the flags.
  return {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "GCS_"))}


def tpu(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                        env={**clean_env(), **(env or {})}, timeout=timeout)


def dry(command: str, *args: str) -> list[str]:
  # The common flags go before the command's own: `run` takes everything after -- as the job.
  result = tpu(command, *COMMON, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_bash_syntax():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  scripts = [os.path.join(ROOT, "tpu_setup", f) for f in os.listdir(os.path.join(ROOT, "tpu_setup"))
             if f.endswith(".sh")]
  result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_create_v5p_64_spot():
  assert dry("create", "--type=v5p-64", "--spot") == [
      f"gcloud compute tpus tpu-vm create mimo-p1 {WHERE} --accelerator-type=v5p-64 "
      "--version=v2-alpha-tpuv5 --spot"]


def test_create_queued_multislice_v5e():
  # v5e slices are v5litepod-N to gcloud; N slices come from one queued resource.
  assert dry("create", "--type=v5e-256", "--queued", "--slices=2") == [
      f"gcloud compute tpus queued-resources create mimo-p1-qr {WHERE} --node-count=2 "
      "--node-prefix=mimo-p1 --accelerator-type=v5litepod-256 "
      "--runtime-version=v2-alpha-tpuv5-lite",
      f"gcloud compute tpus queued-resources describe mimo-p1-qr {WHERE} "
      "'--format=value(state.state)'"]


def test_names_from_environment():
  result = tpu("create", "--dry-run", env={"TPU_PROJECT": "env-project", "TPU_NAME": "v4-run",
                                           "TPU_ZONE": "us-central2-b", "TPU_TYPE": "v4-128"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm create v4-run --project=env-project --zone=us-central2-b "
      "--accelerator-type=v4-128 --version=tpu-ubuntu2204-base"]


def test_logs_follow_the_first_slice_and_delete():
  # `tail -F` never returns, so `logs` cannot visit the slices one after the other.
  assert dry("logs", "--job=phase1", "--worker=all", "--slices=2") == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1-0 {WHERE} --worker=all "
      "'--command=tail -n 200 -F $HOME/mimo-logs/phase1.log'"]
  assert dry("delete", "--queued") == [
      f"gcloud compute tpus queued-resources delete mimo-p1-qr {WHERE} --force --quiet"]


@pytest.mark.parametrize("args, message", [
    (("create", "--type=v5p-64", "--project=Bad_Project", "--zone=us-east5-a", "--name=x1"),
     "--project=Bad_Project: not a valid project id"),
    (("create", "--type=v5p-64", "--project=my-proj-123", "--name=x1"), "--zone is required"),
    (("create", "--type=v7-8", "--project=my-proj-123", "--zone=us-east5-a", "--name=x1"),
     "--type=v7-8: not a valid TPU type"),
    (("create", "--type=v5p-64", "--slices=2", "--project=my-proj-123", "--zone=us-east5-a",
      "--name=x1"), "add --queued"),
    (("data", "--bucket=gs://UPPER", "--mount=/m", "--project=my-proj-123", "--zone=us-east5-a",
      "--name=x1"), "--bucket=gs://UPPER: not a valid bucket"),
    (("run", "--job=j", "--project=my-proj-123", "--zone=us-east5-a", "--name=x1"),
     "give the command after --"),
    (("create", "--typo=v5p-64"), "unknown flag --typo=v5p-64"),
])
def test_bad_flags_fail_before_anything_runs(args, message):
  result = tpu(*args, "--dry-run")
  assert result.returncode == 2
  assert message in result.stderr
  assert result.stdout == ""


# --- the remote commands, executed ----------------------------------------------------------


class Cloud:
  """The stand-in's world: TPU nodes with worker homes, a bucket, and a PATH whose `gcloud` is
  the stand-in, whose `python3` is the image's 3.10 (refusing to be used) and whose `python3.11`
  is the interpreter `install` would otherwise take from the deadsnakes PPA."""

  def __init__(self, root: str, nodes: dict[str, int]):
    self.root = root
    for node, workers in nodes.items():
      for i in range(workers):
        os.makedirs(self.home(node, i))
    os.makedirs(os.path.join(root, "gcs", "mimo-data"))
    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir)
    write(os.path.join(bin_dir, "gcloud"), f"#!/bin/sh\nexec {sys.executable} "
          f"{os.path.join(ROOT, 'tests', 'gcloud_standin.py')} \"$@\"\n", executable=True)
    write(os.path.join(bin_dir, "python3"), "#!/bin/sh\necho \"python3 is the image's 3.10\" >&2\n"
          "exit 1\n", executable=True)
    os.symlink(os.path.realpath(sys._base_executable), os.path.join(bin_dir, "python3.11"))
    self.env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STANDIN_ROOT": root}

  def home(self, node: str, worker: int) -> str:
    return os.path.join(self.root, "tpus", node, f"worker-{worker}")

  def homes(self) -> list[str]:
    return sorted(glob.glob(os.path.join(self.root, "tpus", "*", "worker-*")))

  def tpu(self, *args: str, timeout: float = 60) -> str:
    result = tpu(*args, env=self.env, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout


def write(path: str, text: str, executable: bool = False) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  if executable:
    os.chmod(path, 0o755)


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


@pytest.fixture
def cloud(tmp_path) -> Cloud:
  """Two slices (mimo-p1-0, mimo-p1-1) of two workers each."""
  return Cloud(str(tmp_path / "cloud"), {"mimo-p1-0": 2, "mimo-p1-1": 2})


SLICES = (*COMMON, "--slices=2")

# A checkout the workers can pip-install offline: its in-tree build backend makes the editable
# wheel itself (nothing to download), and it has the `tpu` extra that `install` asks for.
STANDIN_CHECKOUT = {
    "pyproject.toml": """\
        [build-system]
        requires = []
        build-backend = "backend"
        backend-path = ["."]
        """,
    "backend.py": """\
        import os, zipfile

        def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
          info = "mimo_standin-0.dist-info"
          files = {"mimo_standin.pth": os.path.dirname(os.path.abspath(__file__)) + "\\n",
                   f"{info}/METADATA": "Metadata-Version: 2.1\\nName: mimo-standin\\nVersion: 0\\n"
                                       "Provides-Extra: tpu\\n",
                   f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
                                    "Tag: py3-none-any\\n"}
          files[f"{info}/RECORD"] = "".join(f"{name},,\\n" for name in [*files, f"{info}/RECORD"])
          name = "mimo_standin-0-py3-none-any.whl"
          with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
            for path, text in files.items():
              wheel.writestr(path, text)
          return name
        """,
    "mimo_standin.py": "",
}


def test_install_makes_a_python_3_11_venv_on_every_worker(tmp_path):
  """One worker per slice: making a venv costs seconds of CPU per worker (ensurepip), and the
  fan-out over the workers of a slice is the same `ssh --worker=all` as in the tests below."""
  cloud = Cloud(str(tmp_path / "cloud"), {"mimo-p1-0": 1, "mimo-p1-1": 1})
  source = tmp_path / "checkout"
  for name, text in STANDIN_CHECKOUT.items():
    write(str(source / name), textwrap.dedent(text))
  cloud.env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(tmp_path))
  cloud.tpu("install", *SLICES, f"--source={source}", timeout=300)

  assert len(cloud.homes()) == 2
  for home in cloud.homes():
    python = os.path.join(home, "mimo-venv", "bin", "python")
    found = subprocess.run(
        [python, "-c", "import sys, mimo_standin; print(sys.version_info >= (3, 11), "
         "mimo_standin.__file__)"], capture_output=True, text=True, check=True).stdout.split()
    # The venv's Python is >= 3.11 and the checkout copied to this worker is installed in it.
    assert found == ["True", os.path.join(home, "mimo-jax", "mimo_standin.py")]


def test_data_lands_where_the_readme_says(cloud, tmp_path):
  local = tmp_path / "shards"
  write(str(local / "part-0.array_record"), "0")
  write(str(local / "eval" / "part-1.array_record"), "1")
  for _ in range(2):  # a rerun puts the folder's contents in the same place, not one level down
    cloud.tpu("data", *SLICES, "--bucket=gs://mimo-data", f"--upload={local}",
              "--dest=shards/phase1")
    cloud.tpu("data", *SLICES, "--bucket=mimo-data", "--fetch=shards/phase1",
              "--to=data/phase1")
  bucket = os.path.join(cloud.root, "gcs", "mimo-data")
  for folder in [os.path.join(bucket, "shards", "phase1"),
                 *(os.path.join(home, "data", "phase1") for home in cloud.homes())]:
    assert sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder)
                  for f in files) == ["eval/part-1.array_record", "part-0.array_record"]


# The job of the run/stop test: it reports its pid and its arguments, then waits for SIGTERM.
SIGNAL_JOB = """\
import os, signal, sys, time

def stop(*_):
  print("got SIGTERM", flush=True)
  sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("job", os.getpid(), sys.argv[1:], flush=True)
time.sleep(600)
"""


# The jobs run in the venv of these tests, as if `install` had made it.
needs_venv = pytest.mark.skipif(not os.path.exists(os.path.join(sys.prefix, "bin", "activate")),
                                reason="the tests do not run in a venv")


def link_checkout(cloud: Cloud, checkout: str) -> None:
  """What `install` leaves on each worker: the checkout and a venv."""
  for home in cloud.homes():
    os.symlink(checkout, os.path.join(home, "mimo-jax"))
    os.symlink(sys.prefix, os.path.join(home, "mimo-venv"))


def wait_for(path: str, text: str, timeout: float) -> str:
  deadline = time.time() + timeout
  while not (os.path.exists(path) and text in read(path)):
    assert time.time() < deadline, f"no {text!r} in {path} after {timeout}s"
    time.sleep(0.1)
  return read(path)


@needs_venv
def test_run_detaches_the_job_and_stop_signals_it(cloud, tmp_path):
  write(str(tmp_path / "checkout" / "job.py"), SIGNAL_JOB)
  link_checkout(cloud, str(tmp_path / "checkout"))
  # `run` returns although the jobs never end by themselves (the stand-in's ssh, like ssh,
  # would wait for a job still attached to the session); the argument's quote and space survive.
  cloud.tpu("run", *SLICES, "--job=demo", "--", "python", "job.py", "it's two words")

  logs = [os.path.join(home, "mimo-logs", "demo") for home in cloud.homes()]
  for log in logs:
    text = wait_for(f"{log}.log", "job ", timeout=30)
    pid = int(read(f"{log}.pid"))
    assert f"job {pid} [\"it's two words\"]" in text  # the pid file names the job itself
    os.kill(pid, 0)  # still running
  again = tpu("run", *SLICES, "--job=demo", "--", "python", "job.py", env=cloud.env)
  assert again.returncode == 1 and "demo is still running: stop it first" in again.stderr
  out = cloud.tpu("stop", *SLICES, "--job=demo")
  assert out.splitlines() == ["demo stopped: exit status 0"] * 4
  for log in logs:
    assert read(f"{log}.log").endswith("got SIGTERM\n")
    assert read(f"{log}.exit") == "0\n"
  assert cloud.tpu("stop", *SLICES, "--job=demo").splitlines() == [
      "demo was not running: exit status 0"] * 4


@needs_venv
def test_stop_makes_the_trainer_checkpoint_and_exit_0(tmp_path):
  """The real trainer (tiny config) started by `run` and stopped by `stop`. One worker: the
  trainer's compile is the cost here; the fan-out over workers and slices is tested above."""
  cloud = Cloud(str(tmp_path / "cloud"), {"solo": 1})
  link_checkout(cloud, ROOT)
  workdir = str(tmp_path / "run")
  # Without LLVM optimisations the CPU compile takes seconds instead of a minute.
  cloud.tpu("run", *COMMON[:2], "--name=solo", "--job=tiny", "--",
            "env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_backend_optimization_level=0 "
            "--xla_llvm_disable_expensive_passes=true",
            "python", "-m", "mimo_jax.train", "--config=experiments/configs/tiny.py",
            f"--workdir={workdir}", "--mesh=data:1,fsdp:1,tensor:1",
            "--config.train.phase=understanding", "--config.train.batch_size=2",
            "--config.train.steps=1000", "--config.checkpoint.every_steps=1000",
            "--config.log.tensorboard=False")
  log = os.path.join(cloud.home("solo", 0), "mimo-logs", "tiny")
  wait_for(f"{log}.log", "from step 0 to 1000", timeout=300)  # SIGTERM is the trainer's now

  assert cloud.tpu("stop", *COMMON[:2], "--name=solo", "--job=tiny", timeout=300).splitlines() \
      == ["tiny stopped: exit status 0"]
  step = re.search(r"preempted at step (\d+); checkpoint \1 in", read(f"{log}.log")).group(1)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [step]

"""tpu_setup/tpu.sh: syntax, shellcheck, the exact gcloud commands of --dry-run, flag checks."""

import os
import shutil
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "tpu_setup", "tpu.sh")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WHERE = "--project=my-proj-123 --zone=us-east5-a"


def tpu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  # A clean environment: no TPU_* variable of the caller leaks into the flags.
  base = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "GCS_"))}
  return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                        env={**base, **(env or {})}, timeout=30)


def dry(command: str, *args: str) -> list[str]:
  # The common flags go before the command's own: `run` takes everything after -- as the job.
  result = tpu(command, "--project=my-proj-123", "--zone=us-east5-a", "--name=mimo-p1",
               "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_bash_syntax():
  subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  result = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True)
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


def test_install_on_every_worker():
  assert dry("install") == [
      f"tar -czf /tmp/mimo-jax-src.tgz -C {ROOT} --exclude=.git --exclude=.venv "
      "--exclude=__pycache__ .",
      f"gcloud compute tpus tpu-vm scp /tmp/mimo-jax-src.tgz mimo-p1:mimo-jax-src.tgz {WHERE} "
      "--worker=all",
      f"gcloud compute tpus tpu-vm ssh mimo-p1 {WHERE} --worker=all '--command=mkdir -p "
      "$HOME/mimo-jax && tar -xzf $HOME/mimo-jax-src.tgz -C $HOME/mimo-jax && python3 -m venv "
      "$HOME/mimo-venv && $HOME/mimo-venv/bin/pip install -q -U pip && "
      "$HOME/mimo-venv/bin/pip install -q -e \"$HOME/mimo-jax[tpu]\"'"]


def test_data_upload_fetch_mount(tmp_path):
  assert dry("data", "--bucket=gs://mimo-data", f"--upload={tmp_path}", "--dest=shards/phase1") == [
      f"gcloud storage cp --recursive {tmp_path} gs://mimo-data/shards/phase1"]
  assert dry("data", "--bucket=mimo-data", "--fetch=shards/phase1", "--to=/mnt/data") == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1 {WHERE} --worker=all '--command=mkdir -p "
      "/mnt/data && gcloud storage cp --recursive gs://mimo-data/shards/phase1 /mnt/data'"]
  assert dry("data", "--bucket=mimo-data", "--mount=/mnt/gcs") == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1 {WHERE} --worker=all '--command=mkdir -p "
      "/mnt/gcs && gcsfuse --implicit-dirs mimo-data /mnt/gcs'"]


def test_run_logs_stop_delete():
  run = dry("run", "--job=phase1", "--", "python", "-m", "mimo_jax.train",
            "--config=experiments/configs/7b_v5p_64.py", "--workdir=gs://mimo-data/runs/p1",
            "--config.train.note=two words")
  assert run == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1 {WHERE} --worker=all '--command=mkdir -p "
      "$HOME/mimo-logs && cd $HOME/mimo-jax && source $HOME/mimo-venv/bin/activate && setsid "
      "nohup python -m mimo_jax.train --config=experiments/configs/7b_v5p_64.py "
      "--workdir=gs://mimo-data/runs/p1 '\\''--config.train.note=two words'\\'' > "
      "$HOME/mimo-logs/phase1.log 2>&1 < /dev/null & echo $! > $HOME/mimo-logs/phase1.pid'"]
  assert dry("logs", "--job=phase1", "--worker=all") == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1 {WHERE} --worker=all "
      "'--command=tail -n 200 -F $HOME/mimo-logs/phase1.log'"]
  assert dry("stop", "--job=phase1", "--slices=2") == [
      f"gcloud compute tpus tpu-vm ssh mimo-p1-{i} {WHERE} --worker=all "
      "'--command=kill -TERM $(cat $HOME/mimo-logs/phase1.pid)'" for i in range(2)]
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

#!/usr/bin/env bash
# TPU VMs and pod slices for mimo-jax, from nothing to a running job:
#
#   tpu.sh create    create the TPU VM / pod slice (directly, or through a queued resource)
#   tpu.sh install   copy this checkout to every worker and install it into ~/mimo-venv (Python 3.11)
#   tpu.sh data      upload local data to the bucket, or mount / fetch it on every worker
#   tpu.sh run       start one command on every worker (same flags everywhere), detached
#   tpu.sh logs      stream a job's log from one worker of the first slice (or all its workers)
#   tpu.sh stop      SIGTERM the job on every worker and wait until it exits (the trainer
#                    checkpoints first)
#   tpu.sh delete    delete the TPU (and its queued resource)
#
# Every name comes from a flag or its environment variable and is checked before anything runs.
# --dry-run prints the exact commands instead of running them. See tpu_setup/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tpu.sh COMMAND [flags]

commands: create install data run logs stop delete

common flags (environment variable in brackets):
  --project=ID        Google Cloud project            [TPU_PROJECT]
  --zone=ZONE         zone, e.g. us-east5-a           [TPU_ZONE]
  --name=NAME         TPU VM / slice name             [TPU_NAME]
  --type=TYPE         v5p-64, v5e-256, v4-128, v6e-256 ... [TPU_TYPE] (create)
  --slices=N          multi-slice: N slices named NAME-0..NAME-(N-1) (queued only) [TPU_SLICES]
  --dry-run           print the commands, run nothing
create:  --version=RUNTIME [TPU_VERSION] (default per generation)  --spot  --queued
install: --source=DIR (default: this checkout)
data:    --bucket=gs://BUCKET [GCS_BUCKET] and one of
           --upload=LOCAL_DIR --dest=PATH   LOCAL_DIR's contents to gs://BUCKET/PATH (from this host)
           --fetch=PATH --to=DIR            gs://BUCKET/PATH's contents to DIR on every worker
           --mount=DIR                      mount the bucket at DIR on every worker (gcsfuse,
                                            installed when missing)
run:     --job=NAME [TPU_JOB] -- COMMAND... (run in the checkout with ~/mimo-venv active)
logs:    --job=NAME --worker=N|all (default 0; workers of the first slice)
stop:    --job=NAME
USAGE
}

die() { echo "tpu.sh: $*" >&2; exit 2; }

# Prints a command the way a shell reads it back: plain words bare, the rest single-quoted.
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

do_cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show "$@"
  else
    echo "+ $(show "$@")" >&2
    "$@"
  fi
}

check() {  # check FLAG VALUE REGEX WHAT
  [[ -n "$2" ]] || die "--$1 is required (or set its environment variable; see --help)"
  [[ "$2" =~ $3 ]] || die "--$1=$2: not a valid $4"
}

COMMAND="${1:-}"
[[ -n "$COMMAND" && "$COMMAND" != -* ]] || { usage >&2; exit 2; }
shift
PROJECT="${TPU_PROJECT:-}"; ZONE="${TPU_ZONE:-}"; NAME="${TPU_NAME:-}"; TYPE="${TPU_TYPE:-}"
VERSION="${TPU_VERSION:-}"; BUCKET="${GCS_BUCKET:-}"; JOB="${TPU_JOB:-}"
SLICES="${TPU_SLICES:-1}"; SPOT=0; QUEUED=0; DRY_RUN=0; WORKER=0
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
UPLOAD=""; DEST=""; FETCH=""; TO=""; MOUNT=""; JOB_ARGS=()
while (($#)); do
  case "$1" in
    --project=*) PROJECT="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --slices=*) SLICES="${1#*=}" ;;
    --bucket=*) BUCKET="${1#*=}" ;;
    --job=*) JOB="${1#*=}" ;;
    --worker=*) WORKER="${1#*=}" ;;
    --source=*) SOURCE="${1#*=}" ;;
    --upload=*) UPLOAD="${1#*=}" ;;
    --dest=*) DEST="${1#*=}" ;;
    --fetch=*) FETCH="${1#*=}" ;;
    --to=*) TO="${1#*=}" ;;
    --mount=*) MOUNT="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; JOB_ARGS=("$@"); break ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done

check project "$PROJECT" '^[a-z][a-z0-9-]{4,28}[a-z0-9]$' "project id"
check zone "$ZONE" '^[a-z]+-[a-z]+[0-9]+-[a-z]$' "zone (e.g. us-east5-a)"
check name "$NAME" '^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$' "TPU name (lower case, digits, -)"
check slices "$SLICES" '^[1-9][0-9]*$' "slice count"
((SLICES == 1 || QUEUED == 1)) || [[ "$COMMAND" != create ]] \
  || die "--slices=$SLICES: multi-slice TPUs are created through queued resources: add --queued"

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=("--project=$PROJECT" "--zone=$ZONE")
# Remote commands run in the checkout with the project's venv; a job's log, pid and exit status
# go to ~/mimo-logs/JOB.{log,pid,exit}.
REMOTE_DIR="\$HOME/mimo-jax"
REMOTE_VENV="\$HOME/mimo-venv"
REMOTE_LOGS="\$HOME/mimo-logs"
# apt on a fresh VM: no prompts, and wait for the boot-time unattended upgrade to free the lock.
APT="sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=600"

remote_mkdir() {  # remote_mkdir DIR: a folder the ssh user owns (sudo for /mnt/... and the like)
  echo "{ mkdir -p $1 2>/dev/null || { sudo mkdir -p $1 && sudo chown \"\$(id -u):\$(id -g)\" $1; }; }"
}

nodes() {  # the TPU node names: NAME, or NAME-0..NAME-(N-1) for a multi-slice queued resource
  if ((SLICES == 1)); then echo "$NAME"; else seq -f "$NAME-%g" 0 $((SLICES - 1)); fi
}

on_workers() {  # on_workers WORKER REMOTE_COMMAND: ssh to those workers of every node
  local node
  for node in $(nodes); do
    do_cmd "${GCLOUD_TPU[@]}" ssh "$node" "${WHERE[@]}" "--worker=$1" "--command=$2"
  done
}

# The runtime images ship Python 3.10 (tpu-ubuntu2204-base, v2-alpha-*); the project needs
# >= 3.11. Like Levanter's setup, take python3.11 with its venv module from the deadsnakes PPA
# unless the image already has both. 3.11 is what the project is tested with (jax 0.10).
PYTHON=python3.11
PYTHON_SETUP="{ $PYTHON -m ensurepip --version >/dev/null 2>&1 || { $APT update && \
$APT install -y software-properties-common && sudo add-apt-repository -y ppa:deadsnakes/ppa && \
$APT install -y $PYTHON $PYTHON-venv; }; }"
# A venv left by another Python (an older install) is rebuilt; an up-to-date one is kept, so a
# reinstall only refreshes the code.
VENV_SETUP="{ $REMOTE_VENV/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' \
2>/dev/null || $PYTHON -m venv --clear $REMOTE_VENV; }"
# gcsfuse from Google's apt repository (its documented install), when the image lacks it.
GCSFUSE_SETUP="{ command -v gcsfuse >/dev/null || { echo \"deb [signed-by=/usr/share/keyrings/\
cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | \
sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -fsSL \
https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/\
cloud.google.asc >/dev/null && $APT update && $APT install -y gcsfuse; }; }"

case "$COMMAND" in
  create)
    check type "$TYPE" '^(v4|v5p|v5e|v6e)-[0-9]+$' "TPU type (v4-128, v5p-64, v5e-256, v6e-256)"
    generation="${TYPE%%-*}"
    accelerator="$TYPE"
    case "$generation" in  # gcloud names v5e slices v5litepod-N
      v4) default_version=tpu-ubuntu2204-base ;;
      v5p) default_version=v2-alpha-tpuv5 ;;
      v5e) default_version=v2-alpha-tpuv5-lite; accelerator="v5litepod-${TYPE#*-}" ;;
      v6e) default_version=v2-alpha-tpuv6e ;;
    esac
    VERSION="${VERSION:-$default_version}"
    check version "$VERSION" '^[a-z0-9][a-z0-9.-]*$' "TPU runtime version"
    spot=()
    ((SPOT)) && spot=(--spot)
    if ((QUEUED)); then
      if ((SLICES == 1)); then
        node=("--node-id=$NAME")
      else
        node=("--node-count=$SLICES" "--node-prefix=$NAME")
      fi
      do_cmd gcloud compute tpus queued-resources create "$NAME-qr" "${WHERE[@]}" "${node[@]}" \
        "--accelerator-type=$accelerator" "--runtime-version=$VERSION" "${spot[@]}"
      echo "# the slice exists once the queued resource is ACTIVE; check with:" >&2
      do_cmd gcloud compute tpus queued-resources describe "$NAME-qr" "${WHERE[@]}" \
        '--format=value(state.state)'
    else
      do_cmd "${GCLOUD_TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$accelerator" \
        "--version=$VERSION" "${spot[@]}"
    fi
    ;;
  install)
    [[ -f "$SOURCE/pyproject.toml" ]] || die "--source=$SOURCE: not a mimo-jax checkout"
    archive="${TMPDIR:-/tmp}/mimo-jax-src.tgz"
    do_cmd tar -czf "$archive" -C "$SOURCE" --exclude=.git --exclude=.venv \
      --exclude=__pycache__ .
    for node in $(nodes); do
      do_cmd "${GCLOUD_TPU[@]}" scp "$archive" "$node:mimo-jax-src.tgz" "${WHERE[@]}" \
        --worker=all
    done
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf \$HOME/mimo-jax-src.tgz -C $REMOTE_DIR && \
$PYTHON_SETUP && $VENV_SETUP && $REMOTE_VENV/bin/pip install -q -U pip && \
$REMOTE_VENV/bin/pip install -q -e \"${REMOTE_DIR}[tpu]\""
    ;;
  data)
    check bucket "$BUCKET" '^(gs://)?[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$' "bucket (gs://name)"
    BUCKET="gs://${BUCKET#gs://}"
    path_re='^[A-Za-z0-9_.][A-Za-z0-9_./-]*$'
    # rsync, not `cp --recursive`: cp nests the folder inside a destination that already exists
    # (a rerun lands in DEST/<name>/), rsync always puts the folder's contents in the
    # destination, and a rerun copies only what changed.
    if [[ -n "$UPLOAD" ]]; then
      [[ -d "$UPLOAD" ]] || die "--upload=$UPLOAD: no such directory"
      check dest "$DEST" "$path_re" "bucket path"
      do_cmd gcloud storage rsync --recursive "$UPLOAD" "$BUCKET/$DEST"
    elif [[ -n "$FETCH" ]]; then
      check fetch "$FETCH" "$path_re" "bucket path"
      check to "$TO" '^[A-Za-z0-9_.~/][A-Za-z0-9_./~-]*$' "worker directory"
      on_workers all "$(remote_mkdir "$TO") && gcloud storage rsync --recursive $BUCKET/$FETCH $TO"
    elif [[ -n "$MOUNT" ]]; then
      check mount "$MOUNT" '^[A-Za-z0-9_.~/][A-Za-z0-9_./~-]*$' "worker directory"
      on_workers all "$GCSFUSE_SETUP && $(remote_mkdir "$MOUNT") && \
gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT"
    else
      die "data: give one of --upload=DIR --dest=PATH, --fetch=PATH --to=DIR, --mount=DIR"
    fi
    ;;
  run)
    check job "$JOB" '^[A-Za-z0-9_.-]+$' "job name"
    ((${#JOB_ARGS[@]})) || die "run: give the command after --, e.g. -- python -m mimo_jax.train"
    logs="$REMOTE_LOGS/$JOB"
    # A small bash wrapper starts the job, writes the job's own pid (what `stop` signals), waits
    # and writes its exit status. setsid + nohup and the redirections detach it from the ssh
    # session, which then ends at once: `run` goes on to the next slice while the job runs.
    # A job of that name still running is refused: its pid file would be lost to `stop`.
    wrapper="$(show "${JOB_ARGS[@]}") & echo \$! > $logs.pid; wait \$!; echo \$? > $logs.exit"
    on_workers all "mkdir -p $REMOTE_LOGS && cd $REMOTE_DIR && \
source $REMOTE_VENV/bin/activate && { ! kill -0 \$(cat $logs.pid 2>/dev/null) 2>/dev/null || \
{ echo \"$JOB is still running: stop it first\" >&2; exit 1; }; } && rm -f $logs.pid $logs.exit && \
{ setsid nohup bash -c $(show "$wrapper") > $logs.log 2>&1 < /dev/null & } && \
until [ -s $logs.pid ]; do sleep 0.1; done"
    ;;
  logs)
    check job "$JOB" '^[A-Za-z0-9_.-]+$' "job name"
    check worker "$WORKER" '^([0-9]+|all)$' "worker (a number or all)"
    # tail -F never ends, so one slice only: the first, whose worker 0 is process 0.
    do_cmd "${GCLOUD_TPU[@]}" ssh "$(nodes | head -n 1)" "${WHERE[@]}" "--worker=$WORKER" \
      "--command=tail -n 200 -F $REMOTE_LOGS/$JOB.log"
    ;;
  stop)
    check job "$JOB" '^[A-Za-z0-9_.-]+$' "job name"
    logs="$REMOTE_LOGS/$JOB"
    # Waits for the exit status, so that a `delete` after `stop` cannot cut the checkpoint short;
    # a job that already ended only reports how.
    on_workers all "if kill -TERM \$(cat $logs.pid) 2>/dev/null; then \
until [ -e $logs.exit ]; do sleep 1; done; echo \"$JOB stopped: exit status \$(cat $logs.exit)\"; \
else echo \"$JOB was not running: exit status \$(cat $logs.exit 2>/dev/null || echo unknown)\"; fi"
    ;;
  delete)
    if ((QUEUED)); then
      do_cmd gcloud compute tpus queued-resources delete "$NAME-qr" "${WHERE[@]}" --force --quiet
    else
      do_cmd "${GCLOUD_TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    fi
    ;;
  *) die "unknown command $COMMAND (create install data run logs stop delete)" ;;
esac

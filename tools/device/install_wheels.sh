# shellcheck shell=bash
# Install the wheels carried in .whl/ on the device machine (nvidia-h200: Python 3.12.3,
# torch 2.11.0+cu130, no internet) into /tmp/site and put them on PYTHONPATH.
#
# SOURCE it (so the exports persist), from any directory, with `.whl` named in the run's carry:
#     source tools/device/install_wheels.sh || exit 1
#
# What .whl/ holds (see the report that prepared it): deepspeed 0.19.8 (pure wheel, built with
# DS_BUILD_OPS=0), torchrec 1.6.1 + fbgemm-gpu-cpu 1.6.0 (the pair for torch 2.11; 1.8.0 pairs
# with torch 2.13 and would not load), tensordict 0.15.3, pyvers, iopath, hjson, pydantic +
# pydantic-core + annotated-types + typing-inspection + typing-extensions. Everything else
# (torch, numpy, torchmetrics, transformers, tqdm, psutil, ninja, msgpack, ...) is the device's own.
#
# Env knobs: PYTHON (default python3), SITE_DIR (default /tmp/site).
# Fails loudly (message on stderr, non-zero status) if the install or the import check fails.

_iw_main() {
  local root py site whl rc
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)" || return 1
  py="${PYTHON:-python3}"
  site="${SITE_DIR:-/tmp/site}"
  whl="$root/.whl"

  if ! compgen -G "$whl/*.whl" >/dev/null; then
    echo "install_wheels: FAILED: no wheels in $whl (name .whl in the run's carry)" >&2
    return 1
  fi
  mkdir -p "$site" || return 1
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$site" "$whl"/*.whl
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "install_wheels: FAILED: pip install --target $site exited $rc" >&2
    return "$rc"
  fi

  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  case ":$PATH:" in *":$site/bin:"*) ;; *) export PATH="$site/bin:$PATH";; esac

  "$py" - "$site" <<'PY'
import logging, sys, importlib.metadata as md
site = sys.argv[1]
# fbgemm_gpu 1.6.0's compat table stops at 1.5, so each of its ~14 libraries logs a
# "no entry for 1.6.0" warning on the root logger; keep them out of this check's output.
logging.getLogger().setLevel(logging.ERROR)
import torch, deepspeed, torchrec, fbgemm_gpu, tensordict, pydantic  # noqa: E401
logging.getLogger().setLevel(logging.WARNING)
if not hasattr(torch.ops.fbgemm, "asynchronous_complete_cumsum"):
    sys.exit("install_wheels: fbgemm_gpu imported but its operators did not load")
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType  # noqa: F401
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, VectorCrossNet  # noqa: F401
from torchrec.modules.mlp import MLP  # noqa: F401
from deepspeed.accelerator import get_accelerator
for mod in (deepspeed, torchrec, fbgemm_gpu, tensordict, pydantic):
    if not mod.__file__.startswith(site):
        sys.exit(f"install_wheels: {mod.__name__} was imported from {mod.__file__}, not {site}")
v = lambda d: md.version(d)
print(f"install_wheels: python {sys.version.split()[0]}, torch {torch.__version__} "
      f"(cuda {torch.version.cuda}, available={torch.cuda.is_available()}), "
      f"deepspeed {deepspeed.__version__} (accelerator {get_accelerator()._name}), "
      f"torchrec {v('torchrec')}, fbgemm_gpu {v('fbgemm-gpu-cpu')}, tensordict {v('tensordict')}, "
      f"pydantic {pydantic.VERSION}, torchmetrics {v('torchmetrics')}")
PY
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "install_wheels: FAILED: the import check exited $rc (PYTHONPATH=$PYTHONPATH)" >&2
    return "$rc"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "install_wheels: run it with 'source', else PYTHONPATH does not persist" >&2
  _iw_main; _iw_rc=$?
  exit "$_iw_rc"
fi
_iw_main; _iw_rc=$?
unset -f _iw_main
return "$_iw_rc"

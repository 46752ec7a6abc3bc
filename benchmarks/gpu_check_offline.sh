#!/usr/bin/env bash
# The prepared GPU check on a GPU node that has PyTorch but cannot reach a package index (an
# offline cluster node, a lent benchmark machine). Two steps:
#
#   benchmarks/gpu_check_offline.sh fetch          # here, with pip access: wheels into .whl/
#   benchmarks/gpu_check_offline.sh run [ARGS]     # there, in a copy of this checkout with .whl/
#
# `fetch` downloads the pure-Python dependencies such an image usually lacks (MONAI and
# segmentation-models-pytorch), at the versions installed in .venv when there is one. `run`
# installs the wheels of .whl/ whose module its python3 cannot import into a scratch folder (never
# into that Python), prints the GPU and the versions, and runs benchmarks/gpu_check.py with ARGS,
# writing gpu_check.json and gpu_check.log into $OUT (default: the current folder). The JSON is
# rewritten after each section, so a run stopped at a time limit keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.whl
py=${PYTHON:-python3}

case "${1:-}" in
fetch)
    mkdir -p "$wheels"
    specs=()
    for dist in monai segmentation-models-pytorch; do
        v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null || true)
        specs+=("$dist${v:+==$v}")
    done
    "$py" -m pip download --no-deps --only-binary=:all: -d "$wheels" "${specs[@]}"
    ls -l "$wheels"
    ;;
run)
    shift
    out=${OUT:-.}
    mkdir -p "$out"
    site=$(mktemp -d /tmp/nasdm-site.XXXXXX)
    trap 'rm -rf "$site"' EXIT
    for whl in "$wheels"/*.whl; do
        [ -e "$whl" ] || continue
        mod=$(basename "$whl" | cut -d- -f1)  # monai, segmentation_models_pytorch: the module name
        if ! "$py" -c "import $mod" 2>/dev/null; then
            "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$whl"
        fi
    done
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$py" -c "import torch, monai, segmentation_models_pytorch as smp; print('torch', torch.__version__, '| monai', monai.__version__, '| smp', smp.__version__)"
    "$py" benchmarks/gpu_check.py --json "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
    ;;
*)
    echo "usage: $0 fetch | run [gpu_check.py arguments]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# GPU validation of the CUDA kernels on a lent machine (no network), <= 8 min: build, every test
# marked `cuda` (slow ones included: tensors past 2^31 elements), then timings of the fused ops
# against eager and compiled references and a device copy -> $OUT. Calls only the public ops
# (lrmil.ops, lrmil.ops.reference, lrmil.testing). Adapted from shared/gpu/validate_draft.sh.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"; exec > >(tee "$OUT/run.log") 2>&1
export PATH=/usr/local/cuda/bin:$PATH LRMIL_CUDA=ON PYTHONDONTWRITEBYTECODE=1 CMAKE_BUILD_PARALLEL_LEVEL=16 PIP_BREAK_SYSTEM_PACKAGES=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nvcc --version | tail -1
export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90 -Dpybind11_DIR=$(python -m pybind11 --cmakedir)"
timeout 270 pip install --no-build-isolation --no-deps -v -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python -c "import torch; from lrmil.ops import _ext; C = _ext.lib(); print('built', $SECONDS, 's | torch', torch.__version__, torch.version.cuda, '| archs', C.cuda_archs(), '| GPUs ext/torch', C.cuda_device_count(), torch.cuda.device_count())"; lrmil info
timeout $((330 - SECONDS)) python -m pytest -p no:cacheprovider -q -rfEs -m "cuda" tests/ops --junitxml="$OUT/cuda_tests.xml" 2>&1 | tail -40
echo "== tests rc=${PIPESTATUS[0]} at ${SECONDS}s"
timeout $((470 - SECONDS)) python bench/gpu/timings.py "$OUT" $((460 - SECONDS)); echo "== timings rc=$? total ${SECONDS}s"

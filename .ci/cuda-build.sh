#!/usr/bin/env bash
# Compiles the `cuda` feature on a machine without a GPU or a CUDA install: nvcc, the CUDA runtime headers and
# CCCL come from NVIDIA's PyPI wheels (into a venv under target/), CUDA_COMPUTE_CAP stands in for nvidia-smi.
# It checks every library crate with `distill-core/cuda` (`cargo check`: candle's CUDA backend, cudarc's
# bindings and the plugins' CUDA paths are type-checked; candle's kernels are compiled to PTX by nvcc in its
# build script). It generates no machine code (a `cargo build` of the same took 12 of CI's 45 minutes) and links
# no executable: that needs the driver library (libcuda.so) and cuBLAS/cuRAND/NVRTC, which come with a driver and
# a CUDA install, not from here; the GPU machine, when a task has one, builds and runs the real thing.
#
# CUDA 13.4 because cudarc 0.19.10 (candle 0.11.1's) knows CUDA versions up to 13.4.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/cuda-venv
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
  "nvidia-cuda-nvcc==13.4.92" "nvidia-nvvm==13.4.92" "nvidia-cuda-crt==13.4.92" \
  "nvidia-cuda-runtime==13.4.92" "nvidia-cuda-cccl==13.2.86"
cu=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$cu/bin:$PATH"
export CUDA_ROOT="$cu" CUDA_PATH="$cu"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
nvcc --version | tail -n 2
cargo check --features distill-core/cuda \
  -p distill-core -p distill-vision -p distill-graph -p distill-audio -p distill-text -p distill-detection
echo "cuda check: ok (libraries with distill-core/cuda, kernels built for compute capability $CUDA_COMPUTE_CAP)"

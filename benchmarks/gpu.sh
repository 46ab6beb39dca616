#!/usr/bin/env bash
# Model-step and end-to-end benchmarks on a CUDA GPU, in under 5 minutes (each step has a time cap).
# Run from anywhere:  bash benchmarks/gpu.sh  [> gpu_results.txt]   then copy the tables into README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
export VITLIT_DATA_DIR="${VITLIT_DATA_DIR:-../shared/data}"

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc

echo "== 1a. model step, eager: fp32 and bf16 autocast, forward and training step, batch 128 (~1 min)"
timeout 75 python -m benchmarks.model_step --device cuda --compile off --repeats 10 --warmup 2

echo "== 1b. model step, torch.compile: bf16 autocast, forward and training step (compiles 6 graphs, ~2 min)"
timeout 130 python -m benchmarks.model_step --device cuda --compile on --precisions bf16 --repeats 10

echo "== 3. one epoch of train.py vs a plain PyTorch loop (bf16-mixed, ViT-B/16, pizza_steak_sushi) (~1 min)"
timeout 85 python -m benchmarks.end_to_end --repeats 2

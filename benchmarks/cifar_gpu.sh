#!/usr/bin/env bash
# The structured CIFAR-10 (JPEG) compression protocol on one GPU, in under 9 minutes (budget: 540 s of wall time).
#
#   SPRED_DATA=DATA_FOLDER bash benchmarks/cifar_gpu.sh [OUT]       (OUT default: results/compression_cifar_gpu)
#
# ResNet-20 (projection shortcuts), full training set, one seed, FLOPs targets 2x / 4x / 8x:
#   30 dense epochs (shared, cached in OUT/.spred-runs) + 15 sparse-training epochs + 10 fine-tuning epochs per method
#   (spred D=2, D=3, Network Slimming, Torch-Pruning's group regulariser, L1 filter norm), batch 256, Adam;
#   spred: channel groups weighted by FLOPs, lam adapted per target by TargetSparsity (about 2,900 steps of sparse
#   training: enough for the controller, unlike the CPU --quick preset, which fixes lam);
#   4 worker processes share the GPU (the network is small: one process leaves it mostly idle).
# Cached jobs are reused only while their settings and the library code behind them are unchanged (spred's rows
# are recomputed after a change of spred/nn, the controller or the optimizer groups).
# The run is resumable: rerun the same command after a timeout and the finished jobs are read back from OUT/.spred-runs.
# Latency is measured on the GPU here, every model in turns after all jobs; CPU latencies come from the CPU preset.
set -euo pipefail
OUT="${1:-results/compression_cifar_gpu}"
CONFIG="$(mktemp --suffix=.json)"
trap 'rm -f "$CONFIG"' EXIT
cat > "$CONFIG" <<'JSON'
{"model": "resnet20", "dense_epochs": 30, "epochs": 15, "finetune_epochs": 10, "batch_size": 256,
 "lr": 0.002, "finetune_lr": 0.001, "flop_targets": [2.0, 4.0, 8.0], "seeds": [0], "workers": 4,
 "latency_repeats": 20}
JSON
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 540 "$PYTHON" -m spred.cli run compression --dataset cifar10 --config "$CONFIG" --device cuda --out "$OUT" || {
    echo "stopped after $(( $(date +%s) - start )) s; rerun to resume from $OUT/.spred-runs" >&2
    exit 1
}
echo "done in $(( $(date +%s) - start )) s"

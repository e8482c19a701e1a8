#!/usr/bin/env bash
# bash benchmarks/gpu_smoke.sh [OUTPUT_DIR]
#
# The tiny recipe (all four stages) on one GPU in bf16-mixed, then one throughput line per stage
# (optimizer steps per second of training, evaluation time taken out) and the GPU's peak memory.
# Not run in the session that wrote it (no GPU there): run it where a GPU is at hand and paste the
# output into benchmarks/results/gpu_smoke.md.
set -euo pipefail
OUT=${1:-runs/gpu_smoke}
command -v nvidia-smi >/dev/null || { echo "gpu_smoke: no nvidia-smi, no GPU here" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

ARGS=("output_dir=$OUT")
for stage in encoder captions sft grpo; do
  ARGS+=("stages.$stage.trainer.accelerator=gpu" "stages.$stage.trainer.devices=1"
         "stages.$stage.trainer.precision=bf16-mixed" "stages.$stage.trainer.enable_progress_bar=false")
done

# Sample the GPU's used memory every 0.5 s while the recipe runs.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT.gpu_mem.txt" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
START=$(date +%s)
must run recipes/tiny.yaml "${ARGS[@]}" --restart encoder
END=$(date +%s)
kill $SMI 2>/dev/null || true

python - "$OUT" "$OUT.gpu_mem.txt" "$((END - START))" <<'PY'
import json, sys
from pathlib import Path

out, mem_file, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
peak = max((int(x) for x in mem_file.read_text().split() if x.strip().isdigit()), default=0)
for name in ("encoder", "captions", "sft", "grpo"):
    rec = json.loads((out / name / "record.json").read_text())
    ev = rec.get("eval") or {}
    eval_s = sum(float(v.get("seconds") or 0) for v in ev.values() if isinstance(v, dict))
    train_s = max(1e-9, float(rec["seconds"]) - eval_s)
    steps = int(rec["global_step"])
    print(f"throughput: {name:<9} {steps} steps in {train_s:.1f} s = {steps / train_s:.2f} steps/s "
          f"(bf16-mixed, 1 GPU; eval {eval_s:.1f} s excluded)")
print(f"peak GPU memory used: {peak} MiB; whole recipe {wall} s wall")
PY

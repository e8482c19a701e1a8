#!/bin/bash
# usage: benchmarks/quiet_runs.sh NAME CODE_DIR [extra overrides]  (see benchmarks/results/quiet_runs.md)
name=$1; code=$2; shift 2
cd $code
rm -rf /tmp/q21/$name
start=$(date +%s)
PYTHONPATH=$code python -m must.cli run recipes/tiny.yaml output_dir=/tmp/q21/$name \
  stages.encoder.trainer.max_steps=6 stages.encoder.trainer.val_check_interval=6 \
  stages.captions.trainer.max_steps=6 stages.sft.trainer.max_steps=6 stages.sft.trainer.val_check_interval=6 \
  stages.grpo.trainer.max_steps=4 data.test_tracks=8 data.test_questions_per_metric=4 "$@" > /tmp/q21/$name.out 2>&1
echo "rc=$? wall=$(( $(date +%s) - start )) s lines=$(wc -l < /tmp/q21/$name.out)" > /tmp/q21/$name.stat

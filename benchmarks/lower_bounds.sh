#!/usr/bin/env bash
# Checks the lower bounds in pyproject.toml: a venv with every `name>=X` dependency installed as exactly
# `name==X` (torch 2.13.0 first), `pip check`, then the tests that exercise transformers, trl, peft,
# lightning, torchmetrics, omegaconf, wandb and nltk. Results: benchmarks/results/deps.md.
#
#   bash benchmarks/lower_bounds.sh                       # fresh venv at the lower bounds, then the tests
#   PINS="transformers==5.24.0 trl==1.12.0" bash ...      # override single pins (bisecting)
#   (pip also reads the bounds from pyproject.toml: to try a version below one, lower it there first)
#   LOW_VENV=/tmp/v REUSE=1 bash ...                      # reinstall into an existing venv (faster)
#   TESTS="tests/test_grpo_trl.py" bash ...               # another test selection
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOW_VENV:-/tmp/must-lowvenv}
NICE=(nice -n 19 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)
# Drop pip's one-line-per-package warning about an absent local index folder (set up on some machines).
pip_() { "${NICE[@]}" "$PY" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
         return "${PIPESTATUS[0]}"; }

# The tests that call the libraries' APIs: model build/save/load, hosts, stock models (transformers), LoRA
# and export (peft), each stage's short training run and checkpoints (lightning), GRPO against TRL's loss
# and its GRPOTrainer (trl), the metrics (torchmetrics, nltk), recipes (omegaconf), loggers (wandb).
DEFAULT_TESTS="tests/test_model_lalm.py tests/test_model_encoder.py tests/test_model_smollm2.py
tests/test_model_host.py tests/test_hub_models.py tests/test_time_tokens.py tests/test_rl_decoding.py
tests/test_model_audio_tokens.py tests/test_export.py tests/test_eval_stock.py
tests/test_stage_chain.py tests/test_grpo_stage.py tests/test_grpo_audio.py
tests/test_grpo_trl.py tests/test_rewards_grpo.py tests/test_foundation_runner.py
tests/test_foundation_config.py tests/test_reliability_checkpoints.py tests/test_tracking_loggers.py
tests/test_metrics_temporal.py tests/test_metrics_text.py tests/test_metrics_ddp.py tests/test_metrics_clap.py"
TESTS=${TESTS:-$DEFAULT_TESTS}

if [[ "${REUSE:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_ install -q torch==2.13.0

# Every `name>=X` of [project].dependencies (and pytest from dev) as `name==X`; PINS replaces by name.
mapfile -t REQS < <(PINS="${PINS:-}" python3 - <<'EOF'
import os, re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + [d for d in project["optional-dependencies"]["dev"] if d.startswith("pytest")]
pins = {}
for dep in deps:
    name, low = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", dep).groups()
    pins[name.lower()] = f"{name}=={low}"
for over in os.environ["PINS"].split():
    pins[re.match(r"^[A-Za-z0-9_.-]+", over).group().lower()] = over
print("\n".join(pins.values()))
EOF
)
echo "pins: ${REQS[*]}"
if ! pip_ install -e . "${REQS[@]}" > "$VENV/install.log"; then
  grep -E "ERROR|conflict is caused|depends on|user requested" "$VENV/install.log"; exit 1
fi
pip_ check
"$PY" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|trl|peft|lightning|torchmetrics|omegaconf|accelerate|tokenizers|huggingface.hub|safetensors|numpy) '
# shellcheck disable=SC2086
"${NICE[@]}" "$PY" -m pytest -q -p no:cacheprovider $TESTS "$@"

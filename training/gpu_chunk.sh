#!/usr/bin/env bash
# One GPU chunk of a training campaign on a lent device, inside the device's time limit:
#
#     bash training/gpu_chunk.sh OUT SECONDS [training.gpu_recipe options ...]
#
# The device image has PyTorch but not gymnasium: put its wheels in .whl/ first (README,
# "Continuing the Rooms training campaign") and carry that folder. The recipe runs under
# `timeout SECONDS`; if the time runs out, the run's last checkpoint is exported anyway,
# so the device time is not lost. OUT gets GAME.safetensors (--game, default rooms),
# metrics.csv, figures.json (when scoring finished) and log.txt. RECIPE=training.gpu_pixel
# runs the pixel world model's recipe instead (OUT gets GAME_pixel.safetensors; no salvage).
set -u
out=$1
seconds=$2
shift 2
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=$PWD:/tmp/site
fi
work=${WORK:-/tmp/worldsim_recipe}
recipe=${RECIPE:-training.gpu_recipe}
timeout "$seconds" python3 -m "$recipe" --out "$out" --work "$work" "$@" > "$out/log.txt" 2>&1
rc=$?
if [ $rc -ne 0 ] && [ "$recipe" = training.gpu_recipe ]; then  # stopped early: export the run's last checkpoint unless the model was exported already
    python3 -m training.gpu_recipe --out "$out" --work "$work" "$@" --salvage
fi
tr '\r' '\n' < "$out/log.txt" | grep -E "^\[recipe\]|^\[pixel\]|Error|Traceback|^\{" | tail -20
exit $rc

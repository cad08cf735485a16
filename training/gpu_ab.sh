#!/usr/bin/env bash
# An A/B of two dynamics training options on one lent GPU: one collect (the GPU recipe's,
# new Rooms maps), two runs side by side from the same weights on the same data, seed and
# schedule, then each exported and scored (control probe on several seeds, replays on the
# collect's unseen maps), its figures printed:
#
#     bash training/gpu_ab.sh OUT "A's options" "B's options"
#     bash training/gpu_ab.sh $OUT "" "--judge worldsim/checkpoints/rooms_latent_judge.safetensors"
#
# Environment: COMMON (the options both runs share; default: continue the campaign's S in
# 2x2 patches), STEPS (1200), TRAIN_S (training time limit, 300), COLLECT (200000 steps),
# SEEDS (control-probe seeds, "0 5"), COUNT (scripts per seed, 48), WINDOWS (replay windows,
# 32), DEV (cuda), PREPARE (more gpu_recipe options for the collect). Carry .whl
# (gymnasium) as for training/gpu_chunk.sh. OUT gets A/ and B/: the model, metrics.csv,
# the probe reports and the replay figures.
set -u
out=$1; a=$2; b=$3
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=$PWD:/tmp/site
fi
DEV=${DEV:-cuda}; STEPS=${STEPS:-1200}; TRAIN_S=${TRAIN_S:-300}; COLLECT=${COLLECT:-200000}; SEEDS=${SEEDS:-0 5}
WINDOWS=${WINDOWS:-32}; COUNT=${COUNT:-48}; work=${WORK:-/tmp/worldsim_ab}
COMMON=${COMMON:---config S --patch 2 --memory 4 --init worldsim/checkpoints/campaign/rooms_S_p2.safetensors --memory-match 0.2 --action-dropout 0.15 --batch-size 64 --lr 3e-4 --seed 112}
mkdir -p "$out/A" "$out/B"
threads=$(( $(nproc) / 8 > 1 ? $(nproc) / 8 : 1 ))  # the scoring jobs run side by side: more threads than cores only spin
t0=$(date +%s); say() { echo "[ab $(( $(date +%s) - t0 ))s] $*" | tee -a "$out/log.txt"; }
python3 -m training.gpu_recipe --out "$out" --work "$work" --collect-steps "$COLLECT" --seed 112 --device "$DEV" \
    ${PREPARE:-} --prepare-only --quiet >> "$out/log.txt" 2>&1 || { say "collect failed"; tail -20 "$out/log.txt"; exit 4; }
say "collected and encoded $COLLECT steps"
for arm in A B; do
    opts=$a; [ $arm = B ] && opts=$b
    # shellcheck disable=SC2086
    timeout "$TRAIN_S" python3 -m worldsim.cli train dynamics --data "$work/rooms_latents" --out "$work/$arm" $COMMON \
        --steps "$STEPS" --warmup 100 --loader-workers 6 --ckpt-every 100 --device "$DEV" $opts > "$out/$arm/train.log" 2>&1 &
done
wait
say "trained"
for arm in A B; do
    cp "$work/$arm/metrics.csv" "$out/$arm/"
    python3 -m worldsim.cli export --checkpoint "$work/$arm/latest.safetensors" --action-guidance 2 \
        --tokenizer worldsim/checkpoints/rooms_tokenizer.safetensors --out "$out/$arm/rooms.safetensors" >> "$out/log.txt" 2>&1
    for s in $SEEDS; do
        OMP_NUM_THREADS=$threads python3 -m worldsim.cli probe --checkpoint "$out/$arm/rooms.safetensors" --probes control \
            --count "$COUNT" --seed "$s" --env-kwargs '{"world_seed": null}' --device "$DEV" --out "$work/probe_${arm}_$s" \
            > "$out/$arm/probe_$s.log" 2>&1 &
    done
    OMP_NUM_THREADS=$threads python3 bench/bench_dynamics.py --checkpoint "$out/$arm/rooms.safetensors" --data "$work/rooms" \
        --windows "$WINDOWS" --device "$DEV" --no-speed --name "ab_$arm" > "$out/$arm/replays.log" 2>&1 &
done
wait
say "scored"
for arm in A B; do
    for s in $SEEDS; do cp "$work/probe_${arm}_$s/report.json" "$out/$arm/control_seed$s.json" 2>/dev/null; done
    mv bench/results/dynamics_ab_$arm.json "$out/$arm/replays.json" 2>/dev/null
    rm -f bench/results/dynamics_ab_$arm.png
    echo "== $arm: $(tail -1 "$out/$arm/metrics.csv" | cut -d, -f1) steps"
    grep -h "probe control  dream_memory_on" "$out"/$arm/probe_*.log
    grep -h "^ *[0-9]* |\|shown" "$out/$arm/replays.log"
done
# The device returns few files: the figures in one archive, beside the two models.
(cd "$out" && tar czf figures.tgz --exclude=rooms.safetensors log.txt A B && rm -f log.txt A/*.log A/*.json A/*.csv B/*.log B/*.json B/*.csv)

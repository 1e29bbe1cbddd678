#!/usr/bin/env bash
# The one command a session with a lent GPU runs (issues 11 and 18), from the repo root:
#
#   bash bench/gpu-check.sh [--dry-run] [--out DIR] [--summary-dir DIR] [--budget SECONDS]
#                           [--no-build] [--skip STEP[,STEP...]] [--serial]
#
# One call of at most 8 minutes: every step time-boxed (`timeout`, the seconds below) inside one
# overall budget (default 450 s), each recorded under $OUT as it ends (gpu-check.log,
# gpu-check.json, gpu-check.md; assigner_<device>.json/.md). In this order:
#   env       (60 s) facts: nvidia-smi, python, torch, CUDA, nvcc, compute-sanitizer, runtime
#   wheels    (60 s) pip-installs the carried cp312 wheels ($WHEEL_DIR, default .whl) into /tmp/site
#   build     (240 s) the extension in place against the machine's own torch (the GPU's own arch)
#   extension (60 s) the extension loads, with CUDA kernels
#   then side by side until 260 s before the budget's end: tests (pytest -m cuda over the training
#             step's tests, then the rest of tests/, then tests/test_kernel_harness.py) and
#             compute-sanitizer memcheck, racecheck,
#             synccheck, initcheck on bench/sanitize_scene.py ("sanitizers" skips all four)
#   then alone (timings), R50-FPN, the recipe's resize to 1333x800 of 640x480 JPEGs:
#     train-bf16-b2-graphs (60 s)  atss bench train --cuda-graphs, bf16 + channels_last, batch 2,
#                           the default workers
#     train-bf16-b8-graphs (70 s)  the same at batch 8 with 8 workers
#     train-bf16-b2 (60 s), train-bf16-b8 (70 s, and --profile)  the same, eager
#     data          (60 s)  atss bench data: OpenCV stages, the DataLoader at 2, 4, 8 workers,
#                           torchvision decode_jpeg on the GPU and its distance from OpenCV
#     model-bf16-b2 (40 s), model-bf16-b8 (40 s)  atss bench model --mode train (a batch already
#                           on the device: the step's ceiling; predict too at batch 2), 1333x800
#   and while time is left: train-fp32-b2-graphs (55 s), train-fp32-b2 (55 s), model-fp32-b2 (35 s), assigner (60 s, atss
#   bench assigner --device cuda --no-validate, events + graph, with and without geometry)
# --skip sanitizers,assigner (or any step names) leaves those out: a rerun's usual choice.
#
# Without a GPU (or with --dry-run) it rehearses: the same steps, the GPU ones as CPU stand-ins
# (tiny model, small input, a few steps; the sanitizer scene without compute-sanitizer), each
# saying so. It uses $PYTHON (default python3), no virtual environment and no network.
set -u -o pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET:-450}
WHEEL_DIR=${WHEEL_DIR:-.whl}
SUMMARY_DIR=""
DRY_RUN=0
BUILD=1
SERIAL=0
SKIP=",${GPU_CHECK_SKIP:-},"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PYTHONUNBUFFERED=1

while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT=$2; shift ;;
    --summary-dir) SUMMARY_DIR=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --no-build) BUILD=0 ;;
    --skip) SKIP="$SKIP$2,"; shift ;;
    --serial) SERIAL=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# "sanitizers" names the four compute-sanitizer tools (and the CPU rehearsal of their scene).
[[ $SKIP == *",sanitizers,"* ]] && SKIP="${SKIP}memcheck,racecheck,synccheck,initcheck,sanitize-cpu,"

START=$(date +%s)
DEADLINE=$((START + BUDGET))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
: >"$LOG"
SUMMARY_ARGS=(--work "$WORK" --out "$OUT")
[[ -n $SUMMARY_DIR ]] && SUMMARY_ARGS+=(--summary-dir "$SUMMARY_DIR")
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "[gpu-check +$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - $(date +%s))); }

# record STEP STATUS SECONDS RC DETAIL [LOG [OFFSET]]: one line in steps.jsonl (what the step's
# part of LOG, from byte OFFSET, says), the summaries rewritten.
record() {
  "$PYTHON" bench/gpu_check.py record "${SUMMARY_ARGS[@]}" --step "$1" --status "$2" --seconds "$3" \
    --rc "$4" --detail="$5" ${6:+--log "$6"} ${7:+--log-offset "$7"} 2>&1 | tee -a "$LOG"
}

skipped() { record "$1" skipped 0 0 "$2"; }

# step NAME SECONDS LOGFILE COMMAND: runs COMMAND (a bash string) under `timeout`, at most
# SECONDS and never past the budget, its output into LOGFILE; records the outcome.
step() {
  local name=$1 want=$2 steplog=$3 cmd=$4 limit t0 rc status detail=""
  if [[ $SKIP == *",$name,"* ]]; then skipped "$name" "--skip"; return 0; fi
  limit=$(left)
  ((limit > want)) && limit=$want
  if ((limit < 5)); then skipped "$name" "no time left in the ${BUDGET} s budget"; return 0; fi
  say "step $name (up to ${limit} s): $cmd"
  local offset
  offset=$(stat -c %s "$steplog" 2>/dev/null || echo 0)
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" bash -c "$cmd" >>"$steplog" 2>&1
  rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124|137) status=timeout; detail="killed after ${limit} s" ;;
    *) status=failed; detail="exit status $rc" ;;
  esac
  ((rc == 17)) && detail="compute-sanitizer reported errors"
  record "$name" "$status" "$secs" "$rc" "$detail" "$steplog" "$offset"
  return 0
}

# A step whose output also goes to the main log and the terminal (the steps run one at a time).
serial_step() {
  local name=$1 want=$2 cmd=$3 steplog=$WORK/$1.log
  step "$name" "$want" "$steplog" "$cmd"
  { echo "----- $name -----"; cat "$steplog" 2>/dev/null; } >>"$LOG"
  tail -n 15 "$steplog" 2>/dev/null
}

# ---- env -------------------------------------------------------------------------------------
HAVE_GPU=0
if ((DRY_RUN == 0)) && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  HAVE_GPU=1
fi
serial_step env 60 "'$PYTHON' bench/gpu_check.py env --work '$WORK'; nvidia-smi 2>&1 | head -25 || true"
if ((HAVE_GPU)) && ! grep -q '"cuda_available": true' "$WORK/env.json" 2>/dev/null; then
  say "nvidia-smi sees a GPU but torch does not (see env.json): running the CPU rehearsal instead"
  HAVE_GPU=0
fi
if ((HAVE_GPU)); then MODE=gpu; else MODE=rehearsal; fi
echo "$MODE" >"$WORK/mode"
if ((DRY_RUN)); then say "--dry-run: rehearsal on the CPU (GPU steps run CPU stand-ins)";
elif ((!HAVE_GPU)); then say "no usable GPU: rehearsal on the CPU (GPU steps run CPU stand-ins)"; fi

# ---- wheels ----------------------------------------------------------------------------------
shopt -s nullglob
wheels=("$WHEEL_DIR"/*.whl)
shopt -u nullglob
if ((${#wheels[@]} == 0)); then
  skipped wheels "no wheels in $WHEEL_DIR (carry .whl to install pycocotools and faster-coco-eval)"
else
  SITE=${GPU_CHECK_SITE:-/tmp/site}
  serial_step wheels 60 "'$PYTHON' -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
--target '$SITE' $(printf "'%s' " "${wheels[@]}") && PYTHONPATH='$SITE':\$PYTHONPATH '$PYTHON' -c \
'import pycocotools.coco, faster_coco_eval; print(\"imported pycocotools and faster_coco_eval\")'"
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
fi

# ---- build -----------------------------------------------------------------------------------
if ((BUILD)); then
  # The GPU's own arch (the machine's image presets TORCH_CUDA_ARCH_LIST=9.0a; we build the
  # plain sm_90 code that users get); GPU_CHECK_ARCHS overrides.
  ARCHS=${GPU_CHECK_ARCHS:-9.0}
  ((HAVE_GPU)) && ARCHS=${GPU_CHECK_ARCHS:-$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)}
  serial_step build "${GPU_CHECK_BUILD_SECONDS:-240}" "CUDA_HOME='$CUDA_HOME' TORCH_CUDA_ARCH_LIST='$ARCHS' MAX_JOBS=${MAX_JOBS:-$(nproc)} \
ATSS_REQUIRE_EXTENSION=1 '$PYTHON' setup.py build_ext --inplace"
else
  skipped build "--no-build: using the extension already in atss_cli/"
fi
serial_step extension 60 "'$PYTHON' -m atss_cli env --json '$WORK/atss_env.json' && '$PYTHON' -c \
'from atss_cli.ops import extension as e; import torch; print(e.describe()); \
assert e.available(), \"extension not loaded\"; \
assert not torch.cuda.is_available() or e.has_cuda(), \"GPU present but no CUDA kernels\"'"

# ---- tests and sanitizers, side by side ------------------------------------------------------
# Correctness runs need no quiet GPU: they share it. Timings come after, alone.
PHASE_END=$(($(date +%s) + $(left) - ${GPU_CHECK_TIMING_RESERVE:-260}))
phase_left() { local s=$((PHASE_END - $(date +%s))); ((s < 0)) && s=0; echo $s; }

# The training step's CUDA tests first (CUDA graphs and the no-sync step have never run elsewhere),
# then the rest.
FIRST_TESTS="tests/test_train_graphs.py tests/test_train_step_sync.py"
tests_lane() {
  local lg=$OUT/tests.log
  step tests-train-cuda "$(($(phase_left) < 90 ? $(phase_left) : 90))" "$lg" \
    "'$PYTHON' -m pytest -q -p no:cacheprovider -m cuda -s $FIRST_TESTS"
  step tests-cuda "$(($(phase_left) < 150 ? $(phase_left) : 150))" "$lg" \
    "'$PYTHON' -m pytest -q -p no:cacheprovider -m cuda $(printf -- '--ignore=%s ' $FIRST_TESTS) tests/"
  if [[ -f tests/test_kernel_harness.py ]]; then
    step tests-harness "$(phase_left)" "$lg" "'$PYTHON' -m pytest -q -p no:cacheprovider tests/test_kernel_harness.py"
  else
    skipped tests-harness "tests/test_kernel_harness.py not in this tree"
  fi
}

CS=${COMPUTE_SANITIZER:-$CUDA_HOME/bin/compute-sanitizer}
CS_HELP=$([[ -x $CS ]] && "$CS" --help 2>&1)
cs_flag() {  # FLAG VALUE: "FLAG VALUE" where this compute-sanitizer knows FLAG (versions differ)
  [[ $CS_HELP == *"$1"* ]] && echo "$1 $2"
}
sanitizer_lane() {  # TOOL PORT
  local tool=$1 port=$2 flags
  if [[ $SKIP == *",$tool,"* ]]; then skipped "$tool" "--skip"; return; fi
  if ((!HAVE_GPU)); then
    skipped "$tool" "no GPU: compute-sanitizer needs one (the scene is rehearsed on the CPU in sanitize-cpu)"
    return
  fi
  if [[ ! -x $CS ]]; then skipped "$tool" "compute-sanitizer not found at $CS"; return; fi
  # Wait for the target however long torch takes to start; a port of its own per parallel run.
  flags="$(cs_flag --launch-timeout 0) $(cs_flag --base-port "$port") $(cs_flag --print-limit 30)"
  [[ $tool == racecheck ]] && flags="$flags $(cs_flag --racecheck-report all)"
  # No caching allocator: every tensor its own cudaMalloc, so memcheck knows the exact bounds.
  step "$tool" "$(phase_left)" "$OUT/$tool.log" "PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$CS' --tool $tool \
--error-exitcode 17 $flags '$PYTHON' bench/sanitize_scene.py"
}

say "tests and sanitizers side by side until +$((PHASE_END - START)) s"
pids=()
if ((HAVE_GPU == 0)); then
  step sanitize-cpu 60 "$OUT/sanitize-cpu.log" "'$PYTHON' bench/sanitize_scene.py --device cpu"
fi
if ((SERIAL)); then
  tests_lane
  for t in memcheck racecheck synccheck initcheck; do sanitizer_lane $t 49152; done
else
  tests_lane &
  pids+=($!)
  port=49152
  for t in memcheck racecheck synccheck initcheck; do
    sanitizer_lane $t $port &
    pids+=($!)
    port=$((port + 100))
  done
  wait "${pids[@]}"
fi
for f in tests sanitize-cpu memcheck racecheck synccheck initcheck; do
  if [[ -f $OUT/$f.log ]]; then
    { echo "----- $f -----"; cat "$OUT/$f.log"; } >>"$LOG"
    cp "$OUT/$f.log" "$WORK/$f.log"
    rm -f "$OUT/$f.log"
  fi
done
"$PYTHON" bench/gpu_check.py write "${SUMMARY_ARGS[@]}" >/dev/null 2>&1

# ---- timings, alone on the GPU ---------------------------------------------------------------
# Must-haves first (the training step with its loader, the input pipeline, the step's ceiling),
# then what a short budget may drop. The JSON of each run goes to $WORK; gpu_check.py folds
# them into gpu-check.json and .md.
if ((HAVE_GPU)); then
  TRAIN="'$PYTHON' -m atss_cli bench train --device cuda --depth 50"
  serial_step train-bf16-b2-graphs 60 "$TRAIN --batch 2 --amp bf16 --channels-last --cuda-graphs --steps 40 \
--warmup 8 --json '$WORK/train-bf16-b2-graphs.json'"
  serial_step train-bf16-b8-graphs 70 "$TRAIN --batch 8 --amp bf16 --channels-last --cuda-graphs --workers 8 \
--steps 25 --warmup 5 --json '$WORK/train-bf16-b8-graphs.json'"
  serial_step train-bf16-b2 60 "$TRAIN --batch 2 --amp bf16 --channels-last --steps 40 --warmup 8 \
--json '$WORK/train-bf16-b2.json'"
  serial_step train-bf16-b8 70 "$TRAIN --batch 8 --amp bf16 --channels-last --workers 8 --steps 25 --warmup 5 \
--profile --json '$WORK/train-bf16-b8.json'"
  serial_step data 60 "'$PYTHON' -m atss_cli bench data --images 64 --batch 8 --workers 2 --workers 4 --workers 8 \
--loader-batches 16 --decoder opencv --decoder torchvision-gpu --gpu-batch 16 --json '$WORK/data.json'"
  serial_step model-bf16-b2 40 "'$PYTHON' -m atss_cli bench model --device cuda --depth 50 --size 1333x800 \
--batch 2 --amp bf16 --channels-last --mode train --mode predict --repeats 10 --warmup 3 --json '$WORK/model-bf16-b2.json'"
  serial_step model-bf16-b8 40 "'$PYTHON' -m atss_cli bench model --device cuda --depth 50 --size 1333x800 \
--batch 8 --amp bf16 --channels-last --mode train --repeats 6 --warmup 2 --json '$WORK/model-bf16-b8.json'"
  serial_step train-fp32-b2-graphs 55 "$TRAIN --batch 2 --cuda-graphs --steps 30 --warmup 5 \
--json '$WORK/train-fp32-b2-graphs.json'"
  serial_step train-fp32-b2 55 "$TRAIN --batch 2 --steps 30 --warmup 5 --json '$WORK/train-fp32-b2.json'"
  serial_step model-fp32-b2 35 "'$PYTHON' -m atss_cli bench model --device cuda --depth 50 --size 1333x800 \
--batch 2 --mode train --repeats 8 --warmup 3 --json '$WORK/model-fp32-b2.json'"
  serial_step assigner 60 "'$PYTHON' -m atss_cli bench assigner --device cuda --no-validate --geometry both \
--batch 16 --batch 2 --num-gt 100 --num-gt 8 --num-gt 1000 --num-gt 3000 --case-seconds 3 \
--json '$OUT/assigner_cuda.json' --markdown '$OUT/assigner_cuda.md'"
else
  # CPU stand-ins: the same commands on a tiny model and a small input, to rehearse the plumbing.
  TRAIN="'$PYTHON' -m atss_cli bench train --device cpu --preset tiny --scale 160x128 --steps 3 --warmup 1"
  # --cuda-graphs needs CUDA: its steps rehearse that the flag is refused in one line (exit 2 expected).
  serial_step train-bf16-b2-graphs 60 "$TRAIN --batch 2 --amp bf16 --channels-last --cuda-graphs \
--json '$WORK/train-bf16-b2-graphs.json'; test \$? -eq 2"
  serial_step train-bf16-b2 120 "$TRAIN --batch 2 --amp bf16 --channels-last --json '$WORK/train-bf16-b2.json'"
  serial_step train-bf16-b8 120 "$TRAIN --batch 8 --amp bf16 --channels-last --workers 2 --profile \
--json '$WORK/train-bf16-b8.json'"
  serial_step data 90 "'$PYTHON' -m atss_cli bench data --images 16 --repeats 2 --batch 2 --workers 0 --workers 2 \
--loader-batches 4 --json '$WORK/data.json'"
  serial_step model-bf16-b2 120 "'$PYTHON' -m atss_cli bench model --device cpu --preset tiny --size 160x128 \
--batch 2 --amp bf16 --channels-last --mode train --repeats 2 --warmup 1 --json '$WORK/model-bf16-b2.json'"
  serial_step train-fp32-b2 120 "$TRAIN --batch 2 --json '$WORK/train-fp32-b2.json'"
  serial_step assigner 120 "'$PYTHON' -m atss_cli bench assigner --device cpu --no-validate --geometry both \
--batch 2 --num-gt 8 --num-gt 100 --repeats 5 --warmup 1 --case-seconds 2 \
--json '$OUT/assigner_cpu-rehearsal.json' --markdown '$OUT/assigner_cpu-rehearsal.md'"
fi

"$PYTHON" bench/gpu_check.py write "${SUMMARY_ARGS[@]}" >/dev/null 2>&1
say "done in $(($(date +%s) - START)) s ($MODE); summaries: $OUT/gpu-check.md, $OUT/gpu-check.json"
# The reply shows the end of the output: the headline last (steps, then the training figures).
sed -n '/^## Steps/,/^## Assigner/p' "$OUT/gpu-check.md" | grep -v '^## Assigner'
sed -n '/^## Training step/,$p' "$OUT/gpu-check.md"

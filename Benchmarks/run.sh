#!/usr/bin/env bash
# Benchmark `peftkit merge` against `cp -r` and HF PEFT. See Benchmarks/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)

RUNS=5
PEFT_RUNS=1
LARGE=0
LARGE_RUNS=2
INSPECT_RUNS=30
PEFTKIT=""
BASELINE=""
MERGED=/dev/shm/peftkit-bench-merged
CACHE="${HOME}/.cache/peftkit-bench"
PYTHON="${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
PYTHON="${PYTHON:-python3}"
OUT_ROOT=/dev/shm/peftkit-bench-out
EXTRACT=1
EXTRACT_ONLY=0
MERGEKIT_RUNS=1
MERGEKIT="${MERGEKIT:-mergekit-extract-lora}"
RESULTS_DIR="$SCRIPT_DIR/results"

ADAPTERS=(lora-r16 bone-r64 bat-r64 dora-r16 ia3 loha-r16 lokr-r16)

usage() {
    cat <<EOF
Usage: bash Benchmarks/run.sh [options]

Times, interleaved round-robin, on the inputs made by Benchmarks/make_inputs.py:
  cp -r BASE OUT                                   (the floor: copying the checkpoint)
  peftkit merge BASE ADAPTER --output OUT --force --quiet   for each adapter (--adapters)
  python Benchmarks/peft_merge.py BASE ADAPTER OUT (HF PEFT load + merge_and_unload + save_pretrained)
  peftkit verify --merged MERGED --base BASE lora-r16, peftkit diff BASE MERGED (MERGED made once, untimed)
  peftkit inspect BASE                             (hyperfine, against \`true\`)
  peftkit extract BASE TUNED --rank 64 and mergekit-extract-lora --max-rank 64 on the synthetic
  fine-tune made by Benchmarks/make_tuned.py (the seven projections of every layer), then the
  per-module error of both adapters (Benchmarks/extract_error.py), and of an untimed
  peftkit extract --dtype keep (bf16 factors, as mergekit writes them) against mergekit
and with --large, cp and peftkit merge of the 66-layer checkpoint (peak RSS flatness).
Each merge/copy runs under /usr/bin/time -v (wall time, peak RSS); outputs go to
$OUT_ROOT (tmpfs), deleted after every run.
Writes Benchmarks/results/latest.md (table) and latest.csv (every run).

Options:
  --runs N          runs of cp and of each peftkit merge (default $RUNS)
  --peft-runs K     runs of each HF PEFT merge, spread over the rounds (default $PEFT_RUNS;
                    12-25 s each here)
  --adapters LIST   comma-separated adapter folders to merge (default $(IFS=,; echo "${ADAPTERS[*]}"))
  --inspect-runs N  hyperfine runs of peftkit inspect (default $INSPECT_RUNS)
  --large           also time the 66-layer checkpoint (make_inputs.py --layers 66)
  --no-extract      leave out the extract rows
  --extract-only    only the extract rows (peftkit extract, mergekit-extract-lora, errors)
  --mergekit PATH   mergekit-extract-lora (default: \$MERGEKIT, else the one on PATH;
                    pip mergekit==0.1.5, Benchmarks/requirements-mergekit.txt)
  --mergekit-runs K runs of mergekit-extract-lora, spread over the rounds (default $MERGEKIT_RUNS;
                    several minutes each here)
  --large-runs N    runs for --large (default $LARGE_RUNS)
  --peftkit PATH    peftkit binary (default: $REPO_DIR/.build/release/peftkit,
                    built with 'swift build -c release --static-swift-stdlib' if missing)
  --baseline PATH   another peftkit binary (e.g. built from an earlier commit), timed on the
                    same merges in the same rounds: its rows are "baseline merge …"
  --cache DIR       inputs made by make_inputs.py (default $CACHE)
  --results DIR     where latest.md/latest.csv go (default Benchmarks/results)
  --python PATH     Python with torch/peft/transformers (default: \$PYTHON, the active
                    virtualenv's python, else python3)
  -h, --help        this text
EOF
}

die() { echo "run.sh: $*" >&2; exit 1; }

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --runs) RUNS=${2:?}; shift 2 ;;
            --peft-runs) PEFT_RUNS=${2:?}; shift 2 ;;
            --adapters) IFS=, read -r -a ADAPTERS <<<"${2:?}"; shift 2 ;;
            --inspect-runs) INSPECT_RUNS=${2:?}; shift 2 ;;
            --large) LARGE=1; shift ;;
            --large-runs) LARGE_RUNS=${2:?}; shift 2 ;;
            --no-extract) EXTRACT=0; shift ;;
            --extract-only) EXTRACT_ONLY=1; EXTRACT=1; shift ;;
            --mergekit) MERGEKIT=${2:?}; shift 2 ;;
            --mergekit-runs) MERGEKIT_RUNS=${2:?}; shift 2 ;;
            --peftkit) PEFTKIT=${2:?}; shift 2 ;;
            --baseline) BASELINE=${2:?}; shift 2 ;;
            --cache) CACHE=${2:?}; shift 2 ;;
            --python) PYTHON=${2:?}; shift 2 ;;
            --results) RESULTS_DIR=${2:?}; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    for n in "$RUNS" "$PEFT_RUNS" "$INSPECT_RUNS" "$LARGE_RUNS" "$MERGEKIT_RUNS"; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "not a count: $n"
    done
    (( RUNS > 0 )) || die "--runs must be at least 1"
}

# The default binary is built if missing; a build failure is not fatal: the peftkit rows then
# report the failure (exit 127, no such file) and the baselines are still measured.
resolve_peftkit() {
    if [[ -z "$PEFTKIT" ]]; then
        PEFTKIT="$REPO_DIR/.build/release/peftkit"
        if [[ ! -x "$PEFTKIT" ]]; then
            echo "building peftkit (swift build -c release --static-swift-stdlib) ..."
            (cd "$REPO_DIR" && swift build -c release --product peftkit --static-swift-stdlib) >"$WORK/swift-build.log" 2>&1 \
                || echo "warning: swift build failed (log: $WORK/swift-build.log); peftkit rows will fail" >&2
        fi
    elif [[ "$PEFTKIT" == */* ]]; then
        PEFTKIT="$(cd "$(dirname "$PEFTKIT")" && pwd)/$(basename "$PEFTKIT")"
    fi
}

check_inputs() {
    local root=$1; shift
    [[ -d "$root/base" ]] || die "missing $root/base: run Benchmarks/make_inputs.py first"
    local a
    for a in "$@"; do
        [[ -f "$root/$a/adapter_model.safetensors" ]] || die "missing adapter $root/$a: run Benchmarks/make_inputs.py"
    done
}

# Reads every input once so that all timed runs start with a warm page cache (the runs are
# interleaved, so no command benefits from following another one), then copies the base to
# tmpfs once, untimed: in a VM the first touch of guest memory can cost more than the copy itself.
warm_up() {
    local root=$1
    cat "$root"/*/* >/dev/null
    rm -rf "$OUT"
    cp -r "$root/base" "$OUT"
    rm -rf "$OUT"
}

check_tmpfs_space() {
    local need_kb=$(( $(du -sk "$1" | cut -f1) * 2 ))
    local have_kb
    have_kb=$(df -k --output=avail /dev/shm | tail -1 | tr -d ' ')
    (( have_kb > need_kb )) || die "/dev/shm has ${have_kb} kB free, need about ${need_kb} kB"
}

# measure LABEL KIND ADAPTER LAYERS RUN -- COMMAND...
# Runs COMMAND under /usr/bin/time -v with a fresh output folder and appends one CSV row.
measure() {
    local label=$1 kind=$2 adapter=$3 layers=$4 run=$5; shift 6
    local tfile="$WORK/time.txt" rc=0 t0 t1
    rm -rf "$OUT"
    printf '%-42s run %-2s ' "$label" "$run"
    echo "### $label run $run: $*" >>"$WORK/commands.log"
    t0=$(date +%s%N)
    /usr/bin/time -v -o "$tfile" "$@" >>"$WORK/commands.log" 2>&1 || rc=$?
    t1=$(date +%s%N)
    rm -rf "$OUT"

    local rss user sys wall
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tfile")
    user=$(awk -F': ' '/User time \(seconds\)/ {print $2}' "$tfile")
    sys=$(awk -F': ' '/System time \(seconds\)/ {print $2}' "$tfile")
    wall=$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.4f", ns / 1e9 }')
    echo "$label,$kind,$adapter,$layers,$run,$rc,$wall,$rss,$user,$sys" >>"$CSV"
    if (( rc == 0 )); then
        awk -v w="$wall" -v r="${rss:-0}" 'BEGIN { printf "%8.2f s  %7.0f MB\n", w, r / 1024 }'
    else
        echo "failed (exit $rc)"
    fi
}

# The HF PEFT runs are spread evenly over the same rounds (the p-th lands in the round nearest p*N/K), so that a
# machine whose speed drifts during the run (a VM's neighbours) skews the speed-up less than a block of PEFT runs
# at the end would.
bench_small() {
    local root="$CACHE/llama-22l-bf16" base="$CACHE/llama-22l-bf16/base" r a p peft_done=0
    echo "== cp, peftkit merge and HF PEFT merge, 22 layers, interleaved: $RUNS rounds, $PEFT_RUNS HF PEFT run(s) each"
    # verify --merged and diff read the base and a merge of it (made once, untimed, on tmpfs) and write nothing.
    rm -rf "$MERGED"
    "$PEFTKIT" merge "$base" "$root/lora-r16" --output "$MERGED" --quiet >>"$WORK/commands.log" 2>&1 \
        || die "peftkit merge of lora-r16 failed (see $WORK/commands.log)"
    for ((r = 1; r <= RUNS; r++)); do
        measure "cp -r" cp "" 22 "$r" -- cp -r "$base" "$OUT"
        for a in "${ADAPTERS[@]}"; do
            measure "peftkit merge ${a/-/ }" peftkit "$a" 22 "$r" -- \
                "$PEFTKIT" merge "$base" "$root/$a" --output "$OUT" --force --quiet
            if [[ -n "$BASELINE" ]]; then
                measure "baseline merge ${a/-/ }" baseline "$a" 22 "$r" -- \
                    "$BASELINE" merge "$base" "$root/$a" --output "$OUT" --force --quiet
            fi
        done
        measure "peftkit verify --merged lora r16" audit lora-r16 22 "$r" -- \
            "$PEFTKIT" verify --merged "$MERGED" --base "$base" "$root/lora-r16"
        measure "peftkit diff base merged (lora r16)" audit diff 22 "$r" -- "$PEFTKIT" diff "$base" "$MERGED"
        for ((p = peft_done; p < (r * PEFT_RUNS + RUNS / 2) / RUNS; p++)); do
            peft_done=$((p + 1))
            for a in "${ADAPTERS[@]}"; do
                measure "HF PEFT merge ${a/-/ }" peft "$a" 22 "$peft_done" -- \
                    "$PYTHON" "$SCRIPT_DIR/peft_merge.py" "$base" "$root/$a" "$OUT"
            done
        done
    done
    rm -rf "$MERGED"
}

bench_inspect() {
    local base="$CACHE/llama-22l-bf16/base" rc=0
    echo "== peftkit inspect (hyperfine, $INSPECT_RUNS runs)"
    "$PEFTKIT" inspect "$base" >>"$WORK/commands.log" 2>&1 || rc=$?
    if (( rc != 0 )); then
        echo "peftkit inspect failed (exit $rc)"
        echo "peftkit inspect,inspect,,22,1,$rc,,,," >>"$CSV"
    else
        hyperfine -N --style basic --warmup 5 --runs "$INSPECT_RUNS" \
            --export-json "$WORK/inspect.json" "$PEFTKIT inspect $base" >>"$WORK/commands.log" 2>&1
        "$PYTHON" "$SCRIPT_DIR/bench_report.py" hyperfine-rows "$WORK/inspect.json" "peftkit inspect" inspect >>"$CSV"
    fi
    # The cost of starting any process, for reference.
    hyperfine -N --style basic --warmup 5 --runs "$INSPECT_RUNS" \
        --export-json "$WORK/true.json" true >>"$WORK/commands.log" 2>&1
    "$PYTHON" "$SCRIPT_DIR/bench_report.py" hyperfine-rows "$WORK/true.json" "true (process start)" true >>"$CSV"
}

# extract_errors TITLE LABEL ADAPTER SUFFIX: one of bench_extract's adapters against mergekit's, per module (a heading
# and extract_error.py's summary; nothing when that extract left no adapter). Uses bench_extract's base, tuned, theirs.
extract_errors() {
    [[ -f "$3/adapter_model.safetensors" ]] || return 0
    echo "$1:"
    echo
    "$PYTHON" "$SCRIPT_DIR/extract_error.py" "$base" "$tuned" "$2=$3" mergekit="$theirs" \
        --json "$WORK/extract_error$4.json" 2>>"$WORK/commands.log" || echo "extract_error.py failed (see $WORK/commands.log)"
    echo
}

# peftkit extract against mergekit-extract-lora at rank 64, interleaved like the merges: the mergekit runs are spread
# over the same rounds. mergekit decomposes exactly the modules peftkit does (-i _proj; -e keeps it from saving the
# embedding and head whole, which it would otherwise add to modules_to_save). The last output of each is kept for
# the error comparison.
bench_extract() {
    local root="$CACHE/llama-22l-bf16" r p m_done=0
    local base="$root/base" tuned="$root/tuned-r32"
    local mine="$OUT_ROOT/extract-peftkit" theirs="$OUT_ROOT/extract-mergekit"
    echo "== peftkit extract and mergekit-extract-lora, rank 64, interleaved: $RUNS rounds, $MERGEKIT_RUNS mergekit run(s)"
    for ((r = 1; r <= RUNS; r++)); do
        measure "peftkit extract --rank 64" extract r64 22 "$r" -- \
            "$PEFTKIT" extract "$base" "$tuned" --rank 64 -o "$mine" --force --quiet
        # Four Krylov blocks instead of twelve: faster, less accurate (its errors are compared with mergekit's below).
        measure "peftkit extract --rank 64 --iterations 4" extract r64-q4 22 "$r" -- \
            "$PEFTKIT" extract "$base" "$tuned" --rank 64 --iterations 4 -o "$mine-q4" --force --quiet
        for ((p = m_done; p < (r * MERGEKIT_RUNS + RUNS / 2) / RUNS; p++)); do
            m_done=$((p + 1))
            rm -rf "$theirs"
            measure "mergekit-extract-lora --max-rank 64" mergekit r64 22 "$m_done" -- \
                "$MERGEKIT" --model "$tuned" --base-model "$base" --out-path "$theirs" --max-rank 64 \
                -i '_proj' -e 'embed_tokens|lm_head' --quiet
        done
    done
    # Untimed: the same extract with bf16 factors like mergekit's (--dtype keep), to compare at equal output dtype.
    "$PEFTKIT" extract "$base" "$tuned" --rank 64 --dtype keep -o "$mine-bf16" --force --quiet >>"$WORK/commands.log" 2>&1 \
        || echo "peftkit extract --dtype keep failed (see $WORK/commands.log)" >&2
    if [[ -f "$mine/adapter_model.safetensors" && -f "$theirs/adapter_model.safetensors" ]]; then
        {
            extract_errors "Default (Float32 factors)" peftkit "$mine" ""
            extract_errors "With --iterations 4 (Float32 factors)" peftkit-q4 "$mine-q4" _q4
            extract_errors "With --dtype keep (bf16 factors, as mergekit writes)" peftkit-bf16 "$mine-bf16" _bf16
        } >"$WORK/extract_error.md"
    else
        echo "no adapter from one of the extract runs: errors not compared" >"$WORK/extract_error.md"
    fi
    cat "$WORK/extract_error.md"
    rm -rf "$mine" "$mine-q4" "$mine-bf16" "$theirs"
}

bench_large() {
    local root="$CACHE/llama-66l-bf16" base="$CACHE/llama-66l-bf16/base" r
    echo "== 66 layers, $LARGE_RUNS run(s), interleaved"
    for ((r = 1; r <= LARGE_RUNS; r++)); do
        measure "cp -r (66 layers)" cp "" 66 "$r" -- cp -r "$base" "$OUT"
        measure "peftkit merge lora r16 (66 layers)" peftkit lora-r16 66 "$r" -- \
            "$PEFTKIT" merge "$base" "$root/lora-r16" --output "$OUT" --force --quiet
    done
}

size_gb() {
    du -sb "$1" | awk '{ printf "%.2f GB", $1 / 1e9 }'
}

write_meta() {
    local cpu commit
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
    {
        echo "# peftkit benchmark"
        echo
        echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "- nproc: $(nproc); CPU: ${cpu:-unknown}; RAM: $(free -g | awk '/^Mem:/ {print $2}') GB"
        echo "- load average at start: $LOAD_AT_START"
        echo "- repo commit: $commit; peftkit: \`$PEFTKIT\`$([[ -n "$BASELINE" ]] && echo "; baseline: \`$BASELINE\`")"
        echo "- inputs: \`$CACHE\` (TinyLlama-1.1B shape, bf16: 22 layers $(size_gb "$CACHE/llama-22l-bf16/base")$( \
            (( LARGE == 0 )) || echo "; 66 layers $(size_gb "$CACHE/llama-66l-bf16/base")"))"
        if (( EXTRACT_ONLY == 1 )); then
            echo "- runs: $RUNS per peftkit extract row (interleaved), $MERGEKIT_RUNS per mergekit row; outputs on tmpfs ($OUT_ROOT)"
        else
            echo "- runs: $RUNS per cp/peftkit row (interleaved), $PEFT_RUNS per HF PEFT row$( \
                (( LARGE == 0 )) || echo ", $LARGE_RUNS per 66-layer row")$( \
                (( EXTRACT == 0 )) || echo ", $MERGEKIT_RUNS per mergekit row"); outputs on tmpfs ($OUT_ROOT)"
        fi
        echo "- wall time: date +%s%N around /usr/bin/time -v; peak RSS: its \"Maximum resident set size\""
    } >"$WORK/meta.md"
}

main() {
    parse_args "$@"
    WORK=$(mktemp -d /tmp/peftkit-bench.XXXXXX)
    OUT="$OUT_ROOT/out"
    CSV="$WORK/runs.csv"
    LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)
    trap 'rm -rf "$OUT_ROOT"' EXIT
    mkdir -p "$OUT_ROOT" "$RESULTS_DIR"

    command -v hyperfine >/dev/null || die "hyperfine not found (apt-get install hyperfine)"
    [[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
    "$PYTHON" -c 'import peft, transformers, torch' 2>/dev/null \
        || die "$PYTHON cannot import torch/peft/transformers (see --python)"
    (( EXTRACT_ONLY == 1 )) || check_inputs "$CACHE/llama-22l-bf16" "${ADAPTERS[@]}"
    if (( EXTRACT == 1 )); then
        [[ -f "$CACHE/llama-22l-bf16/tuned-r32/model.safetensors.index.json" ]] \
            || die "missing $CACHE/llama-22l-bf16/tuned-r32: run Benchmarks/make_tuned.py (or --no-extract)"
        command -v "$MERGEKIT" >/dev/null || die "$MERGEKIT not found (see --mergekit, or --no-extract)"
    fi
    (( LARGE == 0 )) || check_inputs "$CACHE/llama-66l-bf16" lora-r16
    resolve_peftkit
    echo "peftkit: $PEFTKIT; logs and raw files: $WORK"

    echo "label,kind,adapter,layers,run,exit,wall_s,peak_rss_kb,user_s,sys_s" >"$CSV"
    check_tmpfs_space "$CACHE/llama-22l-bf16/base"
    warm_up "$CACHE/llama-22l-bf16"
    if (( EXTRACT_ONLY == 0 )); then
        bench_small
        bench_inspect
    fi
    if (( EXTRACT == 1 )); then
        check_tmpfs_space "$CACHE/llama-22l-bf16/base"
        bench_extract
    fi
    if (( LARGE == 1 )); then
        check_tmpfs_space "$CACHE/llama-66l-bf16/base"
        warm_up "$CACHE/llama-66l-bf16"
        bench_large
    fi

    write_meta
    "$PYTHON" "$SCRIPT_DIR/bench_report.py" table "$CSV" --meta "$WORK/meta.md" >"$RESULTS_DIR/latest.md"
    if [[ -f "$WORK/extract_error.md" ]]; then
        { echo; echo "Extract, rank 64 — error per module:"; echo; cat "$WORK/extract_error.md"; } >>"$RESULTS_DIR/latest.md"
    fi
    cp "$CSV" "$RESULTS_DIR/latest.csv"
    echo
    cat "$RESULTS_DIR/latest.md"
    echo
    echo "written: $RESULTS_DIR/latest.md, $RESULTS_DIR/latest.csv"
}

main "$@"

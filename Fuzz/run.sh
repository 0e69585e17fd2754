#!/usr/bin/env bash
# Builds the libFuzzer targets and runs them, one at a time, at the lowest CPU priority.
#
#   Fuzz/run.sh TARGET SECONDS          run one target (header file index config legacy pickle peftkit mlx gguf record)
#   Fuzz/run.sh all SECONDS             run every target in turn, SECONDS each
#   Fuzz/run.sh build                   only build
#   Fuzz/run.sh minimize TARGET FILE    minimise a crashing input (libFuzzer -minimize_crash=1, 60 s)
#   Fuzz/run.sh repro TARGET FILE...    run the target once on the given inputs
#
# Working corpora go to Fuzz/.corpus/<target>/, crash/timeout/OOM inputs to Fuzz/.artifacts/<target>/, full logs to
# Fuzz/.logs/; seeds are gathered from fixtures/ at run time into Fuzz/.seeds/<target>/ (all ignored by git).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
targets=(header file index config legacy pickle peftkit mlx gguf record)

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

executable() {
    case "$1" in
        header) echo FuzzHeader ;;
        file) echo FuzzSafeTensorsFile ;;
        index) echo FuzzShardIndex ;;
        config) echo FuzzAdapterConfig ;;
        legacy) echo FuzzLegacyBin ;;
        pickle) echo FuzzPickle ;;
        peftkit) echo FuzzPeftkitFile ;;
        mlx) echo FuzzMLXAdapter ;;
        gguf) echo FuzzGGUF ;;
        record) echo FuzzUnmergeRecord ;;
        *) echo "unknown target '$1' (expected one of: ${targets[*]}, all)" >&2; exit 2 ;;
    esac
}

# Inputs longer than this are truncated by libFuzzer: each is above the target's largest seed.
max_len() {
    case "$1" in
        header | file | peftkit | mlx | gguf) echo 262144 ;;
        legacy | pickle | record) echo 65536 ;;
        index | config) echo 16384 ;;
    esac
}

dictionary() {
    case "$1" in
        header | file | record) echo "$here/dicts/safetensors.dict" ;;
        *) echo "$here/dicts/$1.dict" ;;
    esac
}

# SwiftPM renames each executable's entry point and links `--defsym main=<target>_main`; each main.swift therefore
# starts libFuzzer itself (FuzzSupport/Driver.swift). Release for speed; -enable-testing for FuzzPickle's
# @testable import; preconditions and bounds checks stay on at -O.
build() {
    echo "building fuzz targets (release, -sanitize=fuzzer,address)..." >&2
    local log="$here/.logs/build.log"
    mkdir -p "$here/.logs"
    if ! nice -n 19 swift build -c release --package-path "$here" --scratch-path "$here/.build" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing >"$log" 2>&1; then
        grep -v "Cannot export local symbol" "$log" | tail -40 >&2
        echo "build failed (full log: $log)" >&2
        exit 1
    fi
    bin="$(nice -n 19 swift build -c release --package-path "$here" --scratch-path "$here/.build" --show-bin-path)"
}

# Copies the target's seeds into Fuzz/.seeds/<target>/ (named after their path, so cases do not collide).
gather_seeds() {
    local target="$1" seeds="$here/.seeds/$1"
    rm -rf "$seeds"
    mkdir -p "$seeds"
    local -a files=()
    shopt -s nullglob
    case "$target" in
        header | file)
            files=("$root"/fixtures/reference/*.safetensors "$root"/fixtures/legacy/*.safetensors
                "$root"/fixtures/legacy/*/adapter_model.safetensors "$root"/fixtures/cases/*/base/*.safetensors
                "$root"/fixtures/cases/*/adapter/adapter_model.safetensors "$here"/seeds/peftkit/*) ;;
        index) files=("$root"/fixtures/cases/*/base/*.index.json) ;;
        config)
            files=("$root"/fixtures/cases/*/adapter/adapter_config.json "$root"/fixtures/cases/*/adapter_bin/adapter_config.json
                "$root"/fixtures/legacy/*/adapter_config.json) ;;
        legacy) files=("$root"/fixtures/legacy/*.bin "$root"/fixtures/legacy/*/*.bin "$root"/fixtures/cases/*/adapter_bin/*.bin) ;;
        pickle) ;;
        peftkit) files=("$here"/seeds/peftkit/*) ;;
        mlx) files=("$here"/seeds/mlx/*) ;;
        gguf) files=("$root"/fixtures/gguf/*/*.gguf "$here"/seeds/gguf/*) ;;
        record) files=("$root"/Tests/Corpus/controls/*/merged/peftkit-unmerge.record "$root"/Tests/Corpus/cases/*/merged/peftkit-unmerge.record) ;;
    esac
    # Earlier finds, minimised (also byte literals in the FuzzRegressionTests of the test targets).
    files+=("$here"/regressions/"$target"/*)
    local file
    for file in "${files[@]}"; do
        cp "$file" "$seeds/$(echo "${file#"$root"/}" | tr '/' '_')"
    done
    if [ "$target" = pickle ]; then
        # The data.pkl of every legacy fixture.
        for file in "$root"/fixtures/legacy/*.bin "$root"/fixtures/legacy/*/*.bin "$root"/fixtures/cases/*/adapter_bin/*.bin; do
            python3 - "$file" "$seeds/$(echo "${file#"$root"/}" | tr '/' '_').pkl" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    open(sys.argv[2], "wb").write(archive.read(name))
EOF
        done
    fi
    shopt -u nullglob
    ls "$seeds" | wc -l
}

# The environment of every run: no Swift backtracer (libFuzzer and ASan report crashes), a private temporary folder.
fuzz_env() {
    mkdir -p "$here/.tmp"
    export TMPDIR="$here/.tmp"
    export SWIFT_BACKTRACE=enable=no
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
}

run_target() {
    local target="$1" seconds="$2" exe
    exe="$(executable "$target")"
    local corpus="$here/.corpus/$target" artifacts="$here/.artifacts/$target"
    mkdir -p "$corpus" "$artifacts" "$here/.logs"
    local seed_count
    seed_count="$(gather_seeds "$target")"
    local log
    log="$here/.logs/$target-$(date +%Y%m%d-%H%M%S).log"
    local before
    before="$(ls "$artifacts" | wc -l)"
    local start end status=0
    start="$(date +%s)"
    fuzz_env
    nice -n 19 "$bin/$exe" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -max_len="$(max_len "$target")" \
        -dict="$(dictionary "$target")" -artifact_prefix="$artifacts/" -print_final_stats=1 \
        "$corpus" "$here/.seeds/$target" >"$log" 2>&1 || status=$?
    end="$(date +%s)"
    local execs rate cov ft units found
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    cov="$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)"
    ft="$( (grep -o 'ft: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)"
    units="$(ls "$corpus" | wc -l)"
    found="$(( $(ls "$artifacts" | wc -l) - before ))"
    printf '%-8s %12s execs  %5s s  %7s exec/s  cov %-5s ft %-6s corpus %-5s (seeds %s)  crashes/hangs/OOMs %s  exit %s  log %s\n' \
        "$target" "${execs:-?}" "$((end - start))" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$units" "$seed_count" "$found" \
        "$status" "${log#"$root"/}"
    if [ "$found" -gt 0 ]; then
        ls -t "$artifacts" | head -n "$found" | sed "s|^|         new artifact: ${artifacts#"$root"/}/|"
        grep -m1 -E '^==[0-9]+==ERROR|^Fatal error|deadly signal|ALARM|out-of-memory' "$log" | sed 's/^/         /' || true
    fi
}

[ $# -ge 1 ] || usage
case "$1" in
    build)
        build
        echo "built into $bin" >&2 ;;
    all)
        [ $# -eq 2 ] || usage
        build
        for target in "${targets[@]}"; do run_target "$target" "$2"; done ;;
    minimize)
        [ $# -eq 3 ] || usage
        build
        exe="$(executable "$2")"
        fuzz_env
        out="$3.min"
        nice -n 19 "$bin/$exe" -minimize_crash=1 -max_total_time=60 -timeout=5 -rss_limit_mb=2048 \
            -exact_artifact_path="$out" "$3" 2>&1 | tail -5
        echo "minimised input: $out ($(wc -c <"$out") bytes)" ;;
    repro)
        [ $# -ge 3 ] || usage
        build
        exe="$(executable "$2")"
        shift 2
        fuzz_env
        nice -n 19 "$bin/$exe" -timeout=5 -rss_limit_mb=2048 "$@" ;;
    *)
        [ $# -eq 2 ] || usage
        executable "$1" >/dev/null
        build
        run_target "$1" "$2" ;;
esac

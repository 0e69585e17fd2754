#!/usr/bin/env bash
# The whole test suite: unit and end-to-end tests, then every fixture checked against HF PEFT's reference outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
peftkit_require_packages

swift build --build-tests
# The CLI starts over with faster OpenBLAS kernels when the library fell back to slower ones than this CPU runs
# (KernelRelaunch); the test process cannot, as OpenBLAS chooses when it loads. Give it the family the CLI ends up
# with, which OpenBLAS names on stderr at OPENBLAS_VERBOSE=2, so that tests and CLI sum in the same order.
if [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
    core=$(OPENBLAS_VERBOSE=2 swift run --skip-build peftkit --version 2>&1 >/dev/null | sed -n 's/^Core: //p' | tail -n 1)
    if [[ -n "$core" ]]; then export OPENBLAS_CORETYPE="$core"; fi
fi
swift test --skip-build
swift run --skip-build peftkit verify fixtures

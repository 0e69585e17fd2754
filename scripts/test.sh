#!/usr/bin/env bash
# The whole test suite: unit and end-to-end tests, then every fixture checked against HF PEFT's reference outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
peftkit_require_packages

swift build --build-tests
swift test --skip-build
swift run --skip-build peftkit verify fixtures

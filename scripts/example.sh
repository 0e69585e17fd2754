#!/usr/bin/env bash
# The main job on the bundled example: merge a LoRA adapter (made by HF PEFT) into a tiny sharded Llama, then verify
# the merge against PEFT's own reference outputs for that case.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
peftkit_require_packages

# A statically linked Swift runtime starts in about 5 ms less than a dynamically linked one.
swift build -c release --product peftkit --static-swift-stdlib >&2
peftkit=.build/release/peftkit
example=fixtures/cases/lora-llama-f32
output=${PEFTKIT_EXAMPLE_OUTPUT:-${TMPDIR:-/tmp}/peftkit-example-merged}

"$peftkit" merge "$example/base" "$example/adapter" --output "$output" --force
echo
"$peftkit" verify "$example"

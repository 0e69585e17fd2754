#!/usr/bin/env python3
"""A synthetic fine-tune of the benchmark base, for `peftkit extract` against `mergekit-extract-lora`.

    python Benchmarks/make_tuned.py [--cache DIR] [--seed N] [--force]

Reads CACHE/llama-22l-bf16/base (made by make_inputs.py) and writes CACHE/llama-22l-bf16/tuned-r32: the same shards,
index and config, where each of the seven projections of every layer is

    W_tuned = bf16( W + B·D·A + N )

with A (32 × in) and B (out × 32) ~ N(0, 0.0133²), D = diag(1 / (1 + k/4)) (a decaying spectrum), so that B·D·A has
elements of about 3.3e-4 (1.7% of W's 0.02: σ²·√Σd_k²), and N full-rank N(0, 5e-5²) noise (15% of the change) — a rank-32
fine-tune plus a small full-rank remainder, the spectrum DESIGN §10 and issue 14 ask for. Every other tensor
(embeddings, head, norms) is copied unchanged. The bf16 rounding of W_tuned adds its own full-rank part (about
3.5e-5 per element). Shard by shard, one tensor at a time; written under NAME.partial and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 32
FACTOR_STD = 0.0133
NOISE_STD = 5e-5


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "peftkit-bench")
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    base = args.cache / "llama-22l-bf16" / "base"
    out = args.cache / "llama-22l-bf16" / "tuned-r32"
    if out.exists() and not args.force:
        print(f"{out} exists (--force to rebuild)")
        return 0
    if not (base / "model.safetensors.index.json").exists():
        print(f"missing {base}: run Benchmarks/make_inputs.py first", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    generator = torch.Generator().manual_seed(args.seed)
    decay = 1.0 / (1.0 + torch.arange(RANK, dtype=torch.float32) / 4)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    for shard in sorted(set(index["weight_map"].values())):
        tensors = {}
        with safe_open(base / shard, framework="pt") as f:
            metadata = f.metadata()
            for name in f.keys():
                w = f.get_tensor(name)
                if name.endswith(".weight") and name.split(".")[-2] in PROJECTIONS:
                    rows, columns = w.shape
                    a = torch.randn(RANK, columns, generator=generator) * FACTOR_STD
                    b = torch.randn(rows, RANK, generator=generator) * FACTOR_STD
                    noise = torch.randn(rows, columns, generator=generator) * NOISE_STD
                    w = (w.float() + (b * decay) @ a + noise).to(torch.bfloat16)
                tensors[name] = w.contiguous()
        save_file(tensors, partial / shard, metadata=metadata)
        print(f"  {shard}: {len(tensors)} tensors")
    for name in ("model.safetensors.index.json", "config.json", "generation_config.json"):
        if (base / name).exists():
            shutil.copy(base / name, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

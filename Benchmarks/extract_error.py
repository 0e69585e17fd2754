#!/usr/bin/env python3
"""Per-module error of extracted LoRA adapters against the true difference of two checkpoints.

    python Benchmarks/extract_error.py BASE TUNED LABEL=ADAPTER [LABEL=ADAPTER ...] [--json OUT]

For every module the first adapter has, ΔW = TUNED − BASE in float32 (from the stored dtype) and, per adapter,
‖ΔW − s·B·A‖_F / ‖ΔW‖_F with s = lora_alpha / r (rank_pattern / alpha_pattern looked up by the exact module path,
as both peftkit and mergekit write them; use_rslora honoured). Prints the median and largest error per adapter and,
for the second and later adapters, how many modules the first one is worse on and the largest ratio. Streams one
module at a time (both checkpoints opened with safe_open).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
from safetensors import safe_open


def open_checkpoint(folder: Path):
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    handles = [safe_open(folder / f, framework="pt") for f in files]
    where = {name: h for h in handles for name in h.keys()}
    return where


class Adapter:
    def __init__(self, folder: Path):
        self.config = json.loads((folder / "adapter_config.json").read_text())
        self.file = safe_open(folder / "adapter_model.safetensors", framework="pt")
        self.keys = set(self.file.keys())

    def modules(self) -> list[str]:
        prefix, suffix = "base_model.model.", ".lora_A.weight"
        return sorted(k[len(prefix):-len(suffix)] for k in self.keys if k.endswith(suffix))

    def product(self, module: str) -> torch.Tensor | None:
        a_key = f"base_model.model.{module}.lora_A.weight"
        if a_key not in self.keys:
            return None
        a = self.file.get_tensor(a_key).float()
        b = self.file.get_tensor(f"base_model.model.{module}.lora_B.weight").float()
        r = self.config.get("rank_pattern", {}).get(module, self.config["r"])
        alpha = self.config.get("alpha_pattern", {}).get(module, self.config["lora_alpha"])
        s = alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r
        return (b @ a) * s


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path)
    p.add_argument("tuned", type=Path)
    p.add_argument("adapters", nargs="+", help="LABEL=FOLDER")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    labels, adapters = [], []
    for item in args.adapters:
        label, _, folder = item.partition("=")
        labels.append(label)
        adapters.append(Adapter(Path(folder)))
    base, tuned = open_checkpoint(args.base), open_checkpoint(args.tuned)
    rows = []
    for module in adapters[0].modules():
        name = module + ".weight"
        delta = tuned[name].get_tensor(name).float() - base[name].get_tensor(name).float()
        norm = delta.norm().item()
        row = {"module": module}
        for label, adapter in zip(labels, adapters):
            product = adapter.product(module)
            row[label] = None if product is None else ((delta - product).norm().item() / norm)
        rows.append(row)
    lines = [f"Per-module relative error ‖ΔW − s·B·A‖_F / ‖ΔW‖_F over {len(rows)} modules (Benchmarks/extract_error.py):", ""]
    for label in labels:
        values = [r[label] for r in rows if r[label] is not None]
        missing = len(rows) - len(values)
        lines.append(f"- {label}: median {statistics.median(values):.6g}, largest {max(values):.6g}"
                     + (f" ({missing} modules missing)" if missing else ""))
    first = labels[0]
    for label in labels[1:]:
        pairs = [(r[first], r[label]) for r in rows if r[first] is not None and r[label] is not None]
        worse = sum(1 for a, b in pairs if a > b)
        ratio = max(a / b for a, b in pairs)
        lines.append(f"- {first} worse than {label} on {worse} of {len(pairs)} modules; largest ratio {first}/{label} "
                     f"{ratio:.6f}, median {statistics.median(a / b for a, b in pairs):.6f}")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"labels": labels, "rows": rows, "summary": lines}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

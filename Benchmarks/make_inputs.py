#!/usr/bin/env python3
"""Build the benchmark inputs: a TinyLlama-1.1B-shaped bf16 checkpoint and PEFT adapters for it.

No model hub is needed: the model is built from a LlamaConfig on the meta device, materialised
uninitialised, and filled tensor by tensor with seeded normals (std 0.02). Every output folder is
written under a temporary name and renamed when complete, so an interrupted run never leaves a
folder that looks finished; folders that already exist and are complete are skipped.

Layout under the cache directory (default ~/.cache/peftkit-bench):

    llama-22l-bf16/base/       config.json, model-0000k-of-0000n.safetensors, model.safetensors.index.json
    llama-22l-bf16/lora-r16/   adapter_config.json, adapter_model.safetensors  (LoRA r=16, alpha=32)
    llama-22l-bf16/bone-r64/   Bone r=64 (BoneConfig, init_weights=True)
    llama-22l-bf16/bat-r64/    Bat r=64 (BoneConfig, init_weights="bat")
    llama-22l-bf16/dora-r16/   DoRA r=16, alpha=32 (LoraConfig use_dora=True)
    llama-22l-bf16/ia3/        IA3 (down_proj as the feed-forward module)
    llama-22l-bf16/loha-r16/   LoHa r=16, alpha=32
    llama-22l-bf16/lokr-r16/   LoKr r=16, alpha=32
    llama-66l-bf16/...         with --layers 66: the same model 3x deeper, LoRA r16 only by default

The base is saved with transformers' save_pretrained(max_shard_size="1GB"), which gives 3 shards
for 22 layers and 7 for 66 (transformers' own default, 5GB, would give a single file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_KINDS = {
    # folder name -> human description; the configs are built in make_adapter_config()
    "lora": "lora-r16",
    "bone": "bone-r64",
    "bat": "bat-r64",
    "dora": "dora-r16",
    "ia3": "ia3",
    "loha": "loha-r16",
    "lokr": "lokr-r16",
}
# The trainable tensors of each kind, as named in named_parameters(), and how many each targeted module has.
ADAPTER_PARAMETERS = {
    "lora": (("lora_A", "lora_B"), 2),
    "bone": (("bone_block",), 1),
    "bat": (("bone_block",), 1),
    "dora": (("lora_A", "lora_B", "lora_magnitude_vector"), 3),
    "ia3": (("ia3_l",), 1),
    "loha": (("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), 4),
    "lokr": (("lokr_w1", "lokr_w2_a", "lokr_w2_b"), 3),
}
SHARD_SIZE = "1GB"
INIT_STD = 0.02


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "peftkit-bench",
                   help="where to put the inputs (default: %(default)s)")
    p.add_argument("--layers", type=int, default=22,
                   help="number of decoder layers (22 = TinyLlama-1.1B; 66 = the 3x checkpoint for the memory check)")
    p.add_argument("--adapters", default=None,
                   help="comma-separated subset of " + ",".join(ADAPTER_KINDS)
                   + " (default: all for 22 layers, lora otherwise)")
    p.add_argument("--seed", type=int, default=1234, help="base seed for all random weights (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild even if the outputs exist")
    args = p.parse_args(argv)
    if args.adapters is None:
        args.adapters = ",".join(ADAPTER_KINDS) if args.layers == 22 else "lora"
    kinds = [k.strip() for k in args.adapters.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ADAPTER_KINDS]
    if unknown:
        p.error(f"unknown adapter kind(s): {', '.join(unknown)} (known: {', '.join(ADAPTER_KINDS)})")
    args.adapter_kinds = kinds
    return args


def llama_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )


def empty_model(layers: int):
    """The model with bf16 parameters whose memory is allocated but never touched (no init pass)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(layers))
    model = model.to(torch.bfloat16)  # free on the meta device
    model = model.to_empty(device="cpu")
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# Completeness checks


def base_is_complete(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / s).is_file() for s in shards)
    return (folder / "model.safetensors").is_file()


def adapter_is_complete(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()


def build_atomically(final: Path, complete, build, force: bool) -> bool:
    """Run build(tmp) and rename tmp to final. Returns True if something was built."""
    if final.exists() and not force:
        if complete(final):
            print(f"skip  {final} (exists and is complete)")
            return False
        sys.exit(f"error: {final} exists but is incomplete; remove it or pass --force")
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted run of this script
    final.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    build(tmp)
    if not complete(tmp):
        sys.exit(f"error: building {final} did not produce the expected files")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    print(f"built {final} in {time.monotonic() - start:.1f} s ({human_size(folder_size(final))})")
    return True


# ---------------------------------------------------------------------------------------------
# Builders


def build_base(tmp: Path, layers: int, seed: int) -> None:
    import torch

    model = empty_model(layers)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() has a fixed order, so one generator gives reproducible weights.
        # Every parameter (norm weights included) gets N(0, 0.02): the values only need to be
        # realistic in scale, nothing evaluates this model.
        for _, param in model.named_parameters():
            param.normal_(0.0, INIT_STD, generator=gen)
    model.save_pretrained(tmp, max_shard_size=SHARD_SIZE, safe_serialization=True)


def make_adapter_config(kind: str):
    from peft import BoneConfig, IA3Config, LoHaConfig, LoKrConfig, LoraConfig

    common = dict(target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    if kind == "lora":
        return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", **common)
    if kind == "bone":
        return BoneConfig(r=64, init_weights=True, **common)
    if kind == "bat":
        return BoneConfig(r=64, init_weights="bat", **common)
    if kind == "dora":
        return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", use_dora=True, **common)
    if kind == "ia3":
        return IA3Config(feedforward_modules=["down_proj"], **common)
    if kind == "loha":
        return LoHaConfig(r=16, alpha=32, **common)
    if kind == "lokr":
        return LoKrConfig(r=16, alpha=32, **common)
    raise ValueError(kind)


def build_adapter(tmp: Path, kind: str, layers: int, base_dir: Path, seed: int) -> None:
    import torch
    from peft import get_peft_model

    # The base weights' values do not matter for creating an adapter, so the model stays
    # uninitialised (its pages are never touched and cost no RAM).
    model = empty_model(layers)
    model.name_or_path = str(base_dir)  # PEFT records this as base_model_name_or_path
    peft_model = get_peft_model(model, make_adapter_config(kind))
    gen = torch.Generator().manual_seed(seed)
    names, per_module = ADAPTER_PARAMETERS[kind]
    filled = 0
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if any(f".{part}" in name for part in names):
                if param.dtype != torch.float32:
                    sys.exit(f"error: adapter parameter {name} is {param.dtype}, expected float32")
                # Scales (DoRA's magnitude, IA3's vector) around 1 like trained ones, factors around 0.
                if "magnitude" in name or "ia3_l" in name:
                    param.normal_(1.0, INIT_STD, generator=gen)
                else:
                    param.normal_(0.0, INIT_STD, generator=gen)
                filled += 1
    expected = len(TARGET_MODULES) * layers * per_module
    if filled != expected:
        sys.exit(f"error: filled {filled} adapter tensors, expected {expected}")
    peft_model.save_pretrained(tmp, safe_serialization=True)


# ---------------------------------------------------------------------------------------------


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def human_size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    root = args.cache.expanduser().resolve() / f"llama-{args.layers}l-bf16"
    base_dir = root / "base"

    build_atomically(base_dir, base_is_complete,
                     lambda tmp: build_base(tmp, args.layers, args.seed), args.force)
    for kind in args.adapter_kinds:
        seed = args.seed + 1 + list(ADAPTER_KINDS).index(kind)
        build_atomically(root / ADAPTER_KINDS[kind], adapter_is_complete,
                         lambda tmp, kind=kind, seed=seed: build_adapter(tmp, kind, args.layers, base_dir, seed),
                         args.force)

    print(f"\ninputs in {root}:")
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
        print(f"  {sub.name:10s} {human_size(folder_size(sub)):>10s}  {sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""HF PEFT baseline: load BASE in bf16, apply ADAPTER, merge_and_unload(), save_pretrained(OUT).

This is what a user without peftkit runs; the benchmark times the whole process (imports included).
"""

import argparse
import sys


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("base", help="base checkpoint folder (transformers save_pretrained layout)")
    p.add_argument("adapter", help="PEFT adapter folder")
    p.add_argument("out", help="output folder for the merged checkpoint")
    args = p.parse_args(argv)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, args.adapter)
    merged = model.merge_and_unload()
    merged.save_pretrained(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

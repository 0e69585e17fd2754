#!/usr/bin/env python3
"""Helpers for run.sh (standard library only).

    bench_report.py hyperfine-rows JSON LABEL KIND   CSV rows (one per run) from a hyperfine --export-json file
    bench_report.py table CSV [--meta FILE]          Markdown summary of the raw CSV (medians, ratios, targets)

Raw CSV columns: label,kind,adapter,layers,run,exit,wall_s,peak_rss_kb,user_s,sys_s
kind is one of cp, peftkit, baseline (run.sh --baseline), audit (verify --merged, diff), peft, inspect, true,
extract (peftkit extract), mergekit (mergekit-extract-lora). Empty fields mean "not measured".
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import OrderedDict

CSV_FIELDS = ["label", "kind", "adapter", "layers", "run", "exit", "wall_s", "peak_rss_kb", "user_s", "sys_s"]

# Targets from the design: merge wall time relative to `cp -r`, speed-up over HF PEFT, peak RSS, inspect latency.
RATIO_TARGET = {"lora-r16": 1.3, "bone-r64": 1.3, "bat-r64": 2.0, "dora-r16": 1.5}
# Methods whose merge must cost about what a LoRA merge does: wall time relative to the LoRA r16 merge's median.
LORA_RATIO_TARGET = {"ia3": 1.3, "loha-r16": 1.3, "lokr-r16": 1.3}
SPEEDUP_TARGET = 15.0
RSS_TARGET_MB = 256.0
# DoRA's norms need a pass of their own over each weight; its memory must stay as flat as a LoRA merge's.
RSS_TARGET_MB_BY_ADAPTER = {"dora-r16": 128.0}
INSPECT_TARGET_MS = 20.0
# peftkit extract against mergekit-extract-lora (issue 14).
EXTRACT_SPEEDUP_TARGET = 30.0


def hyperfine_rows(path: str, label: str, kind: str) -> None:
    with open(path) as f:
        result = json.load(f)["results"][0]
    exits = result.get("exit_codes") or [0] * len(result["times"])
    w = csv.writer(sys.stdout, lineterminator="\n")
    for i, (t, code) in enumerate(zip(result["times"], exits), start=1):
        w.writerow([label, kind, "", "", i, code, f"{t:.6f}", "", "", ""])


class Group:
    """All runs of one row of the table."""

    def __init__(self, label: str, kind: str, adapter: str, layers: str):
        self.label, self.kind, self.adapter, self.layers = label, kind, adapter, layers
        self.rows: list[dict] = []

    @property
    def failed_exit(self) -> int | None:
        for r in self.rows:
            if int(r["exit"]) != 0:
                return int(r["exit"])
        return None

    def values(self, field: str) -> list[float]:
        return [float(r[field]) for r in self.rows if r[field] != ""]

    def median(self, field: str) -> float | None:
        v = self.values(field)
        return statistics.median(v) if v else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def load_groups(path: str) -> "OrderedDict[tuple, Group]":
    groups: OrderedDict[tuple, Group] = OrderedDict()
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["label"], row["kind"], row["adapter"], row["layers"])
            groups.setdefault(key, Group(*key)).rows.append(row)
    return groups


def find(groups, kind: str, adapter: str, layers: str) -> Group | None:
    for g in groups.values():
        if g.kind == kind and g.adapter == adapter and g.layers == layers:
            return g
    return None


def ok_median_wall(g: Group | None) -> float | None:
    if g is None or g.failed_exit is not None:
        return None
    return g.median("wall_s")


def table(csv_path: str, meta_path: str | None) -> None:
    groups = load_groups(csv_path)
    out: list[str] = []
    if meta_path:
        with open(meta_path) as f:
            out.append(f.read().rstrip("\n"))
        out.append("")

    out.append("| what | runs | median wall s | min | max | median peak RSS MB | ratio vs cp | PEFT (mergekit)/peftkit speed-up |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    checks: list[str] = []
    for g in groups.values():
        n = len(g.rows)
        if g.failed_exit is not None:
            bad = sum(1 for r in g.rows if int(r["exit"]) != 0)
            note = f"failed (exit {g.failed_exit})" + (f" in {bad}/{n} runs" if bad != n else "")
            out.append(f"| {g.label} | {n} | {note} | — | — | — | — | — |")
            if g.kind in ("peftkit", "inspect", "extract"):
                checks.append(f"- {g.label}: not measured ({note})")
            continue

        walls = g.values("wall_s")
        digits = 4 if g.kind in ("inspect", "true") else 2
        rss = g.median("peak_rss_kb")
        rss_mb = rss / 1024 if rss is not None else None
        ratio = speedup = lora_ratio = None
        if g.kind in ("peftkit", "baseline", "audit"):
            cp = ok_median_wall(find(groups, "cp", "", g.layers))
            if cp:
                ratio = statistics.median(walls) / cp
        if g.kind == "peftkit":
            lora = ok_median_wall(find(groups, "peftkit", "lora-r16", g.layers))
            if lora:
                lora_ratio = statistics.median(walls) / lora
        if g.kind in ("peft", "mergekit"):
            mine = ok_median_wall(find(groups, "peftkit" if g.kind == "peft" else "extract", g.adapter, g.layers))
            if mine:
                speedup = statistics.median(walls) / mine
        if g.kind == "extract" and g.adapter != "r64":
            theirs = ok_median_wall(find(groups, "mergekit", "r64", g.layers))
            if theirs:
                speedup = theirs / statistics.median(walls)
        out.append(
            f"| {g.label} | {n} | {fmt(statistics.median(walls), digits)} | {fmt(min(walls), digits)} | "
            f"{fmt(max(walls), digits)} | {fmt(rss_mb, 0)} | {fmt(ratio)} | {fmt(speedup, 1)} |"
        )
        checks.extend(target_checks(g, ratio, speedup, rss_mb, statistics.median(walls), lora_ratio))

    against = []
    for g in groups.values():
        if g.kind != "baseline":
            continue
        mine, theirs = ok_median_wall(find(groups, "peftkit", g.adapter, g.layers)), ok_median_wall(g)
        if mine and theirs:
            against.append(f"- {g.adapter}: peftkit {mine:.2f} s, baseline {theirs:.2f} s: "
                           f"{mine / theirs:.3f} × the baseline's median")
    if against:
        out += ["", "Against the baseline binary (same rounds):", ""] + against
    if checks:
        out += ["", "Targets:", ""] + checks
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)


def target_checks(g: Group, ratio, speedup, rss_mb, median_wall, lora_ratio=None) -> list[str]:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    lines = []
    if g.kind == "audit" and rss_mb is not None:
        lines.append(f"- {verdict(rss_mb <= RSS_TARGET_MB)} {g.label}: peak RSS {rss_mb:.0f} MB "
                     f"(target ≤ {RSS_TARGET_MB:.0f} MB)")
    if g.kind == "peftkit":
        if ratio is not None and g.adapter in RATIO_TARGET and g.layers == "22":
            t = RATIO_TARGET[g.adapter]
            lines.append(f"- {verdict(ratio <= t)} {g.label}: {ratio:.2f} × cp (target ≤ {t} ×)")
        if lora_ratio is not None and g.adapter in LORA_RATIO_TARGET and g.layers == "22":
            t = LORA_RATIO_TARGET[g.adapter]
            lines.append(f"- {verdict(lora_ratio <= t)} {g.label}: {lora_ratio:.2f} × the LoRA r16 merge "
                         f"(target ≤ {t} ×)")
        if rss_mb is not None:
            limit = RSS_TARGET_MB_BY_ADAPTER.get(g.adapter, RSS_TARGET_MB)
            lines.append(f"- {verdict(rss_mb <= limit)} {g.label}: peak RSS {rss_mb:.0f} MB "
                         f"(target ≤ {limit:.0f} MB)")
    elif g.kind == "peft" and speedup is not None:
        lines.append(f"- {verdict(speedup >= SPEEDUP_TARGET)} {g.label}: peftkit is {speedup:.1f} × faster "
                     f"(target ≥ {SPEEDUP_TARGET:.0f} ×)")
    elif g.kind == "extract" and rss_mb is not None:
        lines.append(f"- {verdict(rss_mb <= RSS_TARGET_MB)} {g.label}: peak RSS {rss_mb:.0f} MB "
                     f"(target ≤ {RSS_TARGET_MB:.0f} MB)")
        if speedup is not None:
            # A faster setting than the default: its speed-up, for the record; the target is the default's.
            lines.append(f"- {g.label}: {speedup:.1f} × faster than mergekit (not a target: the 30 × target is the "
                         f"default's, whose accuracy is no worse than mergekit's; this one's is compared below)")
    elif g.kind == "mergekit" and speedup is not None:
        lines.append(f"- {verdict(speedup >= EXTRACT_SPEEDUP_TARGET)} {g.label}: peftkit extract is {speedup:.1f} × "
                     f"faster (target ≥ {EXTRACT_SPEEDUP_TARGET:.0f} ×); mergekit's peak RSS {rss_mb:.0f} MB")
    elif g.kind == "inspect":
        ms = median_wall * 1000
        lines.append(f"- {verdict(ms <= INSPECT_TARGET_MS)} {g.label}: median {ms:.1f} ms "
                     f"(target ≤ {INSPECT_TARGET_MS:.0f} ms)")
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hyperfine-rows")
    h.add_argument("json")
    h.add_argument("label")
    h.add_argument("kind")
    t = sub.add_parser("table")
    t.add_argument("csv")
    t.add_argument("--meta", help="file whose text is printed above the table")
    args = p.parse_args(argv)
    if args.cmd == "hyperfine-rows":
        hyperfine_rows(args.json, args.label, args.kind)
    else:
        table(args.csv, args.meta)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

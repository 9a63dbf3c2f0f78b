#!/usr/bin/env python3
"""Prints criterion's latest estimates (target/criterion) as a table with
each benchmark's ratio to the baseline of its group, so the figures in
BENCHMARKS.md come from one run. Usage: scripts/bench_table.py GROUP BASELINE..."""
import json, os, sys

root = os.path.join(os.path.dirname(__file__), "..", "target", "criterion")

def estimates(group):
    out = {}
    gdir = os.path.join(root, group)
    for dirpath, _, files in os.walk(gdir):
        if dirpath.endswith(os.path.join("new")) and "estimates.json" in files:
            with open(os.path.join(dirpath, "benchmark.json")) as f:
                bid = json.load(f)["full_id"]
            with open(os.path.join(dirpath, "estimates.json")) as f:
                out[bid] = json.load(f)["median"]["point_estimate"]
    return out

def fmt(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"

group, baselines = sys.argv[1], sys.argv[2:]
est = estimates(group)
print(f"| {group} | median | ratio to baseline |")
print("| --- | --- | --- |")
for bid in sorted(est):
    suffix = bid[len(group) + 1:]
    base = next((b for b in baselines if suffix.startswith(b)), None)
    ratio = ""
    for b in baselines:
        # The baseline of a row is the row with the same parameter.
        param = suffix.split("/", 1)[1] if "/" in suffix else ""
        key = f"{group}/{b}/{param}" if param else f"{group}/{b}"
        if key in est and base is None:
            ratio = f"{est[bid] / est[key]:.2f}x"
            break
    print(f"| {suffix} | {fmt(est[bid])} | {ratio or 'baseline'} |")

#!/usr/bin/env python3
"""Writes docs/chaos.md from a `raftctl chaos` report directory (its summary.json)."""
import json
import subprocess
import sys

report = sys.argv[1]
with open(f"{report}/summary.json") as f:
    s = json.load(f)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
runs = s["runs"]
print("# Fault campaign (`make chaos-long`)\n")
print(f"Commit {commit}: {s['schedules']} schedules, {s['operations']} operations, {s['faults']} faults, "
      f"{s['outcome_unknown']} outcomes unknown, schedules with a linearizability or lock-safety violation: {len(s['violations'])} "
      f"(Porcupine, per key; stale reads are not part of this history).\n")
print("| seed | faults | ops | acknowledged | unknown | longest write gap (ms) | lock grants | fenced writes applied / rejected | lock violations | verdict | check (ms) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    c = r["check"]
    print(f"| {r['seed']} | {len(r['faults'])} | {r['ops']} | {r['acknowledged']} | {r['outcome_unknown']} | "
          f"{r['longest_write_gap_ms']:.0f} | {r['lock_grants']} | {r['fenced_writes_applied']} / {r['fenced_writes_rejected']} | "
          f"{len(r['lock_violations'])} | {'linearizable' if c['linearizable'] else 'VIOLATION'} | {c['check_ms']} |")

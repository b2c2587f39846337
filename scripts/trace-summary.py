#!/usr/bin/env python3
"""Summarizes `cllm bench gpu --trace CSV` (block timelines of one decode step) per launch kind.

    scripts/trace-summary.py trace.csv [--launches]

Blocks are grouped into launches in the order their programmatic-launch waits returned (a
launch's waits all return after its predecessor has ended). Per launch: blocks; "dep" from the
predecessor's last block end to this launch's first wait return; "run" from that to its last
block end; "early" the share of blocks that started before the predecessor ended; per block
medians of wait-return to mark 1 (a GEMV's products) and to end, and to each of marks 1..4. Averaged per kind over a step, in us.
"""
import csv
import statistics as st
import sys
from collections import OrderedDict, defaultdict


def launches(rows):
    """Launches in step order: the blocks that waited, grouped by kernel in the order their
    waits returned; a block that ended before its wait (an attention chunk past the position)
    joins the launch of its kernel whose first wait returned nearest its start."""
    waited = sorted((r for r in rows if r["wait"] > 0), key=lambda r: r["start"] + r["wait"])
    out = []
    for r in waited:
        if not out or out[-1][0] != r["kernel"]:
            out.append((r["kernel"], []))
        out[-1][1].append(r)
    gos = [min(b["start"] + b["wait"] for b in bl) for _, bl in out]
    for r in rows:
        if r["wait"] > 0:
            continue
        same = [i for i, (k, _) in enumerate(out) if k == r["kernel"]]
        if same:
            i = min(same, key=lambda i: abs(gos[i] - r["start"]))
            out[i][1].append(r)
    return out


def main():
    path = sys.argv[1]
    show = "--launches" in sys.argv
    by_model = OrderedDict()
    with open(path) as f:
        for r in csv.DictReader(f):
            by_model.setdefault(r["model"], []).append(
                {"kernel": r["kernel"], "start": int(r["start_ns"]), "wait": int(r["wait_ns"]),
                 "end": int(r["end_ns"]), "sm": int(r["sm"]),
                 "marks": [int(r[f"mark{i}_ns"]) for i in range(1, 5)]})
    for model, rows in by_model.items():
        ls = launches(rows)
        t_first = min(r["start"] for r in rows)
        t_last = max(r["start"] + r["end"] for r in rows)
        print(f"{model}: {len(ls)} launches, {len(rows)} blocks, step {(t_last - t_first) / 1e3:.1f} us")
        agg = defaultdict(lambda: defaultdict(list))
        prev_end = None
        names = {"resid": ["o_proj", "down"]}
        seen = defaultdict(int)
        for i, (k, bl) in enumerate(ls):
            name = k
            if k in names:
                name = names[k][seen[k] % 2]
            seen[k] += 1
            go = min(b["start"] + b["wait"] for b in bl if b["wait"] > 0)
            end = max(b["start"] + b["end"] for b in bl)
            first_start = min(b["start"] for b in bl)
            dep = (go - prev_end) / 1e3 if prev_end is not None else 0.0
            early = sum(1 for b in bl if prev_end is not None and b["start"] < prev_end) / len(bl)
            w2m = [b["marks"][0] - b["wait"] for b in bl if b["marks"][0] > 0]
            for i in range(4):
                ms = [b["marks"][i] - b["wait"] for b in bl if b["marks"][i] > 0 and b["wait"] > 0]
                agg[name][f"m{i + 1}"].append(st.median(ms) / 1e3 if ms else 0.0)
            w2e = [b["end"] - b["wait"] for b in bl if b["wait"] > 0]
            s2w = [b["wait"] for b in bl if b["wait"] > 0]
            a = agg[name]
            a["blocks"].append(len(bl))
            a["dep"].append(dep)
            a["run"].append((end - go) / 1e3)
            a["early"].append(early)
            a["lead"].append((go - first_start) / 1e3)
            a["w2m"].append(st.median(w2m) / 1e3 if w2m else 0.0)
            a["w2e"].append(st.median(w2e) / 1e3)
            a["s2w"].append(st.median(s2w) / 1e3)
            if show:
                print(f"  {i:3d} {name:9s} blocks {len(bl):5d} dep {dep:6.2f} run {(end - go) / 1e3:7.2f} "
                      f"early {early:4.0%} lead {(go - first_start) / 1e3:6.2f}")
            prev_end = end
        print(f"  {'kind':9s} {'n':>3s} {'blocks':>6s} {'dep':>6s} {'run':>7s} {'early':>6s} {'lead':>6s} "
              f"{'start>wait':>10s} {'wait>mark':>9s} {'wait>end':>8s} {'total':>8s}")
        for name, a in agg.items():
            n = len(a["run"])
            m = lambda k: sum(a[k]) / n
            print(f"  {name:9s} {n:3d} {m('blocks'):6.0f} {m('dep'):6.2f} {m('run'):7.2f} {m('early'):6.0%} "
                  f"{m('lead'):6.2f} {m('s2w'):10.2f} {m('w2m'):9.2f} {m('w2e'):8.2f} "
                  f"{(sum(a['dep']) + sum(a['run'])):8.1f}")
        print("  wait to marks 1..4 (median per block, us):")
        for name, a in agg.items():
            n = len(a["run"])
            print(f"  {name:9s} " + " ".join(f"{sum(a[f'm{i}']) / n:6.2f}" for i in range(1, 5)))


main()

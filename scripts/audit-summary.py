#!/usr/bin/env python3
"""Summarises the lab API server's audit log (WireKube's service accounts only, see
e2e/kubelab/src/controlplane.rs): per service account, verb and resource the request count
and latency (received to response complete) at the median, 90th percentile and worst, and the
busiest second of status patches. With --timeline, every request in order.

    scripts/audit-summary.py AUDIT_LOG [--timeline]
"""
import collections
import datetime
import json
import sys


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def requests(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("stage") != "ResponseComplete" or e.get("verb") == "watch":
                continue
            o = e.get("objectRef", {})
            resource = o.get("resource", "?")
            if o.get("subresource"):
                resource += "/" + o["subresource"]
            t0 = when(e["requestReceivedTimestamp"])
            ms = (when(e["stageTimestamp"]) - t0).total_seconds() * 1000
            who = e["user"]["username"].split(":")[-1]
            out.append((t0, ms, who, e["verb"], resource, o.get("name", "")))
    out.sort()
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows = requests(sys.argv[1])
    groups = collections.defaultdict(list)
    per_second = collections.Counter()
    for t0, ms, who, verb, resource, _ in rows:
        groups[(who, verb, resource)].append(ms)
        if resource == "wirekubepeers/status":
            per_second[t0.replace(microsecond=0)] += 1
    print(f"{'who':22} {'verb':7} {'resource':28} {'count':>5} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7}")
    for (who, verb, resource), v in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        v.sort()
        p50, p90 = v[len(v) // 2], v[int(len(v) * 0.9)]
        print(f"{who:22} {verb:7} {resource:28} {len(v):5} {p50:7.0f} {p90:7.0f} {v[-1]:7.0f}")
    if per_second:
        second, n = per_second.most_common(1)[0]
        print(f"busiest second of status patches: {n} at {second:%H:%M:%S}")
    if "--timeline" in sys.argv:
        for t0, ms, who, verb, resource, name in rows:
            print(f"{t0:%H:%M:%S.%f} {ms:6.0f} ms {who} {verb} {resource} {name}")


if __name__ == "__main__":
    main()

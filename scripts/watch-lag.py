#!/usr/bin/env python3
"""How late the start-up scenario's watch saw the agents' reports: for every report change in
a start-up history (WIREKUBE_STARTUP_HISTORY), the time the harness received it minus the
API server's completion of that node's latest status write before it (audit log). A lower
bound per change (a later write that changed nothing else shortens it); printed as
percentiles.

    scripts/watch-lag.py CAPTURE_DIR HISTORY_FILE

CAPTURE_DIR is what scripts/lab-capture.sh collected (audit.log and the agents' logs, whose
first lines give each agent's start, the history's zero for a pair).
"""
import bisect
import datetime
import glob
import json
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def agent_starts(capture):
    starts = {}
    for path in glob.glob(f"{capture}/*__agent.log"):
        node = re.search(r"__hosts__(.+?)__kubelet", path).group(1)
        with open(path) as f:
            first = ANSI.sub("", f.readline())
        starts[node] = when(first.split()[0])
    return starts


def status_writes(capture):
    writes = {}
    with open(f"{capture}/audit.log") as f:
        for line in f:
            e = json.loads(line)
            o = e.get("objectRef", {})
            if (o.get("resource"), o.get("subresource"), e["verb"]) != (
                "wirekubepeers", "status", "patch"
            ) or e["responseStatus"]["code"] != 200:
                continue
            writes.setdefault(o["name"], []).append(when(e["stageTimestamp"]))
    for v in writes.values():
        v.sort()
    return writes


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    capture, history = sys.argv[1], sys.argv[2]
    starts, writes = agent_starts(capture), status_writes(capture)
    lags = []
    with open(history) as f:
        for line in f:
            head, changes = line.rstrip("\n").split(" | ")
            x, y = head.split()
            since = max(starts[x], starts[y])
            for change in changes.split(", "):
                seen = since + float(change.split(" s ")[0])
                w = writes.get(x, [])
                i = bisect.bisect_right(w, seen)
                if i:
                    lags.append(seen - w[i - 1])
    if not lags:
        sys.exit("no report changes matched a status write")
    lags.sort()
    n = len(lags)
    q = lambda p: lags[min(n - 1, int(n * p))]
    print(f"{n} report changes: lag p50 {q(0.5):.2f} s, p90 {q(0.9):.2f} s, "
          f"p99 {q(0.99):.2f} s, max {lags[-1]:.2f} s")


if __name__ == "__main__":
    main()

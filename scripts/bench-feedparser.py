#!/usr/bin/env python3
"""RSS/Atom parsing with Python's feedparser, for comparison with
`broadcast bench ingest DIR --rss-rounds N` on the same files.

    pip install feedparser
    scripts/bench-feedparser.py ../shared/corpus/rss 20

Prints feeds/s and MB/s over every .xml/.rss/.atom/.rdf file under DIR, read into memory
first (so both sides measure parsing only)."""
import os
import sys
import time

import feedparser


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    files = []
    for d, _, names in os.walk(root):
        for n in names:
            if n.rsplit(".", 1)[-1] in ("xml", "rss", "atom", "rdf"):
                files.append(os.path.join(d, n))
    files.sort()
    bodies = [open(f, "rb").read() for f in files]
    total = sum(len(b) for b in bodies)
    entries = 0
    t = time.perf_counter()
    for _ in range(rounds):
        for b in bodies:
            entries += len(feedparser.parse(b).entries)
    secs = time.perf_counter() - t
    print(
        f"feedparser {feedparser.__version__}: {len(files)} files x {rounds} rounds: "
        f"{len(files) * rounds / secs:.0f} feeds/s, {total * rounds / 1e6 / secs:.2f} MB/s "
        f"({entries} entries, {secs:.2f} s)"
    )


if __name__ == "__main__":
    main()

"""Where a py-spy profile spends its samples: `python -m bench.hotspots PROFILE.txt [N]`.

Reads py-spy's collapsed stacks (`--format raw`) and prints the functions with the most
samples on their own (self) and anywhere on the stack (total), as file:line.
"""

from __future__ import annotations

import sys
from collections import Counter


def frames(stack: str) -> list[str]:
    """py-spy frames look like `function (path/to/file.py:123)`; the thread name comes first."""
    return [f for f in stack.split(";") if "(" in f]


def main(argv: list[str]) -> int:
    path, top = argv[0], int(argv[1]) if len(argv) > 1 else 25
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            found = frames(stack)
            if not found:
                continue
            total += samples
            own[found[-1]] += samples
            for frame in set(found):
                anywhere[frame] += samples
    print(f"{total} samples")
    for title, counter in (("self", own), ("total", anywhere)):
        print(f"\n-- {title} --")
        for frame, samples in counter.most_common(top):
            print(f"{100 * samples / max(1, total):5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

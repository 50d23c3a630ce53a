"""SLURM's compressed host lists (`gpu[01-04,07],login1`) expanded without calling `scontrol`.

The batch script asks `scontrol show hostnames`; a launcher started by `srun` inside `salloc`
needs the first host too, and must not depend on SLURM's client tools being on the PATH.
"""

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand(nodelist: str) -> list[str]:
    """`node[1-3,5]-ib,login1` -> ['node1-ib', 'node2-ib', 'node3-ib', 'node5-ib', 'login1'] (order kept)."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_item(item))
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    prefix, ranges, rest = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    tails = _expand_item(rest)  # a second bracket group: rack[1-2]-gpu[1-4]
    hosts = []
    for part in ranges.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise ValueError(f"cannot read the range {part!r} in host list entry {item!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        width = len(lo)  # zero padding: gpu[01-10] -> gpu01 ... gpu10
        for n in range(int(lo), int(hi) + 1):
            hosts.extend(f"{prefix}{n:0{width}d}{tail}" for tail in tails)
    return hosts

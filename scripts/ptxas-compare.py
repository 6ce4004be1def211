#!/usr/bin/env python3
"""Compares two scripts/ptxas-report.sh outputs kernel by kernel (matched by role: the demangled
name with namespaces normalised, since files and namespaces move in refactors).

Usage: scripts/ptxas-compare.py BEFORE.txt AFTER.txt
Prints one row per kernel (regs before -> after, spill stores/loads, smem) and exits 1 when a
kernel's registers or spills went up, or a kernel disappeared."""
import re
import sys


def load(path):
    rows = {}
    with open(path) as f:
        next(f)  # header
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6:
                continue
            regs, st, ld, smem, rest = int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), parts[5]
            # rest = "file kernel": the kernel is what follows the first space-separated field.
            kernel = rest.split(None, 1)[1].strip() if " " in rest.strip() else rest.strip()
            rows[role(kernel)] = (regs, st, ld, smem)
    return rows


def role(name):
    name = name.replace("cuda::prefill::", "cuda::internal::")
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    return name


def short(name):
    name = name.replace("attnd::kernels::cuda::internal::", "")
    name = re.sub(r"\((\w+::)*TileVariant\)", "tile ", name)
    name = re.sub(r"\((const )?(\w+::)*\w+Params( const)?\)$", "", name)
    return name.replace("void ", "")


def main():
    before, after = load(sys.argv[1]), load(sys.argv[2])
    worse = False
    print(f"{'regs':>9} {'spill st':>9} {'spill ld':>9} {'smem':>13}  kernel")
    for k in sorted(set(before) | set(after)):
        b, a = before.get(k), after.get(k)
        if b is None or a is None:
            print(f"{'-':>9} {'':>9} {'':>9} {'':>13}  {short(k)}  ({'new' if b is None else 'GONE'})")
            worse |= a is None
            continue
        flag = ""
        if a[0] > b[0] or a[1] > b[1] or a[2] > b[2]:
            flag, worse = "  <-- WORSE", True
        elif a[0] < b[0]:
            flag = "  (fewer)"
        print(f"{b[0]:>4}->{a[0]:<4} {b[1]:>4}->{a[1]:<4} {b[2]:>4}->{a[2]:<4} {b[3]:>6}->{a[3]:<6}  "
              f"{short(k)}{flag}")
    sys.exit(1 if worse else 0)


if __name__ == "__main__":
    main()

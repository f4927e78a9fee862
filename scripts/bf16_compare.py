"""Cell-by-cell comparison of two result tables written by endorm eval / evaluation.promptable (markdown):
    python scripts/bf16_compare.py results/real/rm-bench-chat.md results/real/bf16/rm-bench-chat.md
Prints every numeric cell that differs (float32 -> bf16) and the largest difference, per section."""

import re
import sys


def cells(path):
    section, out = "", {}
    for line in open(path):
        if line.startswith("#"):
            section = line.strip("# \n")
        elif line.startswith("|") and not line.startswith("|---"):
            parts = [p.strip().strip("*").replace(" †", "") for p in line.strip().strip("|").split("|")]
            if re.fullmatch(r"-?\d+(\.\d+)?", parts[-1] or "x"):
                for j, p in enumerate(parts[1:], 1):
                    if re.fullmatch(r"-?\d+(\.\d+)?", p):
                        out[(section, parts[0], j)] = float(p)
        elif line.startswith("Diagonal mean"):
            out[(section, "summary", 0)] = line.strip()
    return out


a, b = cells(sys.argv[1]), cells(sys.argv[2])
worst = 0.0
for k in a:
    if k in b and a[k] != b[k]:
        if isinstance(a[k], float):
            worst = max(worst, abs(a[k] - b[k]))
            print(f"{k[0][:40]:40s} {k[1]:22s} col {k[2]}: {a[k]} -> {b[k]}")
        else:
            print(f"{k[0][:40]:40s}\n   float32: {a[k]}\n   bf16:    {b[k]}")
print(f"largest cell difference: {worst:.1f} points")

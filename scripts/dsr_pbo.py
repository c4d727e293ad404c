#!/usr/bin/env python3
"""Independent reference values for asterflow's Deflated Sharpe Ratio and Probability of
Backtest Overfitting (src/sweep), from the formulas in DOMAIN.md section 7, written plainly:
Python's standard library only (statistics.NormalDist), brute force over the CSCV splits with
Sharpes computed from the concatenated rows (no block aggregates). tests/it/sweep.rs embeds
what this prints; run it to check them: python3 scripts/dsr_pbo.py
"""
import itertools
import math
from statistics import NormalDist

Z = NormalDist()
GAMMA = 0.5772156649015329


def sharpe(xs):
    n = len(xs)
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean / math.sqrt(var) if var > 0 else 0.0


def moments(xs):
    n = len(xs)
    mean = sum(xs) / n
    m2 = sum((x - mean) ** 2 for x in xs) / n
    m3 = sum((x - mean) ** 3 for x in xs) / n
    m4 = sum((x - mean) ** 4 for x in xs) / n
    return m3 / m2 ** 1.5, m4 / m2 ** 2


def dsr(best, periods, g3, g4, sharpes):
    n = len(sharpes)
    mean = sum(sharpes) / n
    v = sum((s - mean) ** 2 for s in sharpes) / (n - 1)
    sr0 = math.sqrt(v) * ((1 - GAMMA) * Z.inv_cdf(1 - 1 / n) + GAMMA * Z.inv_cdf(1 - 1 / (n * math.e)))
    z = (best - sr0) * math.sqrt(periods - 1) / math.sqrt(1 - g3 * best + (g4 - 1) / 4 * best ** 2)
    return sr0, Z.cdf(z)


def pbo(matrix, blocks):
    members = len(matrix)
    size = len(matrix[0]) // blocks
    cut = [[row[b * size:(b + 1) * size] for b in range(blocks)] for row in matrix]
    overfit = 0
    splits = 0
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        ins = [sharpe([x for b in chosen for x in cut[m][b]]) for m in range(members)]
        outs = [sharpe([x for b in range(blocks) if b not in chosen for x in cut[m][b]]) for m in range(members)]
        best = max(range(members), key=lambda m: (ins[m], -m))
        rank = sum(1 for s in outs if s <= outs[best])
        w = rank / (members + 1)
        if math.log(w / (1 - w)) <= 0:
            overfit += 1
        splits += 1
    return overfit / splits, splits


def series(member, periods):
    # The same deterministic series tests/it/sweep.rs builds.
    return [0.0005 * member + 0.01 * math.sin(0.37 * t * (member + 1) + member) for t in range(periods)]


if __name__ == "__main__":
    sharpes = [0.05, 0.02, -0.01, 0.08, 0.03]
    sr0, value = dsr(0.08, 1000, -0.3, 5.0, sharpes)
    print(f"dsr example: sr0 {sr0!r} dsr {value!r}")
    matrix = [series(m, 64) for m in range(6)]
    best = max(range(6), key=lambda m: sharpe(matrix[m]))
    g3, g4 = moments(matrix[best])
    sr0, value = dsr(sharpe(matrix[best]), 64, g3, g4, [sharpe(row) for row in matrix])
    print(f"series example: best {best} sharpe {sharpe(matrix[best])!r} g3 {g3!r} g4 {g4!r} sr0 {sr0!r} dsr {value!r}")
    for blocks in (4, 8):
        p, splits = pbo(matrix, blocks)
        print(f"pbo example: blocks {blocks} splits {splits} pbo {p!r}")

"""Table 5 for every method of the registry: parameters and inference GMACs at 512 x 512 with k = 5 (a script).

Each method in its paper configuration (its own backbone, its own way: 1-way-only methods parse one class), random
weights, one real forward on the CPU under torch's FlopCounterMode (MACs = FLOPs / 2). Writes --out (JSON) and prints
a Markdown table beside the paper's Table 5 where it gives a row.

    .venv/bin/python benchmarks/complexity_all.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oshp.profiling.complexity import complexity
from oshp.models.registry import METHODS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/complexity_paper.json"))
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    args = p.parse_args()
    rows = []
    for name in args.methods:
        m = METHODS[name]
        r = complexity(method=name, image_size=args.image_size, ways=5, way="k" if "k" in m.ways else "1")
        rows.append({k: r[k] for k in ("method", "display", "backbone", "way", "params_m", "params_total_m", "gmacs",
                                       "breakdown_gmacs", "seconds", "paper")})
        print(f"{name}: {r['params_m']:.2f} M, {r['gmacs']:.1f} GMACs", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"image_size": args.image_size, "ways": 5, "rows": rows}, indent=1) + "\n")
    print("\n| method | backbone | way | params (M) | paper params | GMACs | paper GMACs |\n|---|---|---|---|---|---|---|")
    for r in rows:
        paper = r["paper"] or {}
        print(f"| {r['display']} | {r['backbone']} | {r['way']} | {r['params_m']:.2f} | {paper.get('params_m', '-')} | "
              f"{r['gmacs']:.1f} | {paper.get('gmacs', '-')} |")


if __name__ == "__main__":
    main()

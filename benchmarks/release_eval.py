"""How long a converted release checkpoint takes to evaluate on this machine: `oshp convert-release` on a
release-shaped EOP-Net state dict (the release-parity fixture's seed-0 fill, k-way ATR shapes), then `oshp evaluate`
on N meta-test pairs of a synthetic dataset rendered at the paper's 512 px (Xception-65, the release's computation and
protocol). Prints the timings and writes them as JSON.

    .venv/bin/python benchmarks/release_eval.py --pairs 20 --out benchmarks/results/release_eval_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import release_fixture  # noqa: E402  (the fixture's fill rule: tests/release_fixture.py)
from oshp.core.env import device_name, resolve_device, versions  # noqa: E402
from oshp.data.layout import write_dataset_meta  # noqa: E402
from oshp.data.synth.generate import generate_synthetic  # noqa: E402
from oshp.engine.evaluate import evaluate_run  # noqa: E402
from oshp.engine.release import convert_release  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/release_eval_cpu.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.time()
        ds = generate_synthetic(tmp / "synthetic", train=10, test=60, size=args.size, seed=11, workers=1,
                                progress=False)
        write_dataset_meta(tmp / "synthetic", {**ds.meta, "test_query_pool": 30, "queries_per_class": 1,
                                               "supports_per_query": 2})
        data_s = time.time() - started
        checkpoint = tmp / "atr_kway_fold1.pth"
        torch.save(release_fixture.release_state("kway_18"), checkpoint)
        started = time.time()
        convert_release(checkpoint, dataset="atr", fold=1, way="k", out=tmp / "run", data_root=tmp / "synthetic")
        convert_s = time.time() - started
        result = evaluate_run(tmp / "run", max_pairs=args.pairs, device=args.device, progress=False)
    record = {
        "what": "convert-release + evaluate of a paper-size EOP-Net (Xception-65, release_compat) at the paper's "
                "image size on synthetic data",
        "image_size": args.size, "pairs": result["num_pairs"], "convert_s": round(convert_s, 2),
        "evaluate_s": result["wall_time_s"], "seconds_per_pair": round(result["wall_time_s"] / result["num_pairs"], 2),
        "data_generation_s": round(data_s, 2), "protocol": result["protocol"],
        "device": device_name(resolve_device(args.device)), "threads": torch.get_num_threads(), "versions": versions(),
        "command": "python benchmarks/release_eval.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "versions"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

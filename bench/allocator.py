"""glibc's default large-block policy against `service.memory.keep_freed_memory_for_reuse`, side by side.

Each round runs two fresh processes, one per policy (ABAB...), each timing the shipped default model's reconstruct
(encode, codes, decode) of a real photo at each (side, batch); the median ratio over rounds is printed per case.
A process of its own per run, because the policy is process-wide and what the allocator already holds matters.

    .venv/bin/python -m bench.allocator [--cases 256x4 256x1 128x4] [--rounds 3] [--repeats 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, statistics, sys, time
import numpy as np, torch
from skimage import data
from model import VQModel
from model.pixels import from_uint8
from service.memory import keep_freed_memory_for_reuse
policy, threads, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cases = [tuple(int(v) for v in case.split("x")) for case in sys.argv[4:]]
if policy == "reuse":
    assert keep_freed_memory_for_reuse()
torch.set_num_threads(threads)
model = VQModel.from_pretrained(os.path.join("model", "weights", "default")).optimize_for_inference()
photo = from_uint8(torch.from_numpy(np.ascontiguousarray(data.astronaut())).permute(2, 0, 1))[None]
out = {}
with torch.inference_mode():
    for side, batch in cases:
        x = torch.nn.functional.interpolate(photo, size=(side, side), mode="area").repeat(batch, 1, 1, 1)
        model.decode_indices(model.quantize(model.encode(x))[1])  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.decode_indices(model.quantize(model.encode(x))[1])
            times.append(time.perf_counter() - started)
        out[f"{side}x{batch}"] = statistics.median(times)
print(json.dumps(out))
"""


def run(policy: str, threads: int, repeats: int, cases: list[str]) -> dict[str, float]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    command = [sys.executable, "-c", PROBE, policy, str(threads), str(repeats), *cases]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=900)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["256x4", "256x1", "128x4"], help="SIDExBATCH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rounds: list[dict[str, dict[str, float]]] = []
    for _ in range(args.rounds):  # alternating: glibc's default, then reuse, ...
        rounds.append({policy: run(policy, args.threads, args.repeats, args.cases) for policy in ("default", "reuse")})
        print(json.dumps(rounds[-1]), flush=True)
    rows = []
    for case in args.cases:
        ratios = [r["default"][case] / r["reuse"][case] for r in rounds]
        rows.append(
            {
                "case": case,
                "default_ms": round(statistics.median(r["default"][case] for r in rounds) * 1e3),
                "reuse_ms": round(statistics.median(r["reuse"][case] for r in rounds) * 1e3),
                "ratio": round(statistics.median(ratios), 2),
                "ratio_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
            }
        )
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "load_average_1m": os.getloadavg()[0],
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()

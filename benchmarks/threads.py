"""Threads on a busy machine: a `generate` SDS step with 1 and 2 torch threads, alone and beside a busy process.

Each figure is the median seconds per step of `text3d_edu.generate` (defaults: 4 cameras, 32×32, render → SDS →
Adam) measured in a fresh Python process, so that the OpenMP wait policy can differ per measurement:

- `idle_1t`, `idle_2t`: the machine otherwise idle (apart from whatever else runs on it: look at `load_before`);
- `busy_1t`, `busy_2t`: beside a second process that runs the same kind of steps with 2 threads (another
  notebook, a test run), both with OMP_WAIT_POLICY=PASSIVE (what the course sets before torch is imported);
- `busy_2t_active`: the same, both processes with OMP_WAIT_POLICY=ACTIVE (libgomp spinning, the course before
  the fix);
- the ratios `busy_Nt / idle_Nt` (≤ 1.3 is the goal for the course's default) and `idle_2t / idle_1t`.

One JSON line. About 3 minutes.

    python benchmarks/threads.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BUSY_SOURCE = """
import os, sys
import text3d_edu
import torch
torch.set_num_threads(2)
from text3d_edu.generate import GenerateConfig, generate
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    generate("a blue table", config=GenerateConfig(steps=50), progress=False)
"""

STEP_SOURCE = """
import json, sys
import text3d_edu
import torch
torch.set_num_threads(int(sys.argv[1]))
from text3d_edu.generate import GenerateConfig, generate
generate("a red mug", config=GenerateConfig(steps=5), progress=False)  # warm-up: priors loaded, caches filled
_, metrics = generate("a red mug", config=GenerateConfig(steps=int(sys.argv[2])), progress=False)
print(json.dumps(metrics["seconds_per_step"]))
"""


def _environment(wait_policy: str) -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": wait_policy}


def step_seconds(threads: int, steps: int, wait_policy: str = "PASSIVE") -> float:
    """Seconds per `generate` step in a fresh process with ``threads`` torch threads."""
    out = subprocess.run([sys.executable, "-c", STEP_SOURCE, str(threads), str(steps)], capture_output=True,
                         text=True, check=True, env=_environment(wait_policy))
    return float(out.stdout.strip().splitlines()[-1])


def beside_busy_process(threads: int, steps: int, wait_policy: str = "PASSIVE") -> float:
    """``step_seconds`` while another process runs SDS steps with 2 threads."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY_SOURCE], stdout=subprocess.PIPE, text=True,
                            env=_environment(wait_policy))
    try:
        busy.stdout.readline()  # "ready": torch imported and threads set
        time.sleep(3.0)  # let it reach its steady state
        return step_seconds(threads, steps, wait_policy)
    finally:
        busy.kill()
        busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    figures = {"load_before": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), "steps": args.steps}
    figures["idle_1t"] = step_seconds(1, args.steps)
    figures["idle_2t"] = step_seconds(2, args.steps)
    figures["busy_1t"] = beside_busy_process(1, args.steps)
    figures["busy_2t"] = beside_busy_process(2, args.steps)
    figures["busy_2t_active"] = beside_busy_process(2, args.steps, wait_policy="ACTIVE")
    figures["busy_over_idle_1t"] = round(figures["busy_1t"] / figures["idle_1t"], 2)
    figures["busy_over_idle_2t"] = round(figures["busy_2t"] / figures["idle_2t"], 2)
    figures["busy_active_over_idle_2t"] = round(figures["busy_2t_active"] / figures["idle_2t"], 2)
    figures["idle_2t_over_1t"] = round(figures["idle_2t"] / figures["idle_1t"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

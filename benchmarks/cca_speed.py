"""Time of CCA on one 256-channel group on the CPU: from the joint covariance of the two
models' channels to the map and the canonical correlations (eigendecompositions, SVD).

    python benchmarks/cca_speed.py [--channels 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from workbench.alignment import canonical_correlation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    c = args.channels
    generator = torch.Generator().manual_seed(0)
    # activations of two "models" sharing a latent code, through a ReLU
    latent = torch.randn(20 * c, c, generator=generator, dtype=torch.float64)
    acts = [
        torch.relu(latent @ torch.randn(c, c, generator=generator, dtype=torch.float64))
        for _ in range(2)
    ]
    joint = torch.cov(torch.cat(acts, 1).T)
    blocks = joint[:c, :c], joint[c:, c:], joint[:c, c:]
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        canonical_correlation(*blocks, gamma=0.1)
        times.append(time.perf_counter() - started)
    result = {
        "benchmark": "cca_speed",
        "channels": c,
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
        "target_ms": 50,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Training throughput of this tree against an earlier commit, side by side in one run.

    .venv/bin/python bench/bench_train_ab.py --baseline d13e52d --models efficientnet_lite0 --sizes 128 --rounds 5

The baseline is checked out into a git worktree (bench/out/worktree-<ref>, reused); each
round runs that tree's own ``bench/bench_train.py`` and then this tree's, alternately, in
fresh processes, so both see the same machine load. Prints the median images/s of a full
training step (compute only: random uint8 batches through the engine's input transform,
precision and memory format) per side and the ratio new / baseline. A refactor that keeps
the arithmetic should give about 1.0; on a noisy 2-core machine expect ±5% between rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(?P<arch>\S+)\s+(?P<size>\d+) px\s+batch\s+(?P<batch>\d+)\s+compute\s+(?P<ips>[\d.]+) img/s", re.M)


def worktree(ref: str) -> Path:
    """A checkout of ``ref`` beside the bench output; created once, then reused."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout.strip()
    path = REPO / "bench" / "out" / f"worktree-{sha}"
    if not (path / "bench" / "bench_train.py").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)
    return path


def run_once(tree: Path, args: argparse.Namespace) -> dict[tuple[str, int, int], float]:
    """images/s per (arch, size, batch) from one bench_train.py process in ``tree``.

    ``PYTHONPATH`` puts the tree first, so each side imports its own ``h2a`` whatever the
    editable install points at (a baseline from before the package was installable also
    puts its tree first on sys.path itself).
    """
    cmd = [sys.executable, "bench/bench_train.py", "--models", *args.models, "--sizes", *map(str, args.sizes),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return {(m["arch"], int(m["size"]), int(m["batch"])): float(m["ips"]) for m in LINE.finditer(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git ref of the earlier code (e.g. the commit before a refactor)")
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    p.add_argument("--sizes", nargs="+", type=int, default=[128])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tree", type=Path, default=REPO, help="the new side (default: this checkout)")
    args = p.parse_args()
    base_tree = worktree(args.baseline)
    new_tree = args.tree.resolve()
    results: dict[str, list[dict]] = {"baseline": [], "this tree": []}
    for r in range(args.rounds):
        for label, tree in (("baseline", base_tree), ("this tree", new_tree)) if r % 2 == 0 else \
                (("this tree", new_tree), ("baseline", base_tree)):
            results[label].append(run_once(tree, args))
        print(f"round {r + 1}/{args.rounds}: " + "; ".join(
            f"{k} {' '.join(f'{v:.1f}' for v in results[k][-1].values())} img/s" for k in results), flush=True)
    print(f"baseline {args.baseline} ({base_tree.name}) vs this tree, median of {args.rounds} rounds, "
          f"batch {args.batch_size}, {args.steps} steps:")
    for key in results["baseline"][0]:
        old = statistics.median(x[key] for x in results["baseline"])
        new = statistics.median(x[key] for x in results["this tree"])
        arch, size, batch = key
        print(f"{arch:<20} {size:>4} px  baseline {old:7.1f} img/s  this tree {new:7.1f} img/s  ratio x{new / old:5.3f}")


if __name__ == "__main__":
    main()

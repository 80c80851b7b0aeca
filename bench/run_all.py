"""Every benchmark in one run, on one broker and one database: `uv run python -m bench.run_all`.

Each benchmark prints its own events/s next to the kit's raw limit pipeline measured in the same process, so
ratios are comparable even when the machine's speed is not. Output is also written to
reports/bench-<time>.txt. Use `--quick` for a smoke run with small counts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from loyalty_suite.stack import LocalStack

FULL = {
    "kit_bench": ["--events", "50000", "--batch", "1000", "--naive-events", "3000", "--repeat", "3"],
    "tiers_bench": ["--events", "20000", "--customers", "10000,1000000", "--repeat", "3"],
    # a frequent shopper's history (100 earlier purchases per customer) next to the one-purchase run
    "tiers_bench:history": ["--events", "20000", "--customers", "10000", "--history", "1,100", "--repeat", "3"],
    "referrals_bench": ["--events", "20000"],
    "surveys_bench": ["--answers", "20000"],
    "notifier_bench": ["--messages", "5000"],
}
QUICK = {
    "kit_bench": ["--events", "5000", "--batch", "500", "--naive-events", "500"],
    "tiers_bench": ["--events", "3000", "--customers", "10000"],
    "tiers_bench:history": ["--events", "3000", "--customers", "2000", "--history", "1,50"],
    "referrals_bench": ["--events", "3000"],
    "surveys_bench": ["--answers", "3000"],
    "notifier_bench": ["--messages", "500", "--paced-seconds", "2"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, not for the docs)")
    parser.add_argument("--only", nargs="*", choices=sorted(FULL), help="run only these benchmarks")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    names = args.only or list(plan)
    out_dir = Path("reports")
    out_dir.mkdir(exist_ok=True)
    out_path = out_dir / f"bench-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.txt"
    env = dict(os.environ)
    stack = None
    root = None
    if not (env.get("LOYALTY_KAFKA_BOOTSTRAP") and env.get("LOYALTY_PG_DSN")):
        root = Path(tempfile.mkdtemp(prefix="loyalty-bench-all-"))
        root.chmod(0o755)
        stack = LocalStack(root, tied_to_parent=True, fast_postgres=True)
        env.update(stack.up().as_env())
    try:
        with open(out_path, "w") as log:
            header = (f"benchmarks {datetime.now(UTC).isoformat(timespec='seconds')} on {os.cpu_count()} cores, "
                      f"load average {os.getloadavg()[0]:.2f}\n")
            print(header, end="")
            log.write(header)
            for name in names:
                module = name.split(":")[0]  # "tiers_bench:history": another run of tiers_bench
                cmd = [sys.executable, "-m", f"bench.{module}", *plan[name]]
                line = f"\n=== {' '.join(cmd[1:])}\n"
                print(line, end="", flush=True)
                log.write(line)
                started = time.monotonic()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                text = proc.stdout + (proc.stderr if proc.returncode else "")
                text += f"--- {name}: exit {proc.returncode} in {time.monotonic() - started:.0f}s\n"
                print(text, end="", flush=True)
                log.write(text)
    finally:
        if stack is not None:
            stack.down()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nwritten to {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every benchmark (bench/bench_*.py, each with a run() -> dict) and merge into results.json.

All figures come from one run on one machine, so ratios between them (ours vs the peer) are fair.
"""

import importlib.util
import json
import os
import pathlib
import platform
import sys
import time

# Before torch loads OpenMP: spinning worker threads collapse on a shared 2-core machine
# (measured: docs/bench.md#design-measurements); passive waiting costs nothing when the cores
# are free. Applies to ours and the peer alike (same process).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import torch

HERE = pathlib.Path(__file__).resolve().parent
# benches with a make target of their own (`make bench-learning`: an hour, not minutes)
SEPARATE = {'bench_learning'}


def main() -> int:
    only = set(sys.argv[1:])
    results: dict = {}
    failures = []
    for path in sorted(HERE.glob('bench_*.py')):
        name = path.stem
        if (only and name not in only) or name in SEPARATE:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f'[bench] {name} ...', flush=True)
        start = time.perf_counter()
        try:
            figures = module.run()
        except Exception as exc:  # report and go on: one broken bench must not hide the rest
            failures.append(f'{name}: {exc!r}')
            print(f'[bench] {name} FAILED: {exc!r}', flush=True)
            continue
        print(f'[bench] {name}: {json.dumps(figures)} ({time.perf_counter() - start:.0f} s)')
        results.update(figures)
    out = HERE / 'results.json'
    previous = json.loads(out.read_text()) if out.exists() and only else {}
    previous.update(results)
    previous['machine'] = {
        'cpu': platform.processor() or platform.machine(),
        'cores': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
        'date': time.strftime('%Y-%m-%d %H:%M:%S'),
    }
    out.write_text(json.dumps(previous, indent=2, sort_keys=True) + '\n')
    print(f'[bench] wrote {out}')
    for failure in failures:
        print(f'[bench] failed: {failure}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())

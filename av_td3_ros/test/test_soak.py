"""
A soak of the training graph (issue 14): three processes run for a while, their RSS sampled.

The trainer's replay buffer is small (``CAPACITY`` transitions, a few MB) so that it fills in the
first seconds; from then on nothing in the graph should grow. RSS of each node process (with its
children) is sampled every ``AV_TD3_SOAK_SAMPLE_S`` seconds; after the buffer is full and one
more sample, the growth of each process (median of its last three samples minus the median of
its first three) must stay under ``GROWTH_LIMIT_MB``, transitions must keep arriving in every
sample interval and no node may exit. The normal suite runs ``AV_TD3_SOAK_S=60`` s; ``make
stress`` runs 1200 s (20 minutes).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
import statistics
import time

from av_td3_ros.ros.bringup import ProcessBringup
import pytest
from ros_harness import RosHarness, wait_for
from test_graph_processes import fast_graph, Watcher

pytestmark = [pytest.mark.ros, pytest.mark.stress]

SOAK_S = float(os.environ.get('AV_TD3_SOAK_S', '60'))
SAMPLE_S = float(os.environ.get('AV_TD3_SOAK_SAMPLE_S', '10' if SOAK_S >= 300 else '5'))
CAPACITY = 300            # transitions: ~2.2 MB of replay, full in seconds
GROWTH_LIMIT_MB = 24.0


def tree_rss_mb(pid: int) -> float:
    """Return the RSS of a process and all its descendants, in MB (0 if it is gone)."""
    total_kb = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f'/proc/{current}/status').read_text().splitlines():
                if line.startswith('VmRSS:'):
                    total_kb += int(line.split()[1])
            children = Path(f'/proc/{current}/task/{current}/children').read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo.extend(int(c) for c in children)
    return total_kb / 1024.0


def slope_mb_per_min(times: list[float], values: list[float]) -> float:
    """Least-squares slope of values over times (s), in MB per minute."""
    if len(times) < 2:
        return 0.0
    mt, mv = statistics.fmean(times), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in times)
    if not var:
        return 0.0
    return 60.0 * sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var


def test_training_graph_soak_keeps_rss_flat(tmp_path):
    overrides = fast_graph(tmp_path)
    overrides['av_td3_trainer'].update(buffer_capacity=CAPACITY, checkpoint_every=500,
                                       keep_checkpoints=2)
    output = io.StringIO()
    graph = ProcessBringup('train_sim', overrides=overrides, output=output)
    harness = RosHarness()
    watcher = Watcher(harness)
    samples: list[tuple[float, dict[str, float], int, int]] = []
    try:
        graph.start()
        wait_for(lambda: (s := watcher.latest()) and s.buffer_size >= CAPACITY, 180,
                 f'a full replay buffer ({CAPACITY}):\n{output.getvalue()[-3000:]}')
        start = time.monotonic()
        next_sample = start
        while time.monotonic() - start < SOAK_S + SAMPLE_S:
            assert not graph.exited(), f'a node died:\n{output.getvalue()[-3000:]}'
            stats = watcher.latest()
            rss = {key: tree_rss_mb(p.pid) for key, p in graph.processes.items()}
            samples.append((time.monotonic() - start, rss, stats.transitions, stats.total_it))
            next_sample += SAMPLE_S
            time.sleep(max(0.0, next_sample - time.monotonic()))
        assert not graph.exited(), f'a node died:\n{output.getvalue()[-3000:]}'
    finally:
        watcher.close()
        code = graph.stop()
        harness.shutdown()
    log = output.getvalue()
    # samples[0] is the moment the buffer became full; the baseline starts one sample later
    kept = samples[1:]
    assert len(kept) >= 6, f'only {len(kept)} samples'
    times = [t for t, *_ in kept]
    report = []
    failures = []
    for key in graph.processes:
        values = [rss[key] for _, rss, *_ in kept]
        first = statistics.median(values[:3])
        last = statistics.median(values[-3:])
        growth = last - first
        report.append(f'{key}: {first:.1f} -> {last:.1f} MB (growth {growth:+.1f} MB, max '
                      f'{max(values):.1f}, slope {slope_mb_per_min(times, values):+.2f} '
                      f'MB/min)')
        if growth > GROWTH_LIMIT_MB:
            failures.append(f'{key} grew {growth:.1f} MB')
    counts = [n for *_, n, _ in kept]
    updates = [u for *_, u in kept]
    stalls = [i for i in range(1, len(counts)) if counts[i] <= counts[i - 1]]
    rate = (counts[-1] - counts[0]) / (times[-1] - times[0])
    print(f'\nsoak {SOAK_S:.0f} s, {len(kept)} samples every {SAMPLE_S:.0f} s, replay '
          f'capacity {CAPACITY}: transitions {counts[0]} -> {counts[-1]} ({rate:.1f}/s), '
          f'updates {updates[0]} -> {updates[-1]}\n  ' + '\n  '.join(report))
    assert code == 0, log[-3000:]
    at = log.find('Traceback')
    assert at < 0, log[max(0, at - 1500):at + 3000]
    assert not stalls, f'no new transitions in sample interval(s) {stalls}: {counts}'
    assert not failures, '; '.join(failures) + '\n' + '\n'.join(report)

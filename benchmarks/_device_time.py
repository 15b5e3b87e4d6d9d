"""GPU time of a call from the GPU's own clock: the summed durations of the kernels (and copies,
memsets) the call launches, as CUPTI records them (through torch.profiler), with L2 flushed
before each call. CUDA only.

Why not `triton.testing.do_bench` alone:
- it times a call with CUDA events around it as launched from Python; a batch-1 layer is a few
  µs of work, less than launching it costs the host, so the events time the host. A CUDA graph,
  as the runtime's streaming steps use, removes that cost; the kernels' own durations leave it out
  too.
- it flushes L2 by writing 256 MB, which leaves L2 full of dirty lines. The timed kernel then pays
  for writing them back: about 50 MB on an H200, as much as a small kernel moves itself. This
  flush reads instead, leaving clean lines.
The gaps between one call's kernels are not counted (a few µs from Python, about 1 µs in a graph).
"""

from __future__ import annotations

import functools
import statistics

import torch

CALLS = 20
FLUSH_BYTES = 256 * 2**20  # well past an H200's L2 (50 MB), as do_bench's


def device_events(fn) -> list:
    """The GPU activities (kernels, memsets, copies) of running fn once, in order of start."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)


@functools.cache
def _flush() -> tuple[torch.Tensor, frozenset[str]]:
    """A buffer larger than L2, and the names of the GPU activities that read it once."""
    buffer = torch.ones(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    return buffer, frozenset(e.name for e in device_events(lambda: buffer.sum()))


def device_times(fn, calls: int = CALLS) -> list[float]:
    """Seconds of GPU time of each of `calls` calls of fn (after one untimed call), L2 flushed
    before each. Raises RuntimeError when the trace does not show `calls` calls."""
    flush, flush_names = _flush()
    fn()

    def run():
        for _ in range(calls):
            flush.sum()  # a reduction, not a memset: its kernels cannot be mistaken for fn's
            fn()

    per_call, current, flushing = [], None, False
    for e in device_events(run):
        if e.name in flush_names:
            if not flushing and current is not None:  # a flush (of one or more kernels) ends a call
                per_call.append(current)
            current, flushing = 0.0, True
        else:
            flushing = False
            if current is not None:
                current += (e.time_range.end - e.time_range.start) / 1e6  # µs → s
    per_call.append(current)
    if len(per_call) != calls or not all(per_call):
        raise RuntimeError(f"the trace shows {len(per_call)} calls with GPU work, {calls} were made")
    return per_call


def summary(times: list[float]) -> dict:
    """Median and 10th / 90th percentiles."""
    q = statistics.quantiles(times, n=10, method="inclusive")
    return {"median": statistics.median(times), "p10": q[0], "p90": q[-1]}

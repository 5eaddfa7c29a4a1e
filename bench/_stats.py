"""How every benchmark here times and reports: median and spread over >= 5 repeats, nothing clamped.

``measure(fn, repeats)`` runs ``fn`` once to warm up, then ``repeats`` times; :class:`Sample` keeps
every figure. ``Sample.text()`` is ``median (min-max)``; ratios of two samples use their medians, or for two
interleaved ways the ratio of each back-to-back pair (:func:`paired_ratios`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MIN_REPEATS = 5


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one thing, in one unit (ms unless a benchmark says otherwise)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def text(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def as_dict(self, digits: int = 2) -> dict[str, float | int]:
        return {"median": round(self.median, digits), "min": round(self.low, digits),
                "max": round(self.high, digits), "n": len(self.values)}


def check_repeats(repeats: int) -> int:
    """``repeats``, refused below :data:`MIN_REPEATS` (a median of fewer says little about the spread)."""
    if repeats < MIN_REPEATS:
        raise SystemExit(f"--repeats {repeats}: at least {MIN_REPEATS} are needed for a median and a spread")
    return repeats


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Sample:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return Sample(tuple(times))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Sample]:
    """Like :func:`measure` for several ways of doing one thing, run in turn within each repeat, so that a
    slow spell of the machine falls on all of them rather than on one."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: Sample(tuple(v)) for name, v in times.items()}


def ratio(a: Sample, b: Sample) -> float:
    """Median of ``a`` over median of ``b``."""
    return a.median / b.median


def paired_ratios(a: Sample, b: Sample) -> Sample:
    """``a[i] / b[i]`` for each repeat of two :func:`interleaved` ways: each pair ran back to back, so a slow spell
    of the machine divides out instead of landing on one side (unitless; its median and spread)."""
    if len(a.values) != len(b.values):
        raise ValueError("paired ratios need the same number of repeats of both ways")
    return Sample(tuple(x / y for x, y in zip(a.values, b.values, strict=True)))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (first column left, the others right)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).ljust(w) if i == 0 else str(c).rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])

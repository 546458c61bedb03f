"""Shared bits of the benchmarks: starting services, making speech, percentiles."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from helpers import NatsServer, ServiceProcess, espeak_wav, free_port  # noqa: E402

__all__ = ["NatsServer", "ServiceProcess", "espeak_wav", "free_port", "percentile", "summary", "ROOT"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(name: str, values: list[float], unit: str = "s") -> str:
    return (f"{name:<44} n={len(values):<3} p50={percentile(values, 50):.3f}{unit} "
            f"p95={percentile(values, 95):.3f}{unit} mean={statistics.fmean(values):.3f}{unit}")

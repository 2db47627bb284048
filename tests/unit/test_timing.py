"""Hop / queue / step accounting from stage traces."""

from __future__ import annotations

import pytest

from svdpipe.state import StageTrace
from svdpipe.timing import StageStats, busy_fraction, hop_timings, percentile


def test_hop_and_queue_split():
    trace = [
        StageTrace("enc", started=10.002, finished=10.100, idle_since=5.0),
        # stage free since 9.0, input ready at 10.100, started 10.103: 3 ms hop, no queue
        StageTrace("s0", started=10.103, finished=10.403, idle_since=9.0, steps=3),
        # busy until 10.500 with another request: 97 ms queue, then 1 ms hop
        StageTrace("s1", started=10.501, finished=10.801, idle_since=10.500, steps=3, codec_s=0.03),
    ]
    t = hop_timings(trace, submitted=10.000)
    assert [x.stage for x in t] == ["enc", "s0", "s1"]
    assert t[0].hop_ms == pytest.approx(2.0) and t[0].queue_ms == 0
    assert t[1].hop_ms == pytest.approx(3.0) and t[1].queue_ms == 0
    assert t[2].queue_ms == pytest.approx(97.0) and t[2].hop_ms == pytest.approx(1.0)
    assert t[1].step_ms == pytest.approx(100.0)
    assert t[2].step_ms == pytest.approx(90.0)  # codec time is not step time


def test_busy_fraction_and_percentiles():
    assert busy_fraction([(0, 1), (2, 3)], 0, 4) == pytest.approx(0.5)
    assert busy_fraction([(0, 1), (2, 3)], 2, 3) == pytest.approx(1.0)
    assert busy_fraction([], 0, 1) == 0.0
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4, 5], 95) == pytest.approx(4.8)


def test_stage_stats_summary():
    stats = StageStats()
    stats.add([StageTrace("s0", 1.0, 2.0, 0.0, steps=2)], submitted=0.999)
    summary = stats.summary(busy_window_s=4.0, now=4.0)
    assert summary["s0"]["step_ms_p50"] == pytest.approx(500.0)
    assert summary["s0"]["busy_fraction"] == pytest.approx(0.25)
    assert summary["s0"]["hop_ms_p50"] == pytest.approx(1.0)

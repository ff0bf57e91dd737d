"""The testbed: emulated devices (cgroup quota calibrated from a published time) and kernel links."""

import json
import os

import numpy as np
import pytest

from benchmarks.testbed import missing_root
from benchmarks.testbed import devices
from benchmarks.testbed.devices import REFERENCES, SETTLED, calibrate, edge_backend, quota_for, \
    slowdown
from benchmarks.testbed.link import NamespaceLink



def test_the_factor_is_the_published_time_over_the_time_here():
    assert slowdown(47.436, 11.859) == pytest.approx(4.0)
    assert quota_for(4.0) == (10_000, 2_500)  # a quarter of a core
    assert quota_for(20.0) == (20_000, 1_000)  # the period grows so the quota stays above the kernel's 1 ms
    assert quota_for(4.0, cores=2) == (10_000, 5_000)
    with pytest.raises(devices.TestbedError, match="slower than the jetson-nano's published 10.0 ms: a quota can only slow"):
        slowdown(10.0, 12.5, "the jetson-nano")
    with pytest.raises(devices.TestbedError, match="times must be positive"):
        slowdown(47.4, 0.0)


def test_every_reference_names_its_source_and_runs_on_the_devices_backend():
    from runtime.backends import available

    for device, reference in REFERENCES.items():
        assert reference.device == device and reference.published_ms > 0 and reference.source
        assert edge_backend(reference.target) in available()
    assert edge_backend(REFERENCES["raspberry-pi"].target) == "tflite"  # a Pi runs its TFLite half, as deployed


def test_without_root_the_testbed_says_why(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert missing_root().startswith("the testbed needs root (cgroup CPU quotas and network namespaces)")


@pytest.mark.parametrize("device", ["jetson-nano", "raspberry-pi"])
def test_the_quota_makes_the_reference_model_as_slow_as_the_device(device, calibration):
    calibration = calibration(device)[1]
    assert calibration.factor > 1
    # under the quota the reference takes the device's published time
    assert calibration.confined_ms == pytest.approx(calibration.published_ms, rel=SETTLED)
    assert calibration.words() == (f"emulated {device}, factor {calibration.factor:.2f}, calibrated from "
                                   f"{REFERENCES[device].source}")


def test_a_round_slowed_by_a_busy_moment_is_corrected_and_a_quota_that_never_settles_is_refused(tmp_path,
                                                                                                  monkeypatch):
    published = REFERENCES["jetson-nano"].published_ms
    rounds = iter([1.30 * published, 0.85 * published, 1.02 * published])  # a busy round, an overshoot, settled
    factors = []
    monkeypatch.setattr(devices, "time_confined", lambda device, command, factor: (factors.append(factor),
                                                                                    next(rounds))[1])
    calibration = calibrate("jetson-nano", tmp_path, frames=5)
    assert calibration.confined_ms == 1.02 * published
    assert factors[1] == pytest.approx(factors[0] / 1.30) and factors[2] == pytest.approx(factors[1] / 0.85)
    assert calibration.factor == factors[2]
    monkeypatch.setattr(devices, "time_confined", lambda device, command, factor: 1.5 * published)
    with pytest.raises(devices.TestbedError, match=rf"^the quota for jetson-nano did not settle in 8 rounds: the reference "
                                           rf"took {1.5 * published:.1f} ms under the last one, published "
                                           rf"{published:.1f} ms \(is something else busy on this machine\?\)$"):
        calibrate("jetson-nano", tmp_path, frames=5)


def test_a_calibration_file_for_another_device_or_of_something_else_is_one_line(calibration_entry, tmp_path):
    from benchmarks.testbed.devices import Calibration

    written = tmp_path / "summary.json"
    written.write_text(json.dumps({"calibration": calibration_entry}))
    assert Calibration.read(written, "jetson-nano").factor == calibration_entry["factor"]
    with pytest.raises(devices.TestbedError, match=f"^{written} calibrates jetson-nano, not raspberry-pi$"):
        Calibration.read(written, "raspberry-pi")
    written.write_text(json.dumps({"device": "jetson-nano"}))
    with pytest.raises(devices.TestbedError, match=rf"^{written} holds no calibration \(KeyError: 'factor'\); expected the "
                                           r"JSON that `python -m benchmarks.testbed.devices calibrate DEVICE` prints$"):
        Calibration.read(written, "jetson-nano")


@pytest.fixture()
def calibration_entry() -> dict:
    from benchmarks.testbed.devices import Calibration

    return Calibration("jetson-nano", 3.3, 13.2, 47.436, 46.0, 10_000, 3_030, 1, REFERENCES["jetson-nano"].source
                       ).as_dict()


def test_the_namespace_link_runs_at_its_configured_rate(testbed):
    with NamespaceLink(prefix="es-test") as link:
        link.shape(1e6)
        measured = link.measure_rate(250_000)
        assert measured["link_bps"] == pytest.approx(1e6, rel=0.10)  # every byte on the wire, headers too
        assert measured["goodput_bps"] < measured["link_bps"]
        link.shape(None)
        assert link.measure_rate(2_000_000)["link_bps"] > 20e6  # unshaped: no longer the bottleneck


def test_codes_compare_allows_one_code_and_reports_the_mismatched_share():
    from benchmarks.testbed.compare_codes import compare

    reference = np.zeros((4, 8, 2, 2), np.uint8)
    other = reference.copy()
    other[0, 0, 0, 0] = 1
    result = compare(reference, other)
    assert (result["max_code_difference"], result["equal_images"]) == (1, 3)
    assert result["mismatched_fraction"] == pytest.approx(1 / reference.size)
    other[1, 0, 0, 0] = 3
    assert compare(reference, other)["max_code_difference"] == 3
    assert compare(reference, other[:2])["same_shape"] is False


def test_a_trace_file_is_read_or_refused_in_one_line(tmp_path):
    from benchmarks.testbed.devices import TestbedError
    from benchmarks.testbed.trace import read_trace

    path = tmp_path / "drive.up.csv"
    path.write_text("ms,kbit_s\n0,0\n100,1200\n200,60\n300,1200\n")
    trace = read_trace(path)
    assert trace.name == "drive" and trace.step_s == pytest.approx(0.1)
    assert trace.bps.tolist() == [0, 1.2e6, 6e4, 1.2e6]
    assert [trace.rate_at(s) for s in (0.05, 0.15, 0.25, 9.0)] == [0, 1.2e6, 6e4, 1.2e6]
    assert trace.window(0.1, 0.2).ms.tolist() == [0, 100] and trace.window(0.1, 0.2).bps.tolist() == [1.2e6, 6e4]
    for text, problem in (("t,rate\n0,1\n", "expected a header 'ms,kbit_s', got t,rate"),
                          ("ms,kbit_s\n0,1\n0,2\n", "times must increase and rates be finite and >= 0"),
                          ("ms,kbit_s\n0,1\n100,-2\n", "times must increase and rates be finite and >= 0"),
                          ("ms,kbit_s\n0,fast\n100,2\n", "could not convert string to float: 'fast'"),
                          ("ms,kbit_s\n0,1\n", "expected at least two rows of two numbers (ms, kbit/s)")):
        path.write_text(text)
        with pytest.raises(TestbedError) as refused:
            read_trace(path)
        assert str(refused.value) == f"trace {path}: {problem}"


def test_the_link_follows_a_trace_with_outages_at_the_floor(testbed, tmp_path):
    import json
    import subprocess

    from benchmarks.testbed.trace import FLOOR_BPS, TracePlayer, read_trace

    path = tmp_path / "steps.csv"
    path.write_text("ms,kbit_s\n0,1000\n300,0\n600,200\n900,200\n")
    with NamespaceLink(prefix="es-trace") as link:
        with TracePlayer(link, read_trace(path)) as player:
            player._thread.join(timeout=5)
        assert [(rate, trace) for _, rate, trace in player.applied] == [(1e6, 1e6), (FLOOR_BPS, 0.0), (2e5, 2e5)]
        assert [round(seconds, 1) for seconds, _, _ in player.applied] == [0.0, 0.3, 0.6]
        shown = subprocess.run(link.inside("edge", ["tc", "-j", "qdisc", "show", "dev", link.devices["edge"]]),
                               capture_output=True, text=True, check=True)
        assert json.loads(shown.stdout)[0]["options"]["rate"] == 25000  # bytes/s: 200 kbit/s

"""The bench's options and output, without running it (no workers, no database)."""

from __future__ import annotations

import json

import pytest

from bench import main, report
from bench.scenarios import Results
from bench.waits import percentile

META = {
    "backend": "sqlite+filesystem",
    "date": "2026-11-27 12:00:00 UTC",
    "load_before": "0.1 0.1 0.1",
    "load_after": "1.0 1.0 1.0",
    "cpus": 2,
    "workers": 2,
    "repeats": 5,
}


def waits_results() -> Results:
    res = Results()
    res.sleep = {
        "runs": 1000,
        "in_flight": 50,
        "sleep_s": 1,
        "p50_ms": 12.34,
        "p99_ms": 80.0,
        "min_ms": 2.0,
        "max_ms": 95.0,
        "wall_s": 14.2,
    }
    res.wait = {
        10: {"sends": 200, "mean_ms": 1.5, "p50_ms": 1.4, "p99_ms": 3.0, "setup_s": 0.3},
        10_000: {"sends": 200, "mean_ms": 1.6, "p50_ms": 1.5, "p99_ms": 3.1, "setup_s": 60.0},
    }
    res.invoke = {
        "n": 50,
        "ms_per_invoke": 21.5,
        "ms_per_inline_step": 1.25,
        "overhead_ms": 20.25,
    }
    return res


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile(list(reversed(values)), 1.0) == 100.0


def test_scenarios_run_in_a_fixed_order_and_unknown_names_are_refused():
    assert main.chosen_scenarios("invoke, sleep,parallel") == ["parallel", "sleep", "invoke"]
    assert main.chosen_scenarios(",".join(main.SCENARIOS)) == list(main.SCENARIOS)
    with pytest.raises(SystemExit, match="unknown scenario"):
        main.chosen_scenarios("sleep,sleep_wake_lag_ms")


def test_the_default_run_includes_the_waits_and_quick_keeps_them_tiny():
    defaults = main.parser().parse_args([])
    assert main.chosen_scenarios(defaults.scenarios) == list(main.SCENARIOS)
    full = main.options(defaults)
    assert (full.sleep_runs, full.wait_sizes, full.invoke_steps) == (1000, [10, 10_000], 50)
    quick = main.options(main.parser().parse_args(["--quick"]))
    assert (quick.sleep_runs, quick.wait_sizes, quick.invoke_steps) == (20, [10, 200], 5)
    assert (full.sleep_in_flight, quick.sleep_in_flight) == (50, 20)
    argv = ["--sleep-runs", "5", "--wait-sizes", "1,2", "--invoke-steps", "3"]
    sized = main.options(main.parser().parse_args(argv))
    assert (sized.sleep_runs, sized.wait_sizes, sized.invoke_steps) == (5, [1, 2], 3)


def test_json_line_has_the_wait_figures():
    line = json.loads(json.dumps(report.summary(META, waits_results())))
    assert line["sleep_wake_lag_ms"] == {"p50": 12.3, "p99": 80.0}
    assert line["wait_match_ms_per_send"] == {"10": 1.5, "10000": 1.6}
    assert line["invoke_overhead_ms"] == 20.25
    assert line["details"]["invoke_ms"]["ms_per_invoke"] == 21.5
    assert line["details"]["wait_match"]["10000"]["sends"] == 200


def test_json_line_without_the_wait_scenarios():
    line = report.summary(META, Results())
    assert line["sleep_wake_lag_ms"] is None
    assert line["wait_match_ms_per_send"] == {}
    assert line["invoke_overhead_ms"] is None


def test_table_has_one_line_per_wait_figure():
    text = report.table(META, waits_results())
    assert "sleep lag N=1000 (ms, p50)" in text and "(p99: 80.0; 50 runs at a time)" in text
    assert "wait, 10 waiting (ms/send)" in text and "wait, 10000 waiting (ms/send)" in text
    assert "invoke N=50 (ms/invoke)" in text and "overhead: 20.250" in text


def flow_results() -> Results:
    res = Results()
    res.concurrency = {
        "runs": 200,
        "width": 10,
        "unlimited_runs_per_s": 9.5,
        "limited_runs_per_s": 9.1,
        "ratio": 9.1 / 9.5,
    }
    res.handoff = {
        "runs": 100,
        "in_line": 100,
        "p50_ms": 11.26,
        "p99_ms": 30.0,
        "min_ms": 8.0,
        "max_ms": 31.0,
        "wall_s": 1.5,
    }
    return res


def test_flow_scenarios_are_in_the_default_run_and_quick_keeps_them_tiny():
    assert main.SCENARIOS[-3:-1] == ("concurrency", "handoff")
    assert main.chosen_scenarios("handoff,concurrency,parallel") == [
        "parallel",
        "concurrency",
        "handoff",
    ]
    full = main.options(main.parser().parse_args([]))
    assert (full.concurrency_runs, full.handoff_runs) == (200, 100)
    quick = main.options(main.parser().parse_args(["--quick"]))
    assert (quick.concurrency_runs, quick.handoff_runs) == (20, 10)
    argv = ["--concurrency-runs", "7", "--handoff-runs", "3"]
    sized = main.options(main.parser().parse_args(argv))
    assert (sized.concurrency_runs, sized.handoff_runs) == (7, 3)


def test_the_bench_wraps_the_callers_settings_on_a_queue_of_its_own(tmp_path):
    env = main.environment({"DJANGO_SETTINGS_MODULE": "shop.settings"}, root=tmp_path)
    assert env["DJANGO_SETTINGS_MODULE"] == "bench.settings"
    assert env["STEPFLOWS_BENCH_BASE_SETTINGS"] == "shop.settings"
    assert env["STEPFLOWS_BENCH_QUEUE"].startswith("stepflows-bench-")
    assert main.environment({}, root=tmp_path)["STEPFLOWS_BENCH_BASE_SETTINGS"] == (
        "project.settings"
    )
    again = main.environment({"DJANGO_SETTINGS_MODULE": "bench.settings"}, root=tmp_path)
    assert again["STEPFLOWS_BENCH_BASE_SETTINGS"] == "project.settings"


def test_the_embedded_default_gets_a_folder_of_its_own_other_backends_are_kept(tmp_path):
    assert main.environment({}, root=tmp_path)["STEPFLOWS_VAR_DIR"] == str(
        tmp_path / "var" / "bench"
    )
    chosen = {"STEPFLOWS_BENCH_DIR": str(tmp_path / "elsewhere")}
    assert (
        main.environment(chosen, root=tmp_path)["STEPFLOWS_VAR_DIR"]
        == chosen["STEPFLOWS_BENCH_DIR"]
    )
    for backend in ({"DATABASE_URL": "postgres://x/y"}, {"CELERY_BROKER_URL": "redis://x"}):
        assert "STEPFLOWS_VAR_DIR" not in main.environment(backend, root=tmp_path)


def test_json_line_has_the_flow_figures():
    line = json.loads(json.dumps(report.summary(META, flow_results())))
    assert line["concurrency_overhead"] == {
        "unlimited_runs_per_s": 9.5,
        "limited_runs_per_s": 9.1,
        "ratio": 0.958,
    }
    assert line["slot_handoff_ms"] == {"p50": 11.3, "p99": 30.0}
    assert line["details"]["concurrency"]["runs"] == 200
    assert line["details"]["handoff"]["in_line"] == 100


def test_json_line_without_the_flow_scenarios():
    line = report.summary(META, waits_results())
    assert line["concurrency_overhead"] is None
    assert line["slot_handoff_ms"] is None
    assert line["details"]["concurrency"] == {} and line["details"]["handoff"] == {}


def test_table_has_one_line_per_flow_figure():
    text = report.table(META, flow_results())
    row = next(r for r in text.splitlines() if r.startswith("concurrency limit R=200 (runs/s)"))
    assert row.split()[4:7] == ["9.5", "9.1", "0.96"]
    assert "slot hand-over N=100 (ms, p50)" in text and "(p99: 30.0;" in text
    assert "concurrency limit" not in report.table(META, waits_results())


def peer_results() -> Results:
    res = Results()
    res.parallel = {
        100: {"chord_s": 1.0, "stepflows_s": 0.9, "ratio": 0.9, "plain_s": 0.45},
        1000: {"chord_s": 10.0, "stepflows_s": 8.0, "ratio": 0.8, "plain_s": 4.0},
    }
    res.sequential = {
        1000: {
            "wall_s": 0.95,
            "ms_per_step": 0.95,
            "marginal_ms_per_step": 0.93,
            "in_run_ms_per_step": 0.9,
        }
    }
    res.throughput = {
        "chord_steps_per_s": 100.0,
        "stepflows_steps_per_s": 110.0,
        "ratio": 1.1,
        "plain_steps_per_s": 220.0,
    }
    res.peers = {
        "plain_celery": {"result_backend": "redis"},
        "dbos": {
            "version": "3.4.0",
            "parallel_s": {100: 2.0, 1000: 20.0},
            "gather_s": {100: 0.6},
            "sequential_ms_per_step": {1000: 4.75},
        },
    }
    return res


def test_peers_are_all_by_default_celery_with_quick_and_unknown_names_are_refused():
    assert main.chosen_peers(None, quick=False) == ["celery", "dbos"]
    assert main.chosen_peers(None, quick=True) == ["celery"]
    assert main.chosen_peers("none", quick=False) == []
    assert main.chosen_peers("dbos", quick=True) == ["dbos"]
    with pytest.raises(SystemExit, match="unknown peer"):
        main.chosen_peers("temporal", quick=False)


def test_json_line_gives_each_peer_and_stepflows_ratio_to_it():
    line = json.loads(json.dumps(report.summary(META, peer_results())))
    plain, dbos = line["peers"]["plain_celery"], line["peers"]["dbos"]
    assert plain["parallel_s"] == {"100": 0.45, "1000": 4.0}
    assert plain["parallel_ratio"] == {"100": 2.0, "1000": 2.0}
    assert (plain["throughput_steps_per_s"], plain["throughput_ratio"]) == (220.0, 0.5)
    assert dbos["parallel_ratio"] == {"100": 0.45, "1000": 0.4}
    assert dbos["gather_ratio"] == {"100": 1.5}
    assert dbos["sequential_ratio"] == {"1000": 0.2}
    assert line["sequential_marginal_ms_per_step"] == {"1000": 0.93}


def test_table_has_a_peers_section_and_says_why_a_peer_was_skipped():
    res = peer_results()
    res.peers["dbos"] = {"skipped": "DBOS needs PostgreSQL"}
    text = report.table(META, res)
    assert "peers (ratio: stepflows / peer)" in text
    assert "0.450 (2.00x)" in text and "220.0 (0.50x)" in text
    assert "DBOS: skipped, DBOS needs PostgreSQL" in text
    assert "each step adds: 0.930" in text
    assert report.summary(META, res)["peers"]["dbos"]["skipped"] == "DBOS needs PostgreSQL"


def test_no_peer_no_peer_section():
    assert "peers" not in report.table(META, Results())
    assert report.summary(META, Results())["peers"] == {}


def test_prefetch_table_compares_the_two_multipliers():
    res = Results()
    for m, factor in (("1", 1.0), ("4", 0.5)):
        res.prefetch[m] = {
            "width": 100,
            "short_parallel_s": 1.0 * factor,
            "short_steps_per_s": 100 / factor,
            "long_s": 2.5,
            "long_ideal_s": 2.0,
        }
    text = report.table(META, res)
    assert "worker_prefetch_multiplier" in text and "short: parallel N=100 (s)" in text
    assert "(long: 2.00 s if every process were always busy)" in text
    assert report.summary(META, res)["prefetch"]["4"]["short_parallel_s"] == 0.5

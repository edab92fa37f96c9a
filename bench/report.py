"""The bench's output: a table for people, one JSON line for machines."""

from __future__ import annotations

from typing import Any

from .scenarios import Results


def _r(x: float, digits: int = 2) -> float:
    return round(x, digits)


def summary(meta: dict[str, Any], res: Results) -> dict[str, Any]:
    return {
        "backend": meta["backend"],
        "parallel_ratio": {str(n): _r(v["ratio"]) for n, v in res.parallel.items()},
        "sequential_ms_per_step": {
            str(n): _r(v["ms_per_step"], 3) for n, v in res.sequential.items()
        },
        "throughput_ratio": _r(res.throughput["ratio"]) if res.throughput else None,
        "rss_growth": _r(res.rss["growth"], 4) if res.rss else None,
        "sleep_wake_lag_ms": (
            {"p50": _r(res.sleep["p50_ms"], 1), "p99": _r(res.sleep["p99_ms"], 1)}
            if res.sleep
            else None
        ),
        "wait_match_ms_per_send": {str(w): _r(v["mean_ms"], 3) for w, v in res.wait.items()},
        "invoke_overhead_ms": _r(res.invoke["overhead_ms"], 3) if res.invoke else None,
        "concurrency_overhead": (
            {
                "unlimited_runs_per_s": _r(c["unlimited_runs_per_s"]),
                "limited_runs_per_s": _r(c["limited_runs_per_s"]),
                "ratio": _r(c["ratio"], 3),
            }
            if (c := res.concurrency)
            else None
        ),
        "slot_handoff_ms": (
            {"p50": _r(res.handoff["p50_ms"], 1), "p99": _r(res.handoff["p99_ms"], 1)}
            if res.handoff
            else None
        ),
        "details": {
            "parallel_s": {
                str(n): {"chord": _r(v["chord_s"], 4), "stepflows": _r(v["stepflows_s"], 4)}
                for n, v in res.parallel.items()
            },
            "sequential_in_run_ms_per_step": {
                str(n): _r(v["in_run_ms_per_step"], 3) for n, v in res.sequential.items()
            },
            "throughput_steps_per_s": {k: _r(v, 2) for k, v in res.throughput.items()},
            "rss": res.rss,
            "sleep": {k: _r(v, 3) for k, v in res.sleep.items()},
            "wait_match": {
                str(w): {k: _r(x, 3) for k, x in v.items()} for w, v in res.wait.items()
            },
            "invoke_ms": {k: _r(v, 3) for k, v in res.invoke.items()},
            "concurrency": {k: _r(v, 3) for k, v in res.concurrency.items()},
            "handoff": {k: _r(v, 3) for k, v in res.handoff.items()},
            **meta,
        },
    }


def table(meta: dict[str, Any], res: Results) -> str:
    out = [
        f"stepflows bench - backend {meta['backend']}, {meta['workers']} worker processes, "
        f"{meta['cpus']} CPUs, medians of {meta['repeats']} after warm-up, {meta['date']}",
        f"load average before {meta['load_before']}, after {meta['load_after']}",
        "",
        f"{'scenario':34} {'floor (raw Celery)':>20} {'stepflows':>14} {'ratio':>7}",
    ]
    for n, v in res.parallel.items():
        out.append(
            f"{f'parallel N={n} (s, send->done)':34} {v['chord_s']:>20.3f} "
            f"{v['stepflows_s']:>14.3f} {v['ratio']:>7.2f}"
        )
    for n, v in res.sequential.items():
        out.append(
            f"{f'sequential N={n} (ms/step)':34} {'-':>20} {v['ms_per_step']:>14.3f} "
            f"{'':>7}  (in run: {v['in_run_ms_per_step']:.3f})"
        )
    if res.throughput:
        t = res.throughput
        out.append(
            f"{'throughput (steps/s)':34} {t['chord_steps_per_s']:>20.1f} "
            f"{t['stepflows_steps_per_s']:>14.1f} {t['ratio']:>7.2f}"
        )
    if res.rss:
        r = res.rss
        out.append(
            f"{'worker RSS over ' + str(r['runs']) + ' runs (KiB)':34} "
            f"{r['before_kib']:>20} {r['after_kib']:>14} {r['growth']:>+7.1%}"
        )
    if res.sleep:
        s = res.sleep
        label = f"sleep lag N={s['runs']:.0f} (ms, p50)"
        out.append(
            f"{label:34} {'-':>20} {s['p50_ms']:>14.1f} {'':>7}  "
            f"(p99: {s['p99_ms']:.1f}; {s['in_flight']:.0f} runs at a time)"
        )
    for w, v in res.wait.items():
        out.append(
            f"{f'wait, {w} waiting (ms/send)':34} {'-':>20} {v['mean_ms']:>14.3f} "
            f"{'':>7}  (p99: {v['p99_ms']:.3f})"
        )
    if res.invoke:
        i = res.invoke
        label = f"invoke N={i['n']:.0f} (ms/invoke)"
        out.append(
            f"{label:34} {'-':>20} {i['ms_per_invoke']:>14.3f} "
            f"{'':>7}  (inline step: {i['ms_per_inline_step']:.3f}, "
            f"overhead: {i['overhead_ms']:.3f})"
        )
    if res.concurrency:
        c = res.concurrency
        label = f"concurrency limit R={c['runs']:.0f} (runs/s)"
        out.append(
            f"{label:34} {c['unlimited_runs_per_s']:>20.1f} {c['limited_runs_per_s']:>14.1f} "
            f"{c['ratio']:>7.2f}  (floor: the same {c['width']:.0f}-step runs, no limit)"
        )
    if res.handoff:
        h = res.handoff
        label = f"slot hand-over N={h['runs']:.0f} (ms, p50)"
        out.append(
            f"{label:34} {'-':>20} {h['p50_ms']:>14.1f} {'':>7}  "
            f"(p99: {h['p99_ms']:.1f}; run end to next run's step)"
        )
    return "\n".join(out)

"""The bench's output: a table for people, one JSON line for machines."""

from __future__ import annotations

from typing import Any

from .costs import table_lines as costs_table
from .scenarios import Results


def _r(x: float, digits: int = 2) -> float:
    return round(x, digits)


def peers(res: Results) -> dict[str, Any]:
    """Each peer's figures and stepflows' ratio to them (time over time: under 1, faster)."""
    out: dict[str, Any] = {}
    plain = res.peers.get("plain_celery")
    if plain is not None:
        entry = dict(plain)
        sizes = {n: v for n, v in res.parallel.items() if "plain_s" in v}
        if sizes:
            entry["parallel_s"] = {str(n): _r(v["plain_s"], 4) for n, v in sizes.items()}
            entry["parallel_ratio"] = {
                str(n): _r(v["stepflows_s"] / v["plain_s"]) for n, v in sizes.items()
            }
        if "plain_steps_per_s" in res.throughput:
            t = res.throughput
            entry["throughput_steps_per_s"] = _r(t["plain_steps_per_s"], 1)
            entry["throughput_ratio"] = _r(t["stepflows_steps_per_s"] / t["plain_steps_per_s"])
        out["plain_celery"] = entry
    dbos = res.peers.get("dbos")
    if dbos is not None:
        entry = dict(dbos)
        for key, theirs in [("parallel_ratio", "parallel_s"), ("gather_ratio", "gather_s")]:
            figures = dbos.get(theirs) or {}
            entry[key] = {
                str(n): _r(res.parallel[n]["stepflows_s"] / x)
                for n, x in figures.items()
                if n in res.parallel and x
            }
        entry["sequential_ratio"] = {
            str(n): _r(res.sequential[n]["ms_per_step"] / x, 3)
            for n, x in (dbos.get("sequential_ms_per_step") or {}).items()
            if n in res.sequential and x
        }
        for key in ("parallel_s", "gather_s", "sequential_ms_per_step"):
            if key in entry:
                entry[key] = {str(n): _r(x, 4) for n, x in entry[key].items()}
        out["dbos"] = entry
    return out


def peer_lines(res: Results) -> list[str]:
    """The peers' section of the table: each figure, and stepflows' ratio to it."""
    found = peers(res)
    if not found:
        return []
    plain, dbos = found.get("plain_celery", {}), found.get("dbos", {})
    out = [
        "",
        f"{'peers (ratio: stepflows / peer)':34} {'plain Celery chord':>20} "
        f"{'DBOS queue':>16} {'DBOS gather':>16}",
    ]

    def cell(figures: dict[str, Any], ratios: dict[str, Any], n: str, fmt: str) -> str:
        if n not in figures:
            return "-"
        return f"{figures[n]:{fmt}} ({ratios.get(n, float('nan')):.2f}x)"

    for n in res.parallel:
        key = str(n)
        out.append(
            f"{f'parallel N={n} (s)':34} "
            f"{cell(plain.get('parallel_s', {}), plain.get('parallel_ratio', {}), key, '.3f'):>20} "
            f"{cell(dbos.get('parallel_s', {}), dbos.get('parallel_ratio', {}), key, '.3f'):>16} "
            f"{cell(dbos.get('gather_s', {}), dbos.get('gather_ratio', {}), key, '.3f'):>16}"
        )
    for n in res.sequential if dbos.get("sequential_ms_per_step") else []:
        key = str(n)
        seq = cell(
            dbos.get("sequential_ms_per_step", {}), dbos.get("sequential_ratio", {}), key, ".3f"
        )
        out.append(f"{f'sequential N={n} (ms/step)':34} {'-':>20} {seq:>16} {'-':>16}")
    if "throughput_steps_per_s" in plain:
        tp = f"{plain['throughput_steps_per_s']:.1f} ({plain['throughput_ratio']:.2f}x)"
        out.append(f"{'throughput (steps/s)':34} {tp:>20} {'-':>16} {'-':>16}")
    for name, entry in (("plain Celery", plain), ("DBOS", dbos)):
        if "skipped" in entry:
            out.append(f"{'':34} {name}: skipped, {entry['skipped']}")
    return out


def summary(meta: dict[str, Any], res: Results) -> dict[str, Any]:
    return {
        "backend": meta["backend"],
        "parallel_ratio": {str(n): _r(v["ratio"]) for n, v in res.parallel.items()},
        "sequential_ms_per_step": {
            str(n): _r(v["ms_per_step"], 3) for n, v in res.sequential.items()
        },
        "sequential_marginal_ms_per_step": {
            str(n): _r(v["marginal_ms_per_step"], 3) for n, v in res.sequential.items()
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
        "prefetch": (
            {m: {k: _r(v, 3) for k, v in p.items()} for m, p in res.prefetch.items()}
            if res.prefetch
            else None
        ),
        "costs": res.costs or None,
        "peers": peers(res),
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
            f"{'':>7}  (in run: {v['in_run_ms_per_step']:.3f}, "
            f"each step adds: {v['marginal_ms_per_step']:.3f})"
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
    if res.prefetch:
        out += ["", f"{'worker_prefetch_multiplier':34} {'1':>20} {'4':>14} {'4 / 1':>7}"]
        one, four = res.prefetch["1"], res.prefetch["4"]
        rows = [
            (f"short: parallel N={one['width']:.0f} (s)", "short_parallel_s", ".3f"),
            ("short: 10-step runs (steps/s)", "short_steps_per_s", ".1f"),
            ("long: sleeping steps (s)", "long_s", ".3f"),
        ]
        for label, key, fmt in rows:
            out.append(
                f"{label:34} {one[key]:>20{fmt}} {four[key]:>14{fmt}} {four[key] / one[key]:>7.2f}"
            )
        out.append(f"{'':34} (long: {one['long_ideal_s']:.2f} s if every process were always busy)")
    out += peer_lines(res)
    if res.costs:
        out += ["", *costs_table(res.costs)]
    return "\n".join(out)

"""The targets' table of one ``bench/gpu-run.sh`` call, from the JSON its parts wrote.

    python bench/gpu_summary.py OUT_DIR     # reads gpu.json, host.json, cpu.json; writes summary.json

One row per target: the measured value, the target, and whether it is met.
A part that did not run, failed or ran out of time leaves its rows "not
measured" rather than failing the table, so a partial run still reports
what it has. From a CPU rehearsal (``--device cpu``) the numbers only show
that the code around them runs: the table says so, and leaves the CUDA-only
rows unmeasured. Standard library only, so it runs whatever broke.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]

US = 1e6  # seconds to microseconds


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rows_at(gpu: dict[str, Any] | None, shape_name: str, logp: str | None = None) -> list[Row]:
    """gpu.py's table-1 rows at one of its target shapes (either logp dtype unless named)."""
    if not gpu or shape_name not in gpu.get("target_shapes", {}):
        return []
    rows, tokens = gpu["target_shapes"][shape_name]
    return [
        r for r in gpu.get("rows", []) if (r["B"], r["T"]) == (rows, tokens) and (logp is None or r.get("logp") == logp)
    ]


DTYPES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def worst(rows: list[Row], key: str, pick: Callable[..., float], scale: float = 1.0) -> tuple[float | None, str]:
    """The worst value of ``key`` (times ``scale``) over the logp dtypes
    measured, and every one of them: a target holds for each dtype or not at all."""
    found = {DTYPES.get(r.get("logp"), r.get("logp")): r[key] * scale for r in rows if finite(r.get(key))}
    if not found:
        return None, ""
    return pick(found.values()), ", ".join(f"{k}: {v:.4g}" for k, v in found.items())


def target_text(op: str, bound: float, unit: str) -> str:
    return f"{op} {bound:g}{'' if unit in ('x', '%', '') else ' '}{unit}"


def joined(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def shape_text(gpu: dict[str, Any] | None, name: str, default: tuple[int, int]) -> str:
    rows, tokens = (gpu or {}).get("target_shapes", {}).get(name, default)
    return f"({rows}, {tokens})"


def targets(gpu: dict[str, Any] | None, host: dict[str, Any] | None, cpu: dict[str, Any] | None) -> list[Row]:
    """Every target, measured or not: what, measured, target, met, source, detail."""
    on_cuda = bool(gpu) and gpu.get("device", "cpu") != "cpu"
    update_shape = shape_text(gpu, "update", (256, 4096))
    kernel_shape = shape_text(gpu, "kernel", (1024, 32768))
    host_us = (host or {}).get("host_us", {})
    out: list[Row] = []

    def add(key, what, value, unit, op, bound, source, detail="", cuda_only=False):
        if cuda_only and not on_cuda:
            value, detail = None, joined("CUDA only", detail)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out.append(
            {
                "id": key,
                "what": what,
                "measured": value,
                "unit": unit,
                "target": target_text(op, bound, unit),
                "met": met,
                "source": source,
                "detail": detail,
            }
        )

    update = rows_at(gpu, "update")

    value, detail = worst(update, "update_wall_s", max, US)
    also = host_us.get("update, compile_step=False")
    if finite(also):
        detail = joined(detail, f"gpu_host.py: {also:.4g} us")
    add(
        "eager_host",
        f"eager update, host time per update, {update_shape}",
        value,
        "us",
        "<=",
        300,
        "gpu.py update_wall_s",
        detail,
    )

    value, detail = worst(update, "update_busy_beyond_kernel_s", max, US)
    add(
        "eager_gpu_beyond_kernel",
        f"eager update, GPU time beyond the statistics kernel, {update_shape}",
        value,
        "us",
        "<=",
        60,
        "gpu.py update_busy_beyond_kernel_s",
        detail,
        cuda_only=True,
    )

    value, detail = worst(update, "update_graphs_wall_s", max, US)
    also = host_us.get("update, compile_step='reduce-overhead'")
    if finite(also):
        detail = joined(detail, f"gpu_host.py: {also:.4g} us")
    add(
        "replayed_host",
        f'replayed update (compile_step="reduce-overhead"), host time, {update_shape}',
        value,
        "us",
        "<=",
        50,
        "gpu.py update_graphs_wall_s",
        detail,
    )

    value, detail = kernel_bandwidth(gpu)
    add(
        "kernel_pct_copy",
        f"statistics kernel, % of copy bandwidth, {kernel_shape} bf16",
        value,
        "%",
        ">=",
        50,
        "gpu.py kernel_pct_copy",
        detail,
    )

    value, detail = worst(update, "speedup_vs_public", min)
    add(
        "eager_vs_public",
        f"eager update vs the public implementation's statistics path, {update_shape}",
        value,
        "x",
        ">=",
        5,
        "gpu.py speedup_vs_public",
        detail,
    )

    cpu_rows = (cpu or {}).get("rows", [])
    ratios = {r["adv"]: r["ratio_median"] for r in cpu_rows if finite(r.get("ratio_median"))}
    value = min(ratios.values()) if len(ratios) == 2 else None
    shapes = sorted({f"({r['B']}, {r['T']})" for r in cpu_rows})
    detail = "; ".join(f"adv {r['adv']}: {r['ratio_median']:.2f} median, {r['ratio_min']:.2f} min" for r in cpu_rows)
    add(
        "cpu_vs_public",
        f"CPU torch update vs the public implementation, {', '.join(shapes) or '(64, 1024)'}, 1 thread, adv [B] and [B, T]",
        value,
        "x",
        ">=",
        1,
        "cpu_public_gac.py ratio_median",
        detail,
    )

    syncs = {}
    for r in (gpu or {}).get("rows", []):
        for mode in ("", "_compiled", "_graphs"):
            count = r.get(f"update{mode}_syncs")
            if finite(count):
                syncs[mode or "_eager"] = max(syncs.get(mode or "_eager", 0), count)
    add(
        "host_syncs",
        "host syncs per update, one process",
        max(syncs.values()) if syncs else None,
        "",
        "<=",
        0,
        "gpu.py update*_syncs",
        ", ".join(f"{mode[1:]}: {count}" for mode, count in syncs.items()),
    )
    return out


def kernel_bandwidth(gpu: dict[str, Any] | None) -> tuple[float | None, str]:
    """The default kernel's % of copy at the kernel shape, bf16: table 1's row,
    else the sweep's default setting there (the sweep runs first, so it is
    there when table 1 ran out of time); the sweep's best setting as detail."""
    value = None
    for r in rows_at(gpu, "kernel", "bfloat16"):
        if finite(r.get("kernel_pct_copy")):
            value = r["kernel_pct_copy"]
    shape = tuple((gpu or {}).get("target_shapes", {}).get("kernel", ()))
    sweep = [r for r in (gpu or {}).get("sweep", []) if (r["B"], r["T"]) == shape and finite(r.get("pct_copy"))]
    detail = ""
    if value is None:
        defaults = [r["pct_copy"] for r in sweep if r.get("default")]
        value = defaults[0] if defaults else None
        detail = "from the sweep's default setting" if defaults else ""
    if sweep:
        best = max(sweep, key=lambda r: r["pct_copy"])
        settings = f"block_t {best['block_t']}, chunks {best['chunks']}, warps {best['warps']}"
        note = f"best in sweep: {best['pct_copy']:.1f}% ({settings}{', the default' if best.get('default') else ''})"
        detail = joined(detail, note)
    return value, detail


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def measured_text(row: Row) -> str:
    value = row["measured"]
    if value is None:
        return "-"
    if row["unit"] == "x":
        return f"{value:.2f}x"
    if row["unit"] == "":
        return f"{value:g}"
    return f"{value:.1f}{'' if row['unit'] == '%' else ' '}{row['unit']}"


def render(rows: list[Row], device: str) -> str:
    header = ("what", "measured", "target", "status", "source")
    cells = [(r["what"], measured_text(r), r["target"], verdict(r["met"]), r["source"]) for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    lines = [f"Targets ({device})"]
    if device == "cpu":
        lines.append("CPU rehearsal: these numbers only show that the code around each measurement runs.")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for cell, row in zip(cells, rows, strict=True):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())
        if row["detail"]:
            lines.append(f"    {row['detail']}")
    met = sum(r["met"] is True for r in rows)
    missing = sum(r["met"] is None for r in rows)
    lines.append(f"{met} of {len(rows)} targets met, {missing} not measured")
    return "\n".join(lines)


def part_times(path: Path) -> dict[str, dict[str, Any]]:
    """gpu-run.sh's record of each part (exit status, seconds): what the next
    run's time budget is set from."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, status, seconds = line.split()
        times[name] = {"exit": status, "seconds": int(seconds)}
    return times


def summarize(out_dir: Path) -> dict[str, Any]:
    gpu, host, cpu = (load(out_dir / name) for name in ("gpu.json", "host.json", "cpu.json"))
    rows = targets(gpu, host, cpu)
    device = (gpu or {}).get("device", "unknown (no gpu.json)")
    summary = {
        "device": device,
        "rehearsal": device == "cpu",
        "parts_found": {name: data is not None for name, data in (("gpu", gpu), ("host", host), ("cpu", cpu))},
        "part_times": part_times(out_dir / "times.txt"),
        "targets": rows,
    }
    print(render(rows, device))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    summarize(Path(sys.argv[1]))

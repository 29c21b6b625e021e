#!/usr/bin/env python3
"""Runs `deputy bench burst` at several caps and draws hand-off latency and
throughput against cap size, for deputy and the Semaphore baseline, as an
SVG (no plotting library needed).

    cargo build --release -p deputy-cli
    python3 scripts/bench-plot.py [--deputy target/release/deputy] [--out docs/bench-caps.svg]
"""

import argparse
import json
import subprocess

CAPS = [8, 16, 32, 64, 128, 256]


def measure(deputy, cap, tasks, latency_ms):
    out = subprocess.run(
        [deputy, "bench", "burst", "--tasks", str(tasks), "--cap", str(cap),
         "--latency-ms", str(latency_ms), "--json"],
        check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def chart(x0, y0, width, height, title, unit, caps, series):
    """One line chart: series is [(label, colour, [values per cap])]."""
    top = max(max(values) for _, _, values in series) * 1.1 or 1.0
    parts = [f'<text x="{x0 + width / 2}" y="{y0 - 12}" text-anchor="middle" font-size="15">{title}</text>',
             f'<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#999"/>']
    for i in range(5):
        value = top * i / 4
        y = y0 + height - height * i / 4
        parts.append(f'<line x1="{x0}" x2="{x0 + width}" y1="{y}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end" font-size="11">{value:,.0f}</text>')
    parts.append(f'<text x="{x0 - 48}" y="{y0 + height / 2}" font-size="12" transform="rotate(-90 {x0 - 48} {y0 + height / 2})" text-anchor="middle">{unit}</text>')
    step = width / (len(caps) - 1)
    for i, cap in enumerate(caps):
        parts.append(f'<text x="{x0 + i * step}" y="{y0 + height + 16}" text-anchor="middle" font-size="11">{cap}</text>')
    parts.append(f'<text x="{x0 + width / 2}" y="{y0 + height + 34}" text-anchor="middle" font-size="12">cap (max_concurrent)</text>')
    for n, (label, colour, values) in enumerate(series):
        points = " ".join(f"{x0 + i * step:.1f},{y0 + height - height * v / top:.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in enumerate(values):
            parts.append(f'<circle cx="{x0 + i * step:.1f}" cy="{y0 + height - height * v / top:.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<rect x="{x0 + 10}" y="{y0 + 10 + n * 18}" width="12" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{x0 + 28}" y="{y0 + 15 + n * 18}" font-size="12">{label}</text>')
    return parts


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deputy", default="target/release/deputy")
    parser.add_argument("--out", default="docs/bench-caps.svg")
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()

    reports = [measure(args.deputy, cap, args.tasks, args.latency_ms) for cap in CAPS]
    for cap, r in zip(CAPS, reports):
        print(f"cap {cap:>4}: deputy {r['tasks_per_s']:>8.0f}/s p99 {r['handoff_p99_us']:>7.1f} us | "
              f"baseline {r['baseline']['tasks_per_s']:>8.0f}/s p99 {r['baseline']['handoff_p99_us']:>7.1f} us")
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="980" height="420" font-family="sans-serif">',
           '<rect width="980" height="420" fill="white"/>',
           f'<text x="490" y="24" text-anchor="middle" font-size="16">deputy bench burst: {args.tasks} tasks, '
           f'{args.latency_ms} ms model latency, against cap</text>']
    svg += chart(90, 70, 360, 270, "throughput", "tasks/s", CAPS, [
        ("deputy", "#1f77b4", [r["tasks_per_s"] for r in reports]),
        ("Semaphore baseline", "#ff7f0e", [r["baseline"]["tasks_per_s"] for r in reports])])
    svg += chart(580, 70, 360, 270, "hand-off latency p99", "microseconds", CAPS, [
        ("deputy", "#1f77b4", [r["handoff_p99_us"] for r in reports]),
        ("Semaphore baseline", "#ff7f0e", [r["baseline"]["handoff_p99_us"] for r in reports])])
    svg.append("</svg>")
    with open(args.out, "w") as handle:
        handle.write("\n".join(svg) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Broker benchmark: mqttgate beside Mosquitto in the same run, reported as ratios.

Runs the C load generator (bench/mqttbench, built on first use) through its
driver, which pins each broker to core 0 and the generator to core 1, starts
every broker afresh per run on a free loopback port, and records CPU on both
sides so you can tell who was the bottleneck. mqttgate runs in its
conformance/benchmark mode (anonymous, forwarding off).

    python bench/broker.py                          # all scenarios, 1 run each
    python bench/broker.py --scenario fanin-qos0,fanout --runs 3
    python bench/broker.py --v5

Prints the driver's table, then one line per scenario: mqttgate's headline
figure, Mosquitto's, their ratio, and the delivered ratio of each (a broker that
accepts and then drops messages is not faster).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
COMPARE = HERE / "mqttbench" / "compare"
HEADLINE = {
    "fanin-qos0": "received_per_s",
    "fanin-qos1": "acked_per_s",
    "connect-storm": "connacks_per_s",
    "idle-conns": "rss_per_conn_bytes",
    "fanout": "received_per_s",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_config(directory: pathlib.Path, port: int) -> pathlib.Path:
    text = (HERE / "mqttbench" / "configs" / "mosquitto.conf").read_text()
    text = text.replace("listener 28831 127.0.0.1", f"listener {port} 127.0.0.1")
    path = directory / "mosquitto.conf"
    path.write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="all")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--v5", action="store_true")
    parser.add_argument("--no-mosquitto", action="store_true", help="mqttgate only")
    parser.add_argument("--extra", default="", help="more arguments for the driver")
    args = parser.parse_args()

    out = pathlib.Path(tempfile.mkdtemp(prefix="mqttgate-bench-"))
    gate_port = free_port()
    gate_cmd = (
        f"{sys.executable} -m mqttgate serve --allow-anonymous true --forward off "
        f"--mqtt-listen 127.0.0.1:{gate_port} --http-listen 127.0.0.1:0 --log-level warning "
        f"--max-connections 20000 --max-queued-messages 10000"
    )
    cmd = [sys.executable, str(COMPARE), "--broker", f"mqttgate@{gate_port}={gate_cmd}"]
    if not args.no_mosquitto:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        mq_port = free_port()
        conf = mosquitto_config(out, mq_port)
        cmd += ["--broker", f"mosquitto@{mq_port}={mosquitto} -c {conf}"]
    cmd += ["--scenario", args.scenario, "--runs", str(args.runs), "--out", str(out), "--markdown"]
    if args.runs > 1:
        cmd.append("--interleave")
    if args.v5:
        cmd.append("--v5")
    cmd += args.extra.split()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    started = time.monotonic()
    subprocess.run(cmd, check=False, env=env)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    print(f"\nratios (mqttgate / mosquitto), {time.monotonic() - started:.0f} s, raw results in {out}")
    for scenario, key in HEADLINE.items():
        figures: dict[str, list[float]] = {}
        delivered: dict[str, list[float]] = {}
        for r in results:
            if r.get("scenario") != scenario or r.get("error") or r.get(key) is None:
                continue
            figures.setdefault(r["broker"], []).append(float(r[key]))
            if r.get("delivered_ratio") is not None:
                delivered.setdefault(r["broker"], []).append(float(r["delivered_ratio"]))
        if "mqttgate" not in figures:
            continue
        gate = statistics.median(figures["mqttgate"])
        line = f"  {scenario:14} {key:20} mqttgate {gate:12,.0f}"
        if "mosquitto" in figures:
            ref = statistics.median(figures["mosquitto"])
            line += f"  mosquitto {ref:12,.0f}  ratio {gate / ref:5.2f}"
        for name, values in sorted(delivered.items()):
            line += f"  delivered[{name}] {statistics.median(values):.3f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

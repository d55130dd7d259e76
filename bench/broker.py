"""Broker benchmark: mqttgate (forwarding off) against Mosquitto, same run, same machine.

Uses the C load generator and its driver (``compare``) from mqttbench
(``--tools``, default ``../shared/tools/mqttbench``): each broker is started
afresh per run pinned to core 0, the generator to core 1. Prints, per scenario,
the headline figure of each broker, the delivered ratio beside it, and
mqttgate's ratio to Mosquitto.

    python bench/broker.py --scenario fanin-qos0,fanin-qos1,fanout,connect-storm,idle-conns
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

HEADLINE = {
    "fanin-qos0": ("received_per_s", "msg/s delivered"),
    "fanin-qos1": ("acked_per_s", "PUBACKs/s"),
    "fanout": ("received_per_s", "deliveries/s"),
    "connect-storm": ("connacks_per_s", "CONNACKs/s"),
    "idle-conns": ("rss_per_conn_bytes", "bytes RSS/connection"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default=str(root.parent / "shared" / "tools" / "mqttbench"))
    parser.add_argument("--scenario", default="fanin-qos0,fanin-qos1,fanout,connect-storm,idle-conns")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--no-mosquitto", action="store_true")
    parser.add_argument("extra", nargs="*", help="more arguments for compare")
    args = parser.parse_args()
    tools = pathlib.Path(args.tools)
    python = sys.executable
    gate_port, http_port, mosq_port = free_port(), free_port(), free_port()
    brokers = [
        "--broker",
        f"mqttgate@{gate_port}={python} -m mqttgate serve --allow-anonymous true --forward off "
        f"--log-level warning --max-connections 20000 "
        f"--mqtt-listen 127.0.0.1:{gate_port} --http-listen 127.0.0.1:{http_port}",
    ]
    out = pathlib.Path(tempfile.mkdtemp(prefix="mqttgate-bench-"))
    if not args.no_mosquitto and shutil.which("mosquitto"):
        conf = out / "mosquitto.conf"
        reference = tools / "configs" / "mosquitto.conf"
        conf.write_text(reference.read_text().replace("28831", str(mosq_port)))
        brokers += ["--broker", f"mosquitto@{mosq_port}=mosquitto -c {conf}"]
    cmd = [
        python, str(tools / "compare"), *brokers, "--scenario", args.scenario,
        "--runs", str(args.runs), "--duration", str(args.duration), "--out", str(out), *args.extra,
    ]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    results: dict[tuple[str, str], list[dict[str, object]]] = {}
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (str(row.get("broker")), str(row.get("scenario")))
            results.setdefault(key, []).append(row)
    print(f"\nraw results in {out}")
    print(f"{'scenario':15} {'mqttgate':>22} {'mosquitto':>22} {'ratio':>7}")
    for scenario in args.scenario.split(","):
        field, unit = HEADLINE.get(scenario, ("", ""))
        cells = []
        values = []
        for broker in ("mqttgate", "mosquitto"):
            rows = results.get((broker, scenario), [])
            nums = sorted(float(r[field]) for r in rows if isinstance(r.get(field), (int, float)))
            value = nums[len(nums) // 2] if nums else None
            ratios = [r.get("delivered_ratio") for r in rows if r.get("delivered_ratio") is not None]
            values.append(value)
            text = "-" if value is None else f"{value:,.0f}"
            if ratios:
                text += f" ({float(ratios[len(ratios) // 2]):.0%})"  # type: ignore[arg-type]
            cells.append(text)
        ratio = f"{values[0] / values[1]:.2f}" if values[0] and values[1] else "-"
        print(f"{scenario:15} {cells[0]:>22} {cells[1]:>22} {ratio:>7}  {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

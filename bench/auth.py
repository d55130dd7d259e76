"""Connect storm with authentication: mqttgate (argon2id registry) vs Mosquitto
(password file), same machine, same client.

Provisions ``--devices`` devices (rows inserted directly, hashed with the
production argon2 parameters unless overridden), then runs a storm of 3.1.1
CONNECT/CONNACK/DISCONNECT with ``--concurrency`` clients in flight:

* mqttgate cold: fresh daemon, empty verified-credential cache (argon2 bound);
* mqttgate warm: the same storm again (cache hits answered from memory: one
  HMAC, no PostgreSQL round trip while the credential listener is live);
* Mosquitto with a password_file holding the same credentials.

    python bench/auth.py --devices 2000 --concurrency 100

Profile the warm path (py-spy must be installed; root can attach):

    python bench/auth.py --argon2 1,8192,1 --warm-rounds 5 --py-spy /tmp/warm.txt --no-mosquitto

The client is Python on trio, on the same cores as the brokers, so the figures
are a floor for both; the ratio is what matters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import argon2
import asyncpg
import trio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str, user: str, password: str) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body += _utf8(client_id) + _utf8(user) + _utf8(password)
    return bytes([0x10]) + _length(len(body)) + body


async def one_connect(port: int, user: str, password: str, codes: dict[int, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(connect_packet("b" + secrets.token_hex(6), user, password))
        data = b""
        while len(data) < 4:
            chunk = await stream.receive_some(4 - len(data))
            if not chunk:
                codes[-1] = codes.get(-1, 0) + 1
                return
            data += chunk
        codes[data[3]] = codes.get(data[3], 0) + 1
        if data[3] == 0:
            await stream.send_all(b"\xe0\x00")


async def storm(port: int, creds: list[tuple[str, str]], concurrency: int) -> tuple[float, dict[int, int]]:
    codes: dict[int, int] = {}
    limiter = trio.CapacityLimiter(concurrency)

    async def run(user: str, password: str) -> None:
        async with limiter:
            try:
                await one_connect(port, user, password, codes)
            except OSError:
                codes[-2] = codes.get(-2, 0) + 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for user, password in creds:
            nursery.start_soon(run, user, password)
    return len(creds) / (time.perf_counter() - start), codes


async def wait_port(port: int, deadline_s: float = 30) -> None:
    with trio.fail_after(deadline_s):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


def provision(dsn: str, count: int, params: dict[str, int]) -> list[tuple[str, str]]:
    hasher = argon2.PasswordHasher(
        time_cost=params["t"], memory_cost=params["m"], parallelism=params["p"],
        hash_len=32, salt_len=16, type=argon2.Type.ID,
    )
    creds = [("dev_" + secrets.token_hex(8), secrets.token_urlsafe(24)) for _ in range(count)]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        hashes = list(pool.map(lambda c: hasher.hash(c[1]), creds))

    async def insert() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                "INSERT INTO devices (id, type, mqtt_user, password_hash) VALUES ($1, 'bench', $2, $3)",
                [(secrets.token_hex(12), user, h) for (user, _), h in zip(creds, hashes, strict=True)],
            )
        finally:
            await conn.close()

    asyncio.run(insert())
    return creds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("MQTTGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--argon2", default="2,19456,1", help="t,m_kib,p (production defaults)")
    parser.add_argument("--no-mosquitto", action="store_true")
    parser.add_argument("--warm-rounds", type=int, default=1, help="warm storms to run (best is reported)")
    parser.add_argument(
        "--py-spy", metavar="FILE",
        help="record the daemon with py-spy during the warm storms (collapsed stacks, for flame graphs)",
    )
    args = parser.parse_args()
    t, m, p = (int(x) for x in args.argon2.split(","))
    db = f"mqttgate_bench_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{db}"'))
    parts = urllib.parse.urlsplit(args.admin_dsn)
    dsn = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, ""))
    work = pathlib.Path(tempfile.mkdtemp(prefix="mqttgate-authbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "mqttgate", "migrate", "--database-url", dsn,
                        "--log-level", "error"], check=True)
        started = time.perf_counter()
        creds = provision(dsn, args.devices, {"t": t, "m": m, "p": p})
        print(f"provisioned {len(creds)} devices in {time.perf_counter() - started:.1f}s (argon2id t={t} m={m} p={p})")
        gate = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MQTTGATE_")}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mqttgate", "serve", "--database-url", dsn, "--api-token", "bench",
             "--forward", "off", "--log-level", "error", "--mqtt-listen", f"127.0.0.1:{gate}",
             "--http-listen", f"127.0.0.1:{free_port()}", "--argon2-time-cost", str(t),
             "--argon2-memory-kib", str(m), "--argon2-parallelism", str(p),
             "--auth-max-pending", str(args.devices), "--max-connections", "20000"],
            env=env,
        ))
        results: dict[str, tuple[float, dict[int, int]]] = {}

        async def run_gate() -> None:
            await wait_port(gate)
            results["mqttgate cold"] = await storm(gate, creds, args.concurrency)
            spy = None
            if args.py_spy:
                exe = shutil.which("py-spy") or str(pathlib.Path(sys.executable).parent / "py-spy")
                spy = await trio.lowlevel.open_process(
                    [exe, "record", "--format", "raw", "--rate", "200", "-o", args.py_spy,
                     "-p", str(procs[0].pid)]
                )
                await trio.sleep(1)  # let py-spy attach before the storm
            try:
                warm = [await storm(gate, creds, args.concurrency) for _ in range(max(1, args.warm_rounds))]
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes the profile and exits
                    with trio.move_on_after(30):
                        await spy.wait()
            results["mqttgate warm"] = max(warm, key=lambda result: result[0])

        trio.run(run_gate)
        if not args.no_mosquitto and shutil.which("mosquitto") and shutil.which("mosquitto_passwd"):
            pwfile = work / "passwd"
            pwfile.write_text("".join(f"{u}:{pw}\n" for u, pw in creds))
            subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True)
            # Run as root, Mosquitto drops to its own user: let it read the file.
            work.chmod(0o755)
            pwfile.chmod(0o644)
            mport = free_port()
            conf = work / "mosquitto.conf"
            conf.write_text(
                f"listener {mport} 127.0.0.1\nallow_anonymous false\npassword_file {pwfile}\n"
                "max_connections -1\nlog_type none\n"
            )
            procs.append(subprocess.Popen(["mosquitto", "-c", str(conf)]))

            async def run_mosq() -> None:
                await wait_port(mport)
                results["mosquitto"] = await storm(mport, creds, args.concurrency)

            trio.run(run_mosq)
        print(f"{'broker':<16}{'CONNACKs/s':>12}  return codes")
        for name, (rate, codes) in results.items():
            print(f"{name:<16}{rate:>12.0f}  {dict(sorted(codes.items()))}")
        if "mosquitto" in results:
            print(f"warm / mosquitto = {results['mqttgate warm'][0] / results['mosquitto'][0]:.2f}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())

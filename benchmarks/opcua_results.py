"""OPC UA output: results per second and ResultReady latency after the database commit, with a real PLC client.

The real daemon (inotify watcher, pipeline, SQLite, difference detector, ZeroMQ bus) runs with ``opcua`` enabled;
a PLC client in *another process* (asyncua, Aes256_Sha256_RsaPss SignAndEncrypt, user + password, trusted
application certificate) subscribes to InspectionResultReadyEventType on the VisionSystem and timestamps every
event it receives. Two phases:

1. **paced**: a feeder drops ``--frames`` JPEG frames at ``--rate`` frames/s (temp name + rename). Latency is
   measured from the moment the pipeline hands the committed result to the OPC UA output (right after the
   database commit, before the file is moved; wall clock, same machine) to the client's event callback, with
   the client's subscription publishing interval ``--publishing-ms``. Also: the commit thread's time in
   ``publish`` (all outputs) with OPC UA on.
2. **saturation**: ``--burst`` results are published to the output as fast as one thread can (copies of a
   committed result with fresh sequence numbers: no frames, no database), to see how many results per second
   the server thread turns into events, whether the client gets them all, and what ``publish`` costs the caller.

    .venv/bin/python benchmarks/opcua_results.py                     # 500 frames at 50/s, 5000-result burst
    .venv/bin/python benchmarks/opcua_results.py --frames 2000 --rate 100 --burst 20000
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.config import parse_station_config  # noqa: E402
from inspector.daemon import Daemon  # noqa: E402
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_name, position_templates  # noqa: E402
from inspector.outputs.opcua_security import hash_password  # noqa: E402
from inspector.outputs.session import load_result  # noqa: E402

PASSWORD = "benchmark-plc-password"


def plc_process(endpoint: str, uri: str, cert: str, key: str, publishing_ms: int, ready, conn) -> None:
    """The PLC: subscribe, then record (Sequence, receive wall time) per event until told to stop."""
    from asyncua import Client, ua

    received: list[tuple[int, float]] = []

    class Handler:
        def event_notification(self, event) -> None:
            received.append((int(event.Sequence), time.time()))

        def status_change_notification(self, status) -> None:
            print(f"PLC: subscription status {status}", flush=True)

    async def main() -> None:
        client = Client(endpoint, timeout=30)
        client.application_uri = uri
        await client.set_security_string(f"Aes256Sha256RsaPss,SignAndEncrypt,{cert},{key}")
        client.set_user("plc")
        client.set_password(PASSWORD)
        async with client:
            sub = await client.create_subscription(publishing_ms, Handler())
            await sub.subscribe_events(client.get_node(ua.NodeId("VisionSystem", 1)),
                                       client.get_node(ua.NodeId("InspectionResultReadyEventType", 1)),
                                       queuesize=100_000)
            ready.set()
            while not conn.poll(0.05):
                await asyncio.sleep(0.05)
            conn.recv()
            await asyncio.sleep(1.0)  # the last publish interval's events
        conn.send(received)

    asyncio.run(main())


def make_identity(directory: Path) -> tuple[str, Path, Path]:
    from asyncua.crypto.cert_gen import (dump_private_key_as_pem, generate_private_key,
                                         generate_self_signed_app_certificate)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    uri = "urn:benchmark:plc"
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(key, "plc", {}, [x509.UniformResourceIdentifier(uri)],
                                                [ExtendedKeyUsageOID.CLIENT_AUTH])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plc.der").write_bytes(cert.public_bytes(Encoding.DER))
    (directory / "plc.pem").write_bytes(dump_private_key_as_pem(key))
    return uri, directory / "plc.der", directory / "plc.pem"


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def start_daemon(cfg, spec) -> Daemon:
    daemon = Daemon(cfg)
    t = time.perf_counter()
    daemon.start()
    print(f"daemon started in {time.perf_counter() - t:.1f} s (opcua {'on' if cfg.opcua.enabled else 'off'})", flush=True)
    for name, image in position_templates(spec).items():
        daemon.templates.add("cam1", name, image)
    return daemon


def feed(daemon: Daemon, pool, frames: int, rate: float) -> tuple[float, list[float]]:
    """Drop ``frames`` at ``rate``/s; returns (wall seconds until all committed, publish-stage ms per frame)."""
    done, publish_ms = [0], []

    def on_frame(outcome) -> None:
        done[0] += 1
        if "publish" in outcome.stage_ms:
            publish_ms.append(outcome.stage_ms["publish"])
    daemon.pipeline.frame_hooks.append(on_frame)
    drop = daemon.cfg.cameras[0].drop_folder
    t0 = time.perf_counter()
    for i in range(frames):
        while time.perf_counter() < t0 + i / rate:
            time.sleep(0.0005)
        position, data = pool[i % len(pool)]
        tmp = drop / f".{position}_{i:07d}.tmp"
        tmp.write_bytes(data)
        os.rename(tmp, drop / f"{position}_{i:07d}.jpg")
    while done[0] < frames and time.perf_counter() - t0 < 600:
        time.sleep(0.01)
    return time.perf_counter() - t0, publish_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="frames per second dropped (paced phase)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--burst", type=int, default=5000, help="results published back to back (saturation)")
    parser.add_argument("--publishing-ms", type=int, default=20, help="the client's subscription interval")
    parser.add_argument("--baseline", action="store_true", help="first the same paced run with OPC UA off")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="rddn-opcua-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"opc.tcp://127.0.0.1:{port}/rddn-inspector"
    cfg = parse_station_config({
        "station": "bench", "state_dir": str(root / "state"), "detector": {"backend": "difference"},
        "bus": {"publish": "tcp://127.0.0.1:*", "replay": "tcp://127.0.0.1:*"}, "reconcile_interval_s": 3600,
        "cameras": [{"id": "cam1", "drop_folder": str(root / "drop")}],
        "opcua": {"enabled": True, "endpoint": endpoint, "users": {"plc": hash_password(PASSWORD)},
                  "result_queue": max(1000, args.burst)},
    }, "<benchmark>")
    uri, cert, key = make_identity(root / "plc")
    (cfg.opcua_pki_dir / "trusted" / "certs").mkdir(parents=True, exist_ok=True)
    shutil.copy(cert, cfg.opcua_pki_dir / "trusted" / "certs" / "plc.der")

    spec = demo_spec(args.size, positions=2, max_shift=4)
    rng = np.random.default_rng(0)
    pool = [(position_name(p), encode_jpeg(make_frame(spec, p, rng, bool(rng.random() < 0.3)).image))
            for p in range(2) for _ in range(16)]
    if args.baseline:  # the same paced run without OPC UA: what the daemon does with the ZeroMQ bus alone
        plain = cfg.model_copy(update={"opcua": cfg.opcua.model_copy(update={"enabled": False}),
                                       "state_dir": root / "plain"})
        daemon = start_daemon(plain, spec)
        base_wall, base_publish = feed(daemon, pool, args.frames, args.rate)
        daemon.stop()
    daemon = start_daemon(cfg, spec)
    output = daemon.outputs["opcua"]
    handed: dict[int, float] = {}  # result seq -> wall time the committed result reached the OPC UA output
    real_publish = output.publish

    def stamped(result) -> None:
        handed[result.seq] = time.time()
        real_publish(result)
    output.publish = stamped  # type: ignore[method-assign]

    ctx = mp.get_context("spawn")
    ready, (parent, child) = ctx.Event(), ctx.Pipe()
    plc = ctx.Process(target=plc_process, args=(endpoint, uri, str(cert), str(key), args.publishing_ms, ready, child))
    plc.start()
    assert ready.wait(900), "PLC client did not subscribe"

    # 1. paced frames through the whole daemon
    paced_wall, publish_ms = feed(daemon, pool, args.frames, args.rate)
    last = daemon.sequencer.last()[1]

    # 2. saturation: the output alone, back to back from this thread
    template = load_result(daemon.factory, daemon.sequencer.session_id, last)
    burst = [template.model_copy(update={"seq": last + 1 + i}) for i in range(args.burst)]
    shown0, cpu0 = output.stats.shown, cpu_s()
    t1 = time.perf_counter()
    call_us = []
    for result in burst:
        c = time.perf_counter()
        real_publish(result)
        call_us.append((time.perf_counter() - c) * 1e6)
    t_published = time.perf_counter() - t1
    while output.stats.shown - shown0 < args.burst and time.perf_counter() - t1 < 600:
        time.sleep(0.005)
    t_shown = time.perf_counter() - t1
    burst_cpu = cpu_s() - cpu0
    parent.send("stop")
    received = parent.recv()
    plc.join(30)
    stats = output.stats
    daemon.stop()

    got = {seq: t for seq, t in received}
    paced = [(got[s] - handed[s]) * 1000 for s in range(1, last + 1) if s in got and s in handed]
    burst_got = [got[s] for s in range(last + 1, last + 1 + args.burst) if s in got]
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    print(f"\nmachine: {cores} cores, load average {load:.1f} at the end (other processes included)")
    print(f"paced: {args.frames} frames at {args.rate:g}/s, {args.size}px JPEG, difference detector: {last} results "
          f"in {paced_wall:.1f} s; events received {len(paced)}/{last}")
    print(f"  ResultReady latency after the commit (publishing interval {args.publishing_ms} ms): "
          f"p50 {pct(paced, 50):.1f} ms, p95 {pct(paced, 95):.1f} ms, p99 {pct(paced, 99):.1f} ms, "
          f"max {max(paced, default=float('nan')):.1f} ms")
    print(f"  commit thread in publish (all outputs): p50 {pct(publish_ms, 50):.3f} ms, "
          f"p99 {pct(publish_ms, 99):.3f} ms")
    if args.baseline:
        print(f"  baseline, OPC UA off: {args.frames} frames in {base_wall:.1f} s; publish (ZeroMQ alone) p50 "
              f"{pct(base_publish, 50):.3f} ms, p99 {pct(base_publish, 99):.3f} ms")
    print(f"saturation: {args.burst} results published in {t_published * 1000:.0f} ms "
          f"(publish: p50 {pct(call_us, 50):.1f} us, p99 {pct(call_us, 99):.1f} us, max {max(call_us):.0f} us per call)")
    print(f"  server thread: {args.burst / t_shown:.0f} results/s shown as events ({t_shown:.2f} s), "
          f"{burst_cpu * 1000 / args.burst:.2f} ms CPU per result (whole process)")
    if burst_got:
        span = max(burst_got) - min(burst_got)
        print(f"  client received {len(burst_got)}/{args.burst} ({len(burst_got) / max(span, 1e-9):.0f} events/s); "
              f"dropped from the buffer {stats.dropped}, failed {stats.failed}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark (`make bench`): the predictor and the feedback transformer over HTTP, then a memory soak.

For U²-NetP at 320 px in each runtime (the PyTorch checkpoint, its fp32 ONNX export, and its static int8
ONNX export calibrated on other photos than those sent) it starts the
real servers on 127.0.0.1 (`cutout.serve.local.start_local_service`: predictor and transformer, each in
its own process) and sends real studio photos (1000×1500 JPEGs, v1 JSON, ``output=both``) at several
concurrencies, straight to the predictor and through the transformer. The transformer's routing writes
(photo and mask into a temporary feedback folder) happen as in production and are part of its cost.

Then a soak through the transformer: the servers' resident memory (VmRSS from /proc, read at rest)
after a warm-up and after ``--soak-requests`` more requests. Targets on 2 cores (issue 5): the
transformer adds ≤ 15 % to the predictor's p50, ≥ 6 images/s, memory grows < 5 % after warm-up.

The client runs on the same cores as the servers (as a sidecar would); it only sends prepared bodies and
reads the answers, checking a few of them fully. p99 over few requests is close to the maximum.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson
from tests.benchmarks.bench_inference import (
    E2E_PHOTO,
    SIZE,
    demo_checkpoint,
    held_out_photos,
    trained_checkpoint,
)
from tests.benchmarks.datasets import CACHE
from tests.benchmarks.measure import children, status_kib

from cutout.serve.server import HEAP_TRIM_SECONDS

V1_PATH = "/v1/models/cutout:predict"
RUNTIMES = ("torch", "onnx", "onnx-int8")  # the last: `--runtime onnx` with the int8 file
MAX_OVERHEAD = 0.15  # the transformer's p50 over the predictor's
MIN_THROUGHPUT = 6.0  # images/s, U²-NetP at 320 on 2 cores
MAX_GROWTH = 0.05  # resident memory after the soak over after the warm-up
REVIEW_SHARE = 0.2  # of the photos routed to review, as at a calibrated threshold
CACHED_CHECKPOINT = CACHE / "serve-u2netp-trained.pt"  # trained once when there is no demo model


@dataclass(frozen=True)
class Cell:
    """One latency measurement: `requests` requests at `concurrency` to one target."""

    target: str
    runtime: str
    concurrency: int
    latencies: list[float]
    seconds: float

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies, 50)) * 1000

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies, 99)) * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


# --- models and photos --------------------------------------------------------------------------


def model_files(folder: Path, requested: str | None) -> dict[str, str]:
    """A trained U²-NetP checkpoint set to run at 320 px, and its fp32 and int8 ONNX exports at 320 px."""
    from cutout.data.io import read_photos
    from cutout.model import save_checkpoint
    from cutout.model.export import export_model
    from cutout.model.weights import load_model

    if requested is None and demo_checkpoint() is None and CACHED_CHECKPOINT.exists():
        requested = str(CACHED_CHECKPOINT)
    trained = trained_checkpoint(folder, requested)
    if Path(trained).is_relative_to(folder):  # trained just now (minutes): keep it for the next run
        CACHED_CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained, CACHED_CHECKPOINT)
    model, metadata = load_model(trained)
    variant = metadata.get("variant", "u2netp")
    if variant != "u2netp":
        raise SystemExit(f"{trained} holds {variant}; this benchmark is for U²-NetP")
    # The demo trains at a smaller size; the checkpoint carries the size the predictor runs at.
    files = {"torch": str(folder / "u2netp-320.pt"), "onnx": str(folder / "u2netp-320.onnx"),
             "onnx-int8": str(folder / "u2netp-320-int8.onnx")}  # fmt: skip
    save_checkpoint(files["torch"], model, variant, input_size=SIZE)
    export_model(files["torch"], files["onnx"], input_size=SIZE)
    calibration = calibration_photos(folder / "calibration")
    export_model(
        files["torch"], files["onnx-int8"], calibration=read_photos(str(calibration)), input_size=SIZE
    )
    return files


def calibration_photos(folder: Path, count: int = 32) -> Path:
    """Studio photos for int8 calibration, from another seed than the photos the benchmark sends."""
    from cutout.data.synth import generate_pair

    folder.mkdir()
    for index in range(count):
        generate_pair(index, size=E2E_PHOTO, seed=11)[0].save(folder / f"{index:03d}.jpg", quality=92)
    return folder


def server_runtime(runtime: str) -> str:
    """The predictor's `--runtime` for a benchmark runtime (both ONNX files run in ONNX Runtime)."""
    return "onnx" if runtime.startswith("onnx") else runtime


def request_bodies(photos: Path) -> list[bytes]:
    """v1 JSON bodies, one per photo, asking for mask and cutout."""
    bodies = []
    for path in sorted(photos.iterdir()):
        photo = base64.b64encode(path.read_bytes()).decode("ascii")
        bodies.append(orjson.dumps({"instances": [{"image_b64": photo, "output": "both"}]}))
    return bodies


# --- the client ---------------------------------------------------------------------------------


def check_response(body: bytes) -> None:
    """A full check of one answer: a mask, a cutout and a score for a photo of the right size."""
    prediction = orjson.loads(body)["predictions"][0]
    missing = {"mask", "cutout", "score"} - set(prediction)
    if missing or (prediction["width"], prediction["height"]) != E2E_PHOTO:
        raise RuntimeError(f"unexpected answer: missing {sorted(missing)}, size "
                           f"{prediction.get('width')}×{prediction.get('height')}")  # fmt: skip


def post(url: str, body: bytes) -> bytes:
    """One POST on a new connection; the answer's body (RuntimeError for anything but 200)."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
    try:
        connection.request("POST", address.path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"{url} answered {response.status}: {answer[:300]!r}")
    return answer


def run_load(url: str, bodies: list[bytes], requests: int, concurrency: int, offset: int = 0) -> Cell:
    """POST `requests` bodies to `url` from `concurrency` threads, each on its own kept-alive connection.

    Returns:
        The latencies (seconds, one per request) and the wall time of the whole run (as a `Cell`
        without target and runtime).

    Raises:
        RuntimeError: on any answer other than 200 (a benchmark of failing requests means nothing).
    """
    address = urlsplit(url)
    numbers = itertools.count()  # next() on it is atomic under the GIL: each index goes to one thread
    latencies = [0.0] * requests

    def work() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        try:
            while (index := next(numbers)) < requests:
                body = bodies[(offset + index) % len(bodies)]
                start = time.perf_counter()
                connection.request("POST", address.path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                latencies[index] = time.perf_counter() - start
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}: {answer[:300]!r}")
                if index < concurrency:  # parsing every 4 MB answer would steal the servers' CPU
                    check_response(answer)
        finally:
            connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(work) for _ in range(concurrency)]:
            future.result()
    return Cell("", "", concurrency, latencies, time.perf_counter() - start)


# --- the servers --------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def serving(model_uri: str, runtime: str, threshold: float, feedback: Path, logs: Path) -> Iterator:
    """Predictor and transformer (`start_local_service`) on free ports; their logs go to `logs`."""
    from cutout.serve.local import start_local_service

    port, predictor_port = free_ports(2)
    try:
        service = start_local_service(model_uri, str(feedback), port=port, predictor_port=predictor_port,
                                      threshold=threshold, runtime=server_runtime(runtime),
                                      log_dir=logs)  # fmt: skip
    except RuntimeError:
        print_log_tails(logs)
        raise
    try:
        yield service
    except BaseException:
        print_log_tails(logs)
        raise
    finally:
        service.stop()


def print_log_tails(logs: Path, lines: int = 15) -> None:
    for log in sorted(logs.glob("*.log")):
        print(f"--- last lines of {log.name} ---", flush=True)
        print("\n".join(log.read_text(errors="replace").splitlines()[-lines:]), flush=True)


def metric_values(url: str) -> dict[str, float]:
    """The server's Prometheus samples as ``name{label="value"}`` → value."""
    from prometheus_client.parser import text_string_to_metric_families

    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def wait_for_routing(transformer_url: str, timeout: float = 120.0) -> dict[str, float]:
    """Wait until the transformer's feedback queue is empty; return its metrics then."""
    deadline = time.monotonic() + timeout
    while True:
        values = metric_values(transformer_url)
        if values.get("cutout_feedback_queue_depth", 0) == 0 or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def routing_summary(values: dict[str, float]) -> str:
    def total(prefix: str) -> int:
        return int(sum(value for name, value in values.items() if name.startswith(prefix)))

    written = {d: int(values.get(f'cutout_feedback_written_total{{destination="{d}"}}', 0))
               for d in ("retrain", "review")}  # fmt: skip
    return (f"routed: {written['retrain']} to retraining, {written['review']} to review, "
            f"{total('cutout_feedback_write_failures_total{')} failed, "
            f"{total('cutout_feedback_dropped_total')} dropped (queue full)")  # fmt: skip


def drain_feedback(feedback: Path) -> Counter:
    """Remove the complete routed items (as their consumers would) and count them by destination.

    Only items whose record or ``item.json`` exists are complete; the rest are still being written.
    Keeps a 10,000-request soak from leaving gigabytes of photos behind.
    """
    counts: Counter = Counter()
    store = feedback / "retrain" / "auto"
    for record in list((store / "records").glob("*.json")):
        item_id = record.stem
        for path in [*store.glob(f"images/{item_id}.*"), store / "masks" / f"{item_id}.png", record]:
            path.unlink(missing_ok=True)
        counts["retrain"] += 1
    for item in list((feedback / "review" / "pending").glob("*/item.json")):
        shutil.rmtree(item.parent, ignore_errors=True)
        counts["review"] += 1
    return counts


def resident_mib(pids: dict[str, int]) -> dict[str, float]:
    """VmRSS (MiB) of each server process and its children, if any, from /proc, at rest.

    Read after the servers' periodic heap trim has run once with no request in flight
    (`cutout.serve.server.trim_heap_periodically`): otherwise a reading depends on how many freed
    buffers of the last burst are still resident, which varied by ±20 MiB from reading to reading.
    """
    time.sleep(2 * HEAP_TRIM_SECONDS)
    return {name: sum(status_kib(p, "VmRSS") for p in [pid, *children(pid)]) / 1024
            for name, pid in pids.items()}  # fmt: skip


def review_share_threshold(model_uri: str, runtime: str, bodies: list[bytes], logs: Path,
                           share: float = REVIEW_SHARE) -> float:  # fmt: skip
    """The score below which about `share` of the photos fall, as scored by a predictor started alone.

    The briefly trained model's scores are low, so the default threshold would send every photo to
    review; a calibrated one sends about a fifth (issue 5). This runs both routing branches in
    production's proportions. The scores come from the server itself, so they follow its scoring.
    """
    from cutout.serve.local import predictor_command, wait_until_ready

    logs.mkdir(parents=True, exist_ok=True)
    (port,) = free_ports(1)
    with open(logs / "predictor.log", "ab") as log:
        process = subprocess.Popen(predictor_command(model_uri, port, runtime), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(url, process, time.monotonic() + 180, "predictor")
            scores = [orjson.loads(post(url + V1_PATH, body))["predictions"][0]["score"] for body in bodies]
        except BaseException:
            print_log_tails(logs)
            raise
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return threshold_for_share(scores, share)


def threshold_for_share(scores: list[float], share: float) -> float:
    """The lowest threshold that sends at least `share` of `scores` to review (score < threshold).

    Not a plain quantile: many photos may share one score (0 for a poor model), and a threshold equal
    to it would send none of them to review.
    """
    values = np.sort(np.asarray(scores, dtype=float))
    for candidate in np.unique(values):
        if np.mean(values < candidate) >= share:
            return float(candidate)
    return float(np.nextafter(values[-1], np.inf))  # all to review: every score is the same


# --- the two phases -----------------------------------------------------------------------------


def latency_cells(service, runtime: str, bodies: list[bytes], args: argparse.Namespace) -> list[Cell]:
    """Each concurrency, straight to the predictor and then through the transformer, after a warm-up."""
    urls = {"predictor": service.predictor_url + V1_PATH, "transformer": service.transformer_url + V1_PATH}
    for url in urls.values():
        run_load(url, bodies, requests=max(args.concurrency), concurrency=max(args.concurrency))
    wait_for_routing(service.transformer_url)
    cells = []
    for concurrency in args.concurrency:
        for target, url in urls.items():
            measured = run_load(url, bodies, args.requests, concurrency, offset=len(cells) * args.requests)
            cell = Cell(target, runtime, concurrency, measured.latencies, measured.seconds)
            cells.append(cell)
            print_row(cell, cells)
            if target == "transformer":  # its writes belong to this cell, not the next
                wait_for_routing(service.transformer_url)
    summary = routing_summary(metric_values(service.transformer_url))
    print(f"  {runtime}, warm-up included: {summary}", flush=True)
    return cells


HEADER = (f"{'target':12} {'runtime':8} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9} "
          f"{'overhead vs predictor p50':>27}")  # fmt: skip


def print_row(cell: Cell, cells: list[Cell]) -> None:
    note = ""
    if cell.target == "transformer":
        base = next(c for c in cells if (c.target, c.runtime, c.concurrency) ==
                    ("predictor", cell.runtime, cell.concurrency))  # fmt: skip
        overhead = cell.p50_ms / base.p50_ms - 1
        verdict = "ok" if overhead <= MAX_OVERHEAD else f"over {MAX_OVERHEAD:.0%}"
        note = f"{overhead:+.1%} ({verdict})"
    throughput = f"{cell.throughput:.2f}" + ("" if cell.throughput >= MIN_THROUGHPUT else "*")
    print(f"{cell.target:12} {cell.runtime:8} {cell.concurrency:>4} {cell.p50_ms:>8.0f} {cell.p99_ms:>8.0f} "
          f"{throughput:>9} {note:>27}", flush=True)  # fmt: skip


def summarise(cells: list[Cell]) -> None:
    best = max(cells, key=lambda c: c.throughput)
    verdict = "ok" if best.throughput >= MIN_THROUGHPUT else "MISSED"
    where = f"{best.target}, {best.runtime}, concurrency {best.concurrency}"
    print(f"(* below the target of {MIN_THROUGHPUT:g} images/s) best: {best.throughput:.2f} images/s "
          f"({where}): {verdict}", flush=True)  # fmt: skip


def memory_trend(readings: list[tuple[int, float]]) -> tuple[float, float]:
    """The least-squares slope of RSS against requests (MiB per 1,000) and the growth it makes over all
    of them, relative to the line's start: a leak shows as a slope, a fluctuation does not."""
    done, mib = np.array([r[0] for r in readings], dtype=float), np.array([r[1] for r in readings])
    slope, start = np.polyfit(done, mib, 1)
    return slope * 1000, slope * done[-1] / start


def soak(service, bodies: list[bytes], feedback: Path, args: argparse.Namespace) -> None:
    """Servers' RSS after `--soak-warmup` and after `--soak-requests` more requests via the transformer."""
    url = service.transformer_url + V1_PATH
    pids = {"predictor": service.predictor.pid, "transformer": service.transformer.pid}
    run_load(url, bodies, args.soak_warmup, args.soak_concurrency)
    wait_for_routing(service.transformer_url)
    drained = drain_feedback(feedback)
    before = resident_mib(pids)
    print(f"after {args.soak_warmup} warm-up requests: "
          + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in before.items()), flush=True)  # fmt: skip
    step, done, start = max(1, args.soak_requests // 10), 0, time.perf_counter()
    readings = [(0, before)]
    while done < args.soak_requests:
        count = min(step, args.soak_requests - done)
        run_load(url, bodies, count, args.soak_concurrency, offset=done)
        done += count
        drained += drain_feedback(feedback)
        now = resident_mib(pids)
        readings.append((done, now))
        rate = done / (time.perf_counter() - start)
        print(f"  {done:>6}/{args.soak_requests} requests ({rate:.2f}/s): "
              + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in now.items()), flush=True)  # fmt: skip
    metrics = wait_for_routing(service.transformer_url)
    drained += drain_feedback(feedback)
    after = resident_mib(pids)
    print(f"after {args.soak_requests} more requests (RSS after warm-up → after soak, growth; target "
          f"< {MAX_GROWTH:.0%}):", flush=True)  # fmt: skip
    for name in [*pids, "total"]:
        first = sum(before.values()) if name == "total" else before[name]
        last = sum(after.values()) if name == "total" else after[name]
        growth = last / first - 1
        verdict = "ok" if growth < MAX_GROWTH else "OVER"
        print(f"  {name:12} {first:>7.0f} MiB → {last:>7.0f} MiB  {growth:+.2%}  {verdict}", flush=True)
    for name in pids:
        slope, projected = memory_trend([(done, now[name]) for done, now in readings])
        print(f"  {name:12} trend of the {len(readings)} readings: {slope:+.2f} MiB per 1,000 requests, "
              f"{projected:+.2%} over the soak", flush=True)  # fmt: skip
    print(f"  {routing_summary(metrics)}; items found in the feedback folder: "
          f"{drained['retrain']} retraining, {drained['review']} review", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="requests per latency cell (0: soak only)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--photos", type=int, default=32, help="distinct 1000×1500 studio photos")
    parser.add_argument("--soak-requests", type=int, default=10_000, help="0: no soak")
    # Measured: a transformer's RSS rises for the first ~600 requests at concurrency 4 (buffers, thread
    # heaps, caches filling) and is flat after; the first reading comes once that has happened.
    parser.add_argument("--soak-warmup", type=int, default=1000, help="requests before the first RSS reading")
    parser.add_argument("--soak-concurrency", type=int, default=4)
    parser.add_argument("--soak-runtime", choices=RUNTIMES, default="onnx-int8")
    parser.add_argument("--threshold", type=float, help="routing threshold (default: ~20%% to review)")
    parser.add_argument("--model", help="trained U²-NetP checkpoint (default: the demo's, else one trained)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cutout-bench-serve-") as tmp:
        folder = Path(tmp)
        files = model_files(folder, args.model)
        photos = held_out_photos(folder / "photos", args.photos)
        bodies = request_bodies(photos)
        threshold = args.threshold
        if threshold is None:
            threshold = review_share_threshold(files["onnx"], "onnx", bodies, folder / "logs-scores")
        print(f"U²-NetP at {SIZE} px, {len(bodies)} distinct {E2E_PHOTO[0]}×{E2E_PHOTO[1]} JPEGs "
              f"(v1, output=both), {args.requests} requests per cell, routing threshold {threshold:.4f}",
              flush=True)  # fmt: skip
        print(HEADER, flush=True)
        cells: list[Cell] = []
        for runtime in args.runtimes if args.requests > 0 else []:
            feedback = folder / f"feedback-{runtime}"
            with serving(files[runtime], runtime, threshold, feedback, folder / f"logs-{runtime}") as service:
                cells += latency_cells(service, runtime, bodies, args)
            drain_feedback(feedback)
        if cells:
            summarise(cells)
        if args.soak_requests > 0:
            print(f"soak through the transformer ({args.soak_runtime}, concurrency {args.soak_concurrency}):",
                  flush=True)  # fmt: skip
            feedback = folder / "feedback-soak"
            with serving(
                files[args.soak_runtime], args.soak_runtime, threshold, feedback, folder / "logs-soak"
            ) as service:
                soak(service, bodies, feedback, args)


if __name__ == "__main__":
    main()

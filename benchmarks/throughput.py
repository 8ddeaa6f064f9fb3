"""Where the time of a labelling pass goes, in one run, as a table of photos/s and ratios.

    nice -n 0 .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --rows 200 --phone-rows 32 --rss-rows 0  # quick
    .venv/bin/python benchmarks/throughput.py --sweep    # threads, decode threads, prefetch, batch
    .venv/bin/python benchmarks/throughput.py --models \
        models/mobilenetv2-dogs,models/efficientnet-lite2-dogs   # two models, one run

With a MobileNetV2 model (ImageNet backbone from the shared weights, untrained head), for the
320 px full-frame sample and for 12-megapixel phone JPEGs made from it at start-up:

* forward only: each available runtime (Keras, ONNX Runtime) on a preprocessed batch;
* decode only: stored bytes to the model's input, the way the pass prepares a photo;
* pipeline: decode + preprocess + fastest forward with the pass's threads, no database;
* pass: the real pass (claim, read, decode, classify, decide, save) on SQLite and PostgreSQL;
* one at a time: decode, preprocess and predict one photo with Keras, in a loop;

then the ratios the issue asks for, and the peak RSS of whole passes over --rss-rows rows,
each in its own process (it must stay flat as the number of rows grows).

Threads, prefetch depth and batch size are the settings' defaults unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    REPO,
    fresh_database,
    mobilenet_artifact,
    peak_rss_mib,
    phone_jpegs,
    sample_photos,
    seed,
)

SIZES = ("320 px", "12 MP")


def settings_for(url: str, model: Path, cache: Path, args: argparse.Namespace) -> Any:
    from labeler.config.settings import Settings

    return Settings.model_validate(
        {
            "database_url": url,
            "source_table": "animals",
            "source_image_column": "photo",
            "model_dir": model,
            "runtime": args.runtime,
            "runtime_cache_dir": cache,
            "batch_size": args.batch_size,
            "inference_threads": args.threads,
            "prefetch_batches": args.prefetch,
            "decode_threads": args.decode_threads,
        }
    )


# --- the stages on their own -----------------------------------------------------------------


def prepare_photo(data: bytes, loader: Any, config: Any, reduced: bool = True) -> np.ndarray:
    """One stored photo to the model's input: decoded at the smallest scale that covers the
    model input (``reduced``, what the pass should do), or whole."""
    from labeler.model.preprocessing import preprocess_image
    from labeler.photos.fetching import load_image

    image, _ = load_image(data, loader, target_size=config.image_size if reduced else None)
    return preprocess_image(image, config)


def timed(fn: Callable[[], int], min_seconds: float = 0.0) -> float:
    """Photos per second of ``fn`` (which returns how many photos it handled)."""
    t0 = time.perf_counter()
    done = fn()
    while time.perf_counter() - t0 < min_seconds:
        done += fn()
    return done / (time.perf_counter() - t0)


def forward_rate(runtime: Any, batch: np.ndarray, seconds: float) -> float:
    runtime.predict(batch)  # warm-up: graph tracing, memory arenas
    runtime.predict(batch)
    return timed(lambda: len(runtime.predict(batch)), seconds)


def decode_rate(
    photos: list[bytes], count: int, loader: Any, config: Any, reduced: bool = True
) -> float:
    return timed(
        lambda: len(
            [prepare_photo(photos[i % len(photos)], loader, config, reduced) for i in range(count)]
        )
    )


def prepare_inputs(
    values: list[bytes], loader: Any, config: Any, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """A batch's model input from stored photos, through the pass's own ``prepare_batch``
    (with ``pool``: its decode pool, as the pass uses it)."""
    from labeler.core.domain import SourceRow
    from labeler.labelling.batches import prepare_batch

    ids = [str(i) for i in range(len(values))]
    rows = {i: SourceRow(image=v) for i, v in zip(ids, values, strict=True)}
    prepared = prepare_batch(
        "bench",
        ids,
        rows,
        {},
        loader=loader,
        preprocessing=config,
        cancel=lambda: False,
        pool=pool,
    )
    assert prepared.inputs is not None and not prepared.failures, prepared.failures
    return prepared.inputs


def pipeline_rate(
    photos: list[bytes],
    count: int,
    classifier: Any,
    loader: Any,
    batch: int,
    prefetch: int,
    decode_threads: int = 1,
) -> float:
    """The pass without a database: a thread prepares batches (``decode_threads`` > 1: split
    over a decode pool), this one classifies them, ``prefetch`` batches apart."""
    config = classifier.artifact.preprocessing
    batches: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None

    def produce() -> None:
        for start in range(0, count, batch):
            values = [photos[i % len(photos)] for i in range(start, min(start + batch, count))]
            batches.put(prepare_inputs(values, loader, config, pool))
        batches.put(None)

    def run() -> int:
        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        done = 0
        while (item := batches.get()) is not None:
            done += len(classifier.predict(item))
        producer.join()
        return done

    try:
        return timed(run)
    finally:
        if pool is not None:
            pool.shutdown()


def loop_rate(photos: list[bytes], count: int, keras_classifier: Any, loader: Any) -> float:
    """The study's program: decode, preprocess and predict one photo at a time, with Keras."""
    from labeler.photos.fetching import load_image

    def run() -> int:
        for i in range(count):
            image, _ = load_image(photos[i % len(photos)], loader)
            keras_classifier.classify_images([image])
        return count

    keras_classifier.classify_images([np.zeros((8, 8, 3), np.uint8)])  # warm-up
    return timed(run)


def pass_rate(
    backend: str, photos: list[bytes], rows: int, model: Path, cache: Path, args: Any
) -> dict[str, Any]:
    from labeler.service.app import Service
    from labeler.store import migrate

    with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as url:
        service = Service.build(settings_for(url, model, cache, args))
        seed(service.engine, rows, photos=photos)
        migrate.upgrade(service.engine)
        t0, cpu0 = time.perf_counter(), time.process_time()
        summary = service.run_pass()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        service.engine.dispose()
    stages = summary.stage_seconds
    database = sum(stages.get(k, 0.0) for k in ("claim", "read", "save"))
    return {
        "rate": summary.processed / wall,
        "processed": summary.processed,
        "wall": wall,
        "cpu_ms_per_photo": 1000 * cpu / max(summary.processed, 1),
        "stages": stages,
        "database_share": database / wall,
        "runtime": service.classifier.runtime_name,
    }


# --- peak memory, one process per row count ----------------------------------------------------


def rss_child(args: argparse.Namespace) -> None:
    """Run one pass over an already seeded database and print its peak RSS as JSON."""
    from labeler.service.app import Service

    service = Service.build(settings_for(args.child_url, args.model, args.cache, args))
    before = peak_rss_mib()
    t0 = time.perf_counter()
    summary = service.run_pass()
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "processed": summary.processed,
                "rate": summary.processed / wall,
                "peak_rss_mib_before": before,
                "peak_rss_mib": peak_rss_mib(),
                "runtime": service.classifier.runtime_name,
                "tensorflow_loaded": "tensorflow" in sys.modules,
            }
        )
    )


def rss_run(rows: int, model: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    from labeler.config.settings import Settings
    from labeler.store import migrate
    from labeler.store.engine import make_engine

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'rss.db'}"
        engine = make_engine(Settings.model_validate({"database_url": url}))
        seed(engine, rows)
        migrate.upgrade(engine)
        engine.dispose()
        command = [
            sys.executable, __file__, "--child-rss", "--child-url", url,
            "--model", str(model), "--cache", str(cache), "--runtime", args.runtime,
            "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            "--prefetch", str(args.prefetch),
        ]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"the RSS run over {rows} rows failed:\n{out.stderr[-2000:]}")
        return {"rows": rows, **json.loads(out.stdout.strip().splitlines()[-1])}


def rss_report(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = mobilenet_artifact(Path(tmp) / "model") if args.model is None else args.model
        cache = Path(tmp) / "onnx-cache"
        from labeler.service.app import load_classifier

        load_classifier(settings_for("sqlite://", model, cache, args))  # convert once
        print_rss([rss_run(n, model, cache, args) for n in args.rss_rows if n > 0])


def print_rss(rss: list[dict[str, Any]]) -> None:
    rows = [("peak RSS (own process, sqlite)", "rows", "MiB", "photos/s")]
    for item in rss:
        rows.append(
            (item["runtime"], str(item["rows"]), fmt(item["peak_rss_mib"], 0), fmt(item["rate"]))
        )
    print(table(rows))
    if len(rss) > 1:
        growth = rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"]
        print(f"RSS {rss[-1]['rows']} rows / {rss[0]['rows']} rows: {growth:.2f} (goal <= 1.10)")


# --- the report ---------------------------------------------------------------------------------


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        rest = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(args: argparse.Namespace) -> None:
    from labeler.labelling.passes import decode_thread_count
    from labeler.model.classifier import Classifier
    from labeler.model.runtime import is_onnx_only
    from labeler.service.app import load_classifier, loader_config

    load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        model = mobilenet_artifact(Path(tmp) / "model") if args.model is None else args.model
        cache = Path(tmp) / "onnx-cache"
        settings = settings_for("sqlite://", model, cache, args)
        loader = loader_config(settings)
        t0 = time.perf_counter()
        photos = {SIZES[0]: sample_photos(), SIZES[1]: phone_jpegs(args.phone_photos)}
        made = time.perf_counter() - t0
        served = load_classifier(settings)  # the runtime the pass gets (converts once)
        config = served.artifact.preprocessing
        decoders = decode_thread_count(args.decode_threads)  # as the pass resolves 0
        first = [prepare_photo(p, loader, config) for p in photos[SIZES[0]][: args.batch_size]]
        from labeler.model.preprocessing import finish_batch

        batch = finish_batch(np.stack(first), config)
        forward = {served.runtime_name: forward_rate(served.runtime, batch, args.forward_seconds)}
        counts = {SIZES[0]: args.rows, SIZES[1]: args.phone_rows}
        results: dict[str, dict[str, Any]] = {}
        for size in SIZES:
            count, pics = counts[size], photos[size]
            r: dict[str, Any] = {
                "decode": decode_rate(pics, min(count, args.decode_photos), loader, config),
                "decode_full": decode_rate(
                    pics, min(count, args.decode_photos), loader, config, reduced=False
                ),
                "pipeline": pipeline_rate(
                    pics, count, served, loader, args.batch_size, args.prefetch, decoders
                ),
                "pipeline_1": pipeline_rate(
                    pics, count, served, loader, args.batch_size, args.prefetch, 1
                ),
            }
            for backend in args.backends:
                r[backend] = pass_rate(backend, pics, count, model, cache, args)
            results[size] = r
        # Keras last: once TensorFlow has run a model its thread pools stay in the process,
        # and a labeler serving with ONNX Runtime never has them; the pass and pipeline rows
        # above are measured without them.
        # A model that exists only as ONNX has no Keras loop to compare with.
        if not is_onnx_only(served.artifact):
            keras = Classifier.load(model, runtime="keras")
            if served.runtime_name != "keras":
                forward["keras"] = forward_rate(keras.runtime, batch, args.forward_seconds)
        for size in SIZES:
            count, pics = counts[size], photos[size]
            results[size]["loop"] = (
                None
                if is_onnx_only(served.artifact)
                else loop_rate(pics, min(count, args.loop_photos), keras, loader)
            )
        fastest = max(forward.values())
        rss = [rss_run(n, model, cache, args) for n in args.rss_rows if n > 0]

    cores = os.cpu_count()
    print(f"# throughput.py, {started}, {cores} cores, load average {load:.2f} at start")
    print(
        f"# model {served.artifact.name} "
        f"{'x'.join(str(d) for d in served.artifact.preprocessing.image_size)}, "
        f"batch {args.batch_size}, inference threads "
        f"{args.threads or 'default (one per core)'}, decode threads {decoders}, "
        f"prefetch {args.prefetch} batch(es); "
        f"pass runtime: {served.runtime.description}"
    )
    print(
        f"# rows per pass: {args.rows} (320 px), {args.phone_rows} (12 MP, {args.phone_photos} "
        f"distinct 4032x3024 JPEGs of {np.mean([len(p) for p in photos[SIZES[1]]]) / 2**20:.1f}"
        f" MiB made in {made:.0f}s)"
    )
    print()
    rows: list[tuple[str, ...]] = [("photos/s", *SIZES)]
    for name, rate in forward.items():
        rows.append((f"forward only, {name}", fmt(rate), "same"))
    rows.append(
        ("decode whole + preprocess, 1 thread", *(fmt(results[s]["decode_full"]) for s in SIZES))
    )
    rows.append(
        ("decode reduced + preprocess, 1 thread", *(fmt(results[s]["decode"]) for s in SIZES))
    )
    pipe_label = f"pipeline without database, {decoders} decode threads (as the pass)"
    rows.append((pipe_label, *(fmt(results[s]["pipeline"]) for s in SIZES)))
    rows.append(("pipeline, 1 decode thread", *(fmt(results[s]["pipeline_1"]) for s in SIZES)))
    for backend in args.backends:
        rows.append((f"pass, {backend}", *(fmt(results[s][backend]["rate"]) for s in SIZES)))
    rows.append(("one photo at a time, Keras", *(fmt(results[s]["loop"]) for s in SIZES)))
    print(table(rows))
    print()
    main_backend = args.backends[0]
    ratios: list[tuple[str, ...]] = [("ratios", *SIZES)]

    def ratio(label: str, numerator: str, denominator: str | None = None) -> None:
        """``results[size][numerator]`` (a rate or a pass's "rate") over the denominator."""
        cells = []
        for size in SIZES:
            r = results[size]
            top = r[numerator]["rate"] if isinstance(r[numerator], dict) else r[numerator]
            bottom = fastest if denominator is None else r[denominator]
            cells.append(fmt(None if top is None or bottom is None else top / bottom, 2))
        ratios.append((label, *cells))

    for backend in args.backends:
        ratio(f"pass {backend} / pipeline (goal >= 0.9)", backend, "pipeline")
        ratio(f"pass {backend} / one at a time (goal >= 3)", backend, "loop")
    ratio(f"pass {main_backend} / fastest forward", main_backend)
    ratio("decode only / fastest forward", "decode")
    for backend in args.backends:
        shares = (fmt(results[size][backend]["database_share"], 3) for size in SIZES)
        ratios.append((f"database seconds / {backend} pass seconds (goal < 0.05)", *shares))
    if "keras" in forward and len(forward) > 1:
        ratios.append(("fastest forward / Keras forward", fmt(fastest / forward["keras"], 2), ""))
    print(table(ratios))
    print()
    for size in SIZES:
        for backend in args.backends:
            stages = results[size][backend]["stages"]
            line = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stages.items()))
            r = results[size][backend]
            cpu = r["cpu_ms_per_photo"]
            print(f"# {size} {backend}: {r['wall']:.1f}s, CPU {cpu:.1f} ms/photo; stages: {line}")
    if rss:
        print()
        print_rss(rss)


# --- choosing threads, prefetch and batch size ------------------------------------------------


def sweep(args: argparse.Namespace) -> None:
    """Pass rate (and CPU ms per photo, which other processes disturb less) for each
    inference thread count and prefetch depth at the default batch size, then for each batch
    size at the best of those."""
    from labeler.service.app import load_classifier

    print(f"# sweep, load average {os.getloadavg()[0]:.2f} at start, backend sqlite")
    with tempfile.TemporaryDirectory() as tmp:
        model = mobilenet_artifact(Path(tmp) / "model") if args.model is None else args.model
        cache = Path(tmp) / "onnx-cache"
        load_classifier(settings_for("sqlite://", model, cache, args))  # convert once
        photos = {SIZES[0]: sample_photos(), SIZES[1]: phone_jpegs(args.phone_photos)}
        header = (
            "threads  decode  prefetch  batch",
            *(f"{s} /s (CPU ms/photo)" for s in SIZES),
        )
        rows: list[tuple[str, ...]] = [header]
        scores: dict[tuple[int, int, int, int], float] = {}

        def point(threads: int, decode: int, prefetch: int, batch: int) -> None:
            if (threads, decode, prefetch, batch) in scores:
                return
            where = {
                "threads": threads,
                "decode_threads": decode,
                "prefetch": prefetch,
                "batch_size": batch,
            }
            settings = argparse.Namespace(**{**vars(args), **where})
            cells, rates = [], []
            for size, n in zip(SIZES, (args.rows, args.phone_rows), strict=True):
                r = pass_rate("sqlite", photos[size], n, model, cache, settings)
                cells.append(f"{r['rate']:.1f} ({r['cpu_ms_per_photo']:.1f})")
                rates.append(r["rate"])
            # Both photo sizes count: the 12 MP rate relative to the 320 px one.
            scores[(threads, decode, prefetch, batch)] = float(np.sqrt(rates[0] * rates[1]))
            rows.append((f"{threads:>7}  {decode:>6}  {prefetch:>8}  {batch:>5}", *cells))
            print("  ".join(rows[-1]), flush=True)

        for threads in args.sweep_threads:
            for decode in args.sweep_decode:
                for prefetch in args.sweep_prefetch:
                    point(threads, decode, prefetch, args.batch_size)
        best = max(scores, key=scores.__getitem__)
        for batch in args.sweep_batch:
            point(best[0], best[1], best[2], batch)
    print(table(rows))
    best = max(scores, key=scores.__getitem__)
    print(
        f"best (geometric mean of both sizes): threads {best[0]}, decode threads {best[1]}, "
        f"prefetch {best[2]}, batch {best[3]}"
    )


def main() -> None:
    from labeler.config.settings import Settings

    defaults = Settings.model_validate({"database_url": "sqlite://"})
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows per 320 px pass")
    parser.add_argument("--phone-rows", type=int, default=128, help="rows per 12 MP pass")
    parser.add_argument("--phone-photos", type=int, default=12, help="distinct 12 MP JPEGs")
    parser.add_argument("--backends", default="sqlite,postgresql", type=lambda s: s.split(","))
    parser.add_argument(
        "--rss-rows", default="1000,20000", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--decode-photos", type=int, default=200)
    parser.add_argument("--loop-photos", type=int, default=200)
    parser.add_argument("--forward-seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--threads", type=int, default=defaults.inference_threads)
    parser.add_argument("--prefetch", type=int, default=defaults.prefetch_batches)
    parser.add_argument(
        "--decode-threads", type=int, default=defaults.decode_threads, help="0: one per core"
    )
    parser.add_argument("--runtime", default=defaults.runtime, choices=("auto", "keras", "onnx"))
    parser.add_argument("--model", type=Path, help="an artifact directory (default: MobileNetV2)")
    parser.add_argument("--sweep", action="store_true", help="pass rate per threads/prefetch/batch")
    parser.add_argument(
        "--sweep-threads", default="1,2", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--sweep-prefetch", default="1,2", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--sweep-decode", default="1,2,3", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--sweep-batch", default="16,32,64", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--models",
        type=lambda text: [Path(x) for x in text.split(",") if x],
        default=[],
        help="comma list of artifact directories: one report each, in this one run",
    )
    parser.add_argument("--rss-only", action="store_true", help="only the peak RSS runs")
    parser.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        rss_child(args)
    elif args.rss_only:
        rss_report(args)
    elif args.sweep:
        sweep(args)
    elif args.models:
        for model in args.models:
            args.model = model
            report(args)
            print()
    else:
        report(args)


if __name__ == "__main__":
    main()

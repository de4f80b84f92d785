"""Benchmark of the auditors' queries on PostgreSQL: 1,000,000 findings across 100,000 studies.

Loads a realistic findings database with COPY (psycopg), then times the work the API does for
one request, on the real code path (query + audit event + commit), many times:

* a filtered, paginated findings search (date window plus one or two of modality, calling AE,
  language, label text, model, delivery status; 50 rows; half of them a second page by cursor)
* one study's timeline

Targets (docs/benchmarks.md): search p95 < 50 ms, timeline p95 < 20 ms.

    .venv/bin/python bench/findings_query.py                     # 100,000 studies (~1M findings)
    .venv/bin/python bench/findings_query.py --studies 10000     # quicker, smaller
    .venv/bin/python bench/findings_query.py --quick             # seconds: the test suite's run

The database (default ``medrega_bench`` on the local server) is created afresh and dropped at
the end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.sql.schema import ScalarElementColumnDefault

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import audit  # noqa: E402
from common.db import make_engine, session_factory, upgrade  # noqa: E402
from common.models import Base  # noqa: E402
from gateway.api.query_findings import FindingFilters, search_findings  # noqa: E402
from gateway.api.query_studies import get_study, study_timeline  # noqa: E402

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
SPAN = dt.timedelta(days=365)
MODALITIES = [("CR", 35), ("DX", 15), ("CT", 20), ("MR", 15), ("US", 10), ("MG", 5)]
CALLING_AES = [f"MODALITY_{i:02d}" for i in range(12)]
AE_WEIGHTS = [30, 18, 12, 9, 7, 6, 5, 4, 3, 3, 2, 1]
REGIONS = [
    ("left lung", "左肺"), ("right lung", "右肺"), ("heart", "心脏"), ("liver", "肝脏"),
    ("spleen", "脾脏"), ("left kidney", "左肾"), ("right kidney", "右肾"), ("stomach", "胃"),
    ("pancreas", "胰腺"), ("gallbladder", "胆囊"), ("aorta", "主动脉"), ("trachea", "气管"),
    ("spine", "脊柱"), ("left clavicle", "左锁骨"), ("right clavicle", "右锁骨"),
    ("bladder", "膀胱"), ("brain", "脑"), ("left breast", "左乳"), ("right breast", "右乳"),
    ("thyroid", "甲状腺"), ("nodule", "结节"), ("mass", "肿块"), ("effusion", "积液"),
    ("fracture", "骨折"), ("rib", "肋骨"), ("diaphragm", "膈肌"), ("mediastinum", "纵隔"),
    ("colon", "结肠"), ("small intestine", "小肠"), ("uterus", "子宫"),
]
WEIGHTS = ["sha256:1a2b3c", "sha256:4d5e6f", "sha256:7a8b9c"]


def _with_model_defaults(table: str, named: list[str]) -> tuple[list[str], list[object]]:
    """The columns the loader names plus every NOT NULL column it does not name that has a
    scalar default in ``common.models`` (COPY applies server defaults only), with those values.

    A column added to the schema with a Python-side default therefore does not break the load.
    """
    extra_names: list[str] = []
    extra_values: list[object] = []
    for column in Base.metadata.tables[table].columns:
        if column.name in named or column.nullable or column.server_default is not None:
            continue
        if isinstance(column.default, ScalarElementColumnDefault):
            extra_names.append(column.name)
            value = column.default.arg
            extra_values.append(value.value if hasattr(value, "value") else value)
    return named + extra_names, extra_values


def _url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + name


def _pg(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def load(url: str, studies: int, regions_per_study: int, seed: int) -> dict[str, int]:
    """COPY a realistic findings database into the (migrated, empty) database at ``url``."""
    rnd = random.Random(seed)
    counts = dict.fromkeys(["studies", "series", "instances", "jobs", "job_events", "model_runs",
                            "findings", "documents", "deliveries"], 0)
    mods = [m for m, w in MODALITIES for _ in range(w)]
    step = SPAN / studies
    with psycopg.connect(_pg(url)) as conn, conn.cursor() as cur:
        def copy(table: str, cols: str, rows: Callable[[], Iterable[tuple[Any, ...]]]) -> None:
            names, defaults = _with_model_defaults(table, [c.strip() for c in cols.split(",")])
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as cp:
                for row in rows():
                    cp.write_row((*row, *defaults))

        plan = []  # per study: (t0, modality, ae, model, weights, delivery state)
        for i in range(studies):
            t0 = EPOCH + step * i + dt.timedelta(seconds=rnd.random() * 60)
            ae = rnd.choices(CALLING_AES, AE_WEIGHTS)[0]
            r = rnd.random()
            dstate = "failed" if r < 0.02 else "pending" if r < 0.03 else "sent"
            model = "MedRegA-lite" if rnd.random() < 0.1 else "MedRegA"
            plan.append((t0, rnd.choice(mods), ae, model, WEIGHTS[min(2, i * 3 // studies)], dstate))

        def studies_rows():
            for i, (t0, _m, ae, *_rest) in enumerate(plan, 1):
                yield (i, f"1.2.826.0.1.3680043.10.1.{i}", f"PID{i:07d}", f"Patient^{i}",
                       f"A{i:09d}", t0.strftime("%Y%m%d"), "Study", ae, "complete", 1, False, t0,
                       t0 + dt.timedelta(seconds=2), t0 + dt.timedelta(seconds=32))
        copy("studies", "id, study_instance_uid, patient_id, patient_name, accession_number, "
             "study_date, study_description, calling_ae_title, state, version, urgent, "
             "first_received_at, last_received_at, completed_at", studies_rows)
        counts["studies"] = studies

        def series_rows():
            for i, (_t0, m, *_r) in enumerate(plan, 1):
                yield (i, i, f"1.2.826.0.1.3680043.10.2.{i}", m, "CHEST", "series", 1)
        copy("series", "id, study_id, series_instance_uid, modality, body_part_examined, "
             "series_description, series_number", series_rows)
        counts["series"] = studies

        def instance_rows():
            for i, (t0, _m, ae, *_r) in enumerate(plan, 1):
                yield (i, i, i, f"1.2.826.0.1.3680043.10.3.{i}", "1.2.840.10008.5.1.4.1.1.1",
                       "1.2.840.10008.1.2.1", 1, 512, 512, 1, f"spool/{i}.dcm", 524288, "0" * 64,
                       ae, t0, 0)
        copy("instances", "id, study_id, series_id, sop_instance_uid, sop_class_uid, "
             "transfer_syntax_uid, instance_number, rows, columns, number_of_frames, path, "
             "size_bytes, sha256, calling_ae_title, received_at, duplicate_count", instance_rows)
        counts["instances"] = studies

        def job_rows():
            for i, (t0, *_r, dstate) in enumerate(plan, 1):
                state = "delivered" if dstate == "sent" else "sr_written"
                yield (i, i, 1, state, 0, 1, 1, '["PACS"]', t0 + dt.timedelta(seconds=32),
                       t0 + dt.timedelta(seconds=50), t0 + dt.timedelta(seconds=33), "gpu-1")
        copy("jobs", "id, study_id, study_version, state, priority, attempts, instance_count, "
             "destinations, created_at, updated_at, published_at, worker", job_rows)
        counts["jobs"] = studies

        def event_rows():
            n = 0
            for i, (t0, *_r, dstate) in enumerate(plan, 1):
                for state, s in (("queued", 33), ("running", 35), ("inferred", 47),
                                 ("sr_written", 48)) + ((("delivered", 50),) if dstate == "sent" else ()):
                    n += 1
                    yield (n, i, state, t0 + dt.timedelta(seconds=s))
            counts["job_events"] = n
        copy("job_events", "id, job_id, state, at", event_rows)

        def run_rows():
            for i, (t0, _m, _ae, model, weights, _d) in enumerate(plan, 1):
                for k, lang in enumerate(("en", "zh")):
                    yield (2 * i - 1 + k, i, i, lang, "region_grounding", "medrega", model, "1.0",
                           weights, "prompt", "answer", 5.0, t0 + dt.timedelta(seconds=40 + k))
        copy("model_runs", "id, job_id, instance_id, language, task, backend, model_name, "
             "model_version, weights_id, prompt, raw_answer, duration_s, created_at", run_rows)
        counts["model_runs"] = 2 * studies

        def finding_rows():
            n = 0
            for i, (t0, *_r) in enumerate(plan, 1):
                picked = rnd.sample(REGIONS, regions_per_study)
                for k, lang in enumerate(("en", "zh")):
                    for j, (en, zh) in enumerate(picked):
                        n += 1
                        x1, y1 = rnd.randrange(0, 600), rnd.randrange(0, 600)
                        x2, y2 = x1 + rnd.randrange(50, 390), y1 + rnd.randrange(50, 390)
                        yield (n, i, 2 * i - 1 + k, lang, "region", en if lang == "en" else zh,
                               f"C{j}", "SCT", en, x1, y1, x2, y2, x1 * 0.512, y1 * 0.512,
                               x2 * 0.512, y2 * 0.512, f"1.2.826.0.1.3680043.10.3.{i}",
                               "1.2.840.10008.5.1.4.1.1.1", False,
                               t0 + dt.timedelta(seconds=47, microseconds=n % 1000))
            counts["findings"] = n
        copy("findings", "id, job_id, model_run_id, language, kind, label, code_value, "
             "code_scheme, code_meaning, box_x1, box_y1, box_x2, box_y2, px_x1, px_y1, px_x2, "
             "px_y2, referenced_sop_instance_uid, referenced_sop_class_uid, unparsed, created_at",
             finding_rows)

        def document_rows():
            for i, (t0, *_r) in enumerate(plan, 1):
                for k, lang in enumerate(("en", "zh")):
                    d = 2 * i - 1 + k
                    yield (d, i, "sr", lang, "1.2.840.10008.5.1.4.1.1.88.22",
                           f"1.2.826.0.1.3680043.10.4.{d}", f"1.2.826.0.1.3680043.10.5.{d}",
                           f"out/{d}.dcm", t0 + dt.timedelta(seconds=48))
        copy("documents", "id, job_id, kind, language, sop_class_uid, sop_instance_uid, "
             "series_instance_uid, path, created_at", document_rows)
        counts["documents"] = 2 * studies

        def delivery_rows():
            for i, (t0, *_r, dstate) in enumerate(plan, 1):
                for k in range(2):
                    d = 2 * i - 1 + k
                    sent = dstate == "sent"
                    yield (d, d, "PACS", dstate, 1 if sent else 5,
                           t0 + dt.timedelta(seconds=49) if sent else None,
                           t0 + dt.timedelta(seconds=48))
        copy("deliveries", "id, document_id, destination_name, state, attempts, delivered_at, "
             "created_at", delivery_rows)
        counts["deliveries"] = 2 * studies

        for table in counts:
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))")
        conn.commit()
    with psycopg.connect(_pg(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return counts


def _filters(rnd: random.Random) -> FindingFilters:
    start = EPOCH + dt.timedelta(days=rnd.uniform(0, 330))
    window = dt.timedelta(days=rnd.choice([7, 14, 30]))
    extra: dict[str, Any] = {}  # filter name -> value of that filter's type
    options = [
        ("modality", lambda: rnd.choice([m for m, _ in MODALITIES])),
        ("calling_ae_title", lambda: rnd.choices(CALLING_AES, AE_WEIGHTS)[0]),
        ("language", lambda: rnd.choice(["en", "zh"])),
        ("label", lambda: rnd.choice(["lung", "肺", "kidney", "nodule", "heart", "肝"])),
        ("model_name", lambda: rnd.choice(["MedRegA", "MedRegA-lite"])),
        ("delivery_status", lambda: rnd.choice(["sent", "failed"])),
    ]
    for key, pick in rnd.sample(options, rnd.choice([1, 2])):
        extra[key] = pick()
    return FindingFilters(created_from=start, created_to=start + window, **extra)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def measure(url: str, studies: int, queries: int, seed: int) -> dict[str, dict[str, float]]:
    rnd = random.Random(seed + 1)
    factory = session_factory(url)
    search_ms: list[float] = []
    rows: list[int] = []
    describe: list[tuple[float, str]] = []
    with factory() as s:  # warm the connection pool and the catalogue
        search_findings(s, FindingFilters(), limit=50, show_identifiers=False)
        s.rollback()
    for q in range(queries):
        filters = _filters(rnd)
        cursor = None
        if q % 2:  # a second page: fetch page one untimed, time page two
            with factory() as s:
                _items, cursor = search_findings(s, filters, limit=50, show_identifiers=False)
                s.rollback()
        start = time.perf_counter()
        with factory() as s:
            items, _next = search_findings(s, filters, limit=50, cursor=cursor,
                                           show_identifiers=False)
            audit.record(s, actor="bench", role="auditor", action="findings.search",
                         query=filters.as_query(), rows=len(items))
            s.commit()
        elapsed = (time.perf_counter() - start) * 1000
        search_ms.append(elapsed)
        rows.append(len(items))
        describe.append((elapsed, filters.as_query() + (" +cursor" if cursor else "")))

    timeline_ms: list[float] = []
    for _ in range(queries):
        uid = f"1.2.826.0.1.3680043.10.1.{rnd.randrange(1, studies + 1)}"
        start = time.perf_counter()
        with factory() as s:
            t = study_timeline(s, get_study(s, uid))
            audit.record(s, actor="bench", role="auditor", action="study.timeline", rows=len(t.steps),
                         study_instance_uid=uid)
            s.commit()
        timeline_ms.append((time.perf_counter() - start) * 1000)

    slowest = sorted(describe, reverse=True)[:5]
    print("slowest searches:")
    for ms, what in slowest:
        print(f"  {ms:8.1f} ms  {what}")
    return {
        "search": {"p50": statistics.median(search_ms), "p95": _percentile(search_ms, 95),
                   "p99": _percentile(search_ms, 99), "max": max(search_ms),
                   "mean_rows": statistics.mean(rows)},
        "timeline": {"p50": statistics.median(timeline_ms), "p95": _percentile(timeline_ms, 95),
                     "p99": _percentile(timeline_ms, 99), "max": max(timeline_ms)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="an existing database on the server to connect to for CREATE DATABASE")
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--regions", type=int, default=5, help="regions per study (x2 languages)")
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--quick", action="store_true",
                    help="200 studies, 20 queries; checks the loader and the queries run against "
                         "today's schema (the test suite's run; targets reported, not enforced)")
    args = ap.parse_args(argv)
    if args.quick:
        args.studies, args.queries = min(args.studies, 200), min(args.queries, 20)

    name = f"medrega_bench_{uuid.uuid4().hex[:8]}"
    url = _url(args.url, name)
    with psycopg.connect(_pg(args.url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        t = time.perf_counter()
        upgrade(url)
        counts = load(url, args.studies, args.regions, args.seed)
        load_s = time.perf_counter() - t
        print(f"loaded {counts['findings']:,} findings across {counts['studies']:,} studies "
              f"({sum(counts.values()):,} rows) in {load_s:.1f} s")
        result = measure(url, args.studies, args.queries, args.seed)
        s, tl = result["search"], result["timeline"]
        print(f"search   ({args.queries} queries, 50 rows/page): p50 {s['p50']:.1f} ms  "
              f"p95 {s['p95']:.1f} ms  p99 {s['p99']:.1f} ms  max {s['max']:.1f} ms  "
              f"(mean {s['mean_rows']:.1f} rows)")
        print(f"timeline ({args.queries} studies): p50 {tl['p50']:.1f} ms  p95 {tl['p95']:.1f} ms  "
              f"p99 {tl['p99']:.1f} ms  max {tl['max']:.1f} ms")
        ok = s["p95"] < 50 and tl["p95"] < 20
        print("targets (search p95 < 50 ms, timeline p95 < 20 ms):", "met" if ok else "NOT met")
        return 0 if ok or args.quick else 1
    finally:
        make_engine(url).dispose()
        if args.keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(_pg(args.url), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())

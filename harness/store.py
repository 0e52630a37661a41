"""The results store: one record per evaluation job (checkpoint x task x protocol x label fraction
x seed), with its val/test results, in a SQLite file in the workspace or a shared PostgreSQL
database (`--db postgresql://user@host:port/db`, the same URL Optuna's RDB storage uses, which is
why our tables are prefixed `bench_`).

Every record is written in one transaction: a crash leaves no half record. Writers may be several
processes at once: SQLite runs in WAL mode and takes the write lock at BEGIN (IMMEDIATE), so writers
queue behind a busy timeout instead of failing; on both backends a job is written with INSERT ... ON
CONFLICT, so two writers of the same job never collide. SQLite on a network file system (NFS) is
not safe for several machines: use PostgreSQL there.
"""
from __future__ import annotations

import math
import numbers
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url

from medssl_bench.harness.errors import UserError
from medssl_bench.harness.fsutil import ensure_writable_dir
from medssl_bench.harness.store_engines import (SQLITE_BUSY_TIMEOUT_S, _enable_wal, _postgresql_engine,  # noqa: F401
                                                _sqlite_engine, is_in_memory, read_only_engine)

if TYPE_CHECKING:
    from medssl_bench.harness.workspace import Workspace

SCHEMA_VERSION = 1
SPLITS = ("val", "test")
PPM = 1_000_000  # label fractions are stored as integer parts per million, so equality is exact
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; psycopg2 is the driver we ship.
DRIVERS = {"sqlite": "sqlite", "sqlite+pysqlite": "sqlite",
           "postgresql": "postgresql+psycopg2", "postgresql+psycopg2": "postgresql+psycopg2"}


class EvalKey(NamedTuple):
    checkpoint_id: str
    task: str
    protocol: str
    label_fraction: float
    seed: int


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: NaN/inf -> None (an undefined AUROC must not crash a record),
    numpy/torch scalars and arrays -> Python numbers and lists. Anything else raises TypeError."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):  # keys become strings, as JSON makes them anyway (class indices)
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    raise TypeError(f"{type(value).__name__} value {value!r} is not JSON serialisable")


class SafeJSON(sa.TypeDecorator):
    """JSON of `json_safe` data; a Python None is SQL NULL (not the JSON text 'null')."""
    impl, cache_ok = sa.JSON(none_as_null=True), True

    def process_bind_param(self, value, dialect):
        return json_safe(value)


class FiniteFloat(sa.TypeDecorator):
    """A float column where NaN/inf are stored as NULL, alike on both backends."""
    impl, cache_ok = sa.Float, True

    def process_bind_param(self, value, dialect):
        return None if value is None or not math.isfinite(value) else float(value)


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC timestamps (SQLite drops the zone; put it back on the way out)."""
    impl, cache_ok = sa.DateTime(timezone=True), True

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


metadata = sa.MetaData()

meta_table = sa.Table(
    "bench_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)
checkpoints_table = sa.Table(
    "bench_checkpoints", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(256)), sa.Column("method", sa.String(64)), sa.Column("backbone", sa.String(64)),
    sa.Column("path", sa.Text), sa.Column("sha256", sa.String(64)), sa.Column("corpus_id", sa.String(128)),
    sa.Column("synthetic", sa.Boolean),  # pretrained on synthetic data
    sa.Column("sidecar", SafeJSON),  # the checkpoint's provenance
    sa.Column("created", UTCDateTime, nullable=False),
)
KEY_COLUMNS = ("checkpoint_id", "task", "protocol", "label_fraction_ppm", "seed")
evaluations_table = sa.Table(
    "bench_evaluations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # No foreign key to bench_checkpoints: a job may be recorded for a checkpoint never registered.
    sa.Column("checkpoint_id", sa.String(128), nullable=False),
    sa.Column("task", sa.String(64), nullable=False),
    sa.Column("protocol", sa.String(64), nullable=False),
    sa.Column("label_fraction_ppm", sa.Integer, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False), sa.Column("reason", sa.Text),
    sa.Column("protocol_config", SafeJSON), sa.Column("provenance", SafeJSON),
    sa.Column("data_hash", sa.String(128)),
    sa.Column("synthetic", sa.Boolean),  # evaluated on synthetic data
    sa.Column("wall_time_s", FiniteFloat),
    sa.Column("created", UTCDateTime, nullable=False), sa.Column("updated", UTCDateTime, nullable=False),
    sa.UniqueConstraint(*KEY_COLUMNS, name="bench_evaluations_job"),
    sa.CheckConstraint("status IN ('done', 'failed')", name="bench_evaluations_status"),
)
results_table = sa.Table(
    "bench_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("evaluation_id", sa.Integer, sa.ForeignKey("bench_evaluations.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),  # the primary metric: `value`
    sa.Column("value", FiniteFloat),
    sa.Column("metrics", SafeJSON), sa.Column("per_class", SafeJSON),
    sa.Column("per_case", SafeJSON),  # per image / volume, for bootstrap confidence intervals
    sa.UniqueConstraint("evaluation_id", "split", name="bench_results_split"),
)


def label_fraction_ppm(label_fraction: float) -> int:
    """The stored form of a label fraction. Finer than 1e-6 is refused, not rounded: a rounded
    fraction would never read back equal to the one asked for, and the job would rerun forever."""
    ppm = round(label_fraction * PPM)
    if not 0 < ppm <= PPM or abs(label_fraction * PPM - ppm) > 1e-6:
        raise UserError(f"label fraction {label_fraction!r} must be in (0, 1] with at most 6 decimals")
    return ppm


def _key_values(key: EvalKey) -> dict:
    return {"checkpoint_id": key.checkpoint_id, "task": key.task, "protocol": key.protocol,
            "label_fraction_ppm": label_fraction_ppm(key.label_fraction), "seed": int(key.seed)}


def _row_key(row) -> EvalKey:
    return EvalKey(row["checkpoint_id"], row["task"], row["protocol"], row["label_fraction_ppm"] / PPM, row["seed"])


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        masked = re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)
        raise UserError(f"malformed database URL {masked!r} (expected sqlite:///PATH or "
                        "postgresql://USER@HOST:PORT/DB)") from None
    if parsed.drivername not in DRIVERS:
        raise UserError(f"unsupported database URL scheme {parsed.drivername!r} "
                        f"(supported: {', '.join(DRIVERS)})")
    return parsed.set(drivername=DRIVERS[parsed.drivername])


def _db_reason(err: sa.exc.DBAPIError) -> str:
    """The driver's (multi-line) message as one short clause: 'connection refused', 'file is not a database'."""
    first = str(err.orig).strip().splitlines()[0] if str(err.orig).strip() else type(err.orig).__name__
    reason = re.sub(r"^.*failed:\s*", "", first)
    reason = re.sub(r"^FATAL:\s*", "", reason)
    return reason[:1].lower() + reason[1:]


class ResultsStore:
    def __init__(self, engine: sa.Engine, url: str, storage_url: str):
        self._engine = engine
        # Only writes take SQLite's write lock at BEGIN; reads stay concurrent under WAL.
        self._writer = engine.execution_options(bench_write=True)
        self.url = url  # for display: password masked
        self.storage_url = storage_url  # full SQLAlchemy URL (driver explicit): give this to Optuna

    @classmethod
    def open(cls, url: str | None, workspace: "Workspace", *, read_only: bool = False) -> "ResultsStore":
        """Open (creating tables if needed) the store at `url`; None -> `<workspace>/results.db`. `read_only`
        (the leaderboard) writes nothing, works on a read-only file or folder, and reads a missing SQLite
        file as an empty store. An in-memory SQLite URL is refused: its results would vanish."""
        if url is None:
            if not read_only:
                ensure_writable_dir(workspace.root)
            url = f"sqlite:///{workspace.results_db}"
        parsed = _parse_url(url)
        display = make_url(url).render_as_string(hide_password=True)
        if is_in_memory(parsed):
            raise UserError(f"--db {display} is an in-memory SQLite database: what is recorded there vanishes when "
                            "the command ends; give a file (sqlite:///PATH) or leave --db out (WORKSPACE/results.db)")
        is_sqlite = parsed.get_backend_name() == "sqlite"
        found = True
        if read_only:
            engine, found = read_only_engine(parsed)
        else:
            engine = _sqlite_engine(parsed) if is_sqlite else _postgresql_engine(parsed)
        store = cls(engine, display, parsed.render_as_string(hide_password=False))
        try:
            if read_only and found:
                store._check_schema()
            else:
                store._create_schema()  # a missing file read-only: an empty in-memory store, nothing written
        except sa.exc.DBAPIError as err:  # the first connection: a server or a file we cannot use
            engine.dispose()
            unreachable, reason = isinstance(err, sa.exc.OperationalError), _db_reason(err)
            if is_sqlite:
                what = "cannot open SQLite store" if unreachable else "not a SQLite results store"
                raise UserError(f"{what} ({reason})", parsed.database) from None
            what = f"cannot connect to {display}" if unreachable else f"cannot use {display} as a results store"
            raise UserError(f"{what} ({reason})") from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def _create_schema(self) -> None:
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Concurrent CREATE TABLEs of the same name collide in PostgreSQL's catalog: queue them.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(4240571)"))
            if sa.inspect(conn).has_table("bench_meta"):
                self._refuse_newer_schema(conn)
            metadata.create_all(conn)
            conn.execute(_insert(conn, meta_table).values(key="schema_version", value=str(SCHEMA_VERSION))
                         .on_conflict_do_nothing(index_elements=["key"]))

    def _check_schema(self) -> None:
        """For a read-only store: it must be one (bench tables), of a schema version this bench reads."""
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table("bench_evaluations"):
                raise UserError(f"{self.url} holds no bench results tables (not a results store?); `bench eval` "
                                "creates them")
            self._refuse_newer_schema(conn)

    def _refuse_newer_schema(self, conn) -> None:
        found = conn.scalar(sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version"))
        if found is not None and int(found) > SCHEMA_VERSION:
            raise UserError(f"results store {self.url} has schema version {found}, newer than this bench "
                            f"understands ({SCHEMA_VERSION}): upgrade bench")

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- checkpoints ---------------------------------------------------------------------------
    def upsert_checkpoint(self, info: dict) -> None:
        columns = set(checkpoints_table.c.keys())
        unknown = set(info) - columns
        if unknown or "id" not in info:
            raise ValueError(f"checkpoint info needs an 'id' and only {sorted(columns)}; got {sorted(info)}")
        row = {"created": datetime.now(timezone.utc), **info}
        stmt = _insert(self._engine, checkpoints_table).values(**row)
        changes = {name: stmt.excluded[name] for name in info if name not in ("id", "created")}
        stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=changes) if changes \
            else stmt.on_conflict_do_nothing(index_elements=["id"])
        with self._writer.begin() as conn:
            conn.execute(stmt)

    def checkpoints(self) -> list[dict]:
        return [dict(row) for row in self._read(sa.select(checkpoints_table).order_by(checkpoints_table.c.id))]

    def _read(self, query) -> list:
        with self._engine.connect() as conn:
            return list(conn.execute(query).mappings())

    # -- evaluations ---------------------------------------------------------------------------
    def is_done(self, key: EvalKey) -> bool:
        ev = evaluations_table.c
        return bool(self._read(sa.select(ev.id).where(
            ev.status == "done", *(ev[k] == v for k, v in _key_values(key).items()))))

    def done_keys(self, checkpoint_id: str | None = None, task: str | None = None) -> set[EvalKey]:
        ev = evaluations_table.c
        query = sa.select(*(ev[k] for k in KEY_COLUMNS)).where(
            ev.status == "done", *_filters(ev, checkpoint_id=checkpoint_id, task=task))
        return {_row_key(row) for row in self._read(query)}

    def record_done(self, key: EvalKey, *, splits: dict[str, dict], protocol: dict, provenance: dict,
                    wall_time_s: float, force: bool = False) -> bool:
        """Record a finished job and its results in one transaction. Returns False (changing nothing)
        when the job is already done and not `force`d; a failed record is always replaced."""
        if not splits or set(splits) - set(SPLITS):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {sorted(splits)}")
        with self._writer.begin() as conn:
            fields = _fields("done", None, protocol, provenance, wall_time_s)
            evaluation_id = _upsert_evaluation(conn, key, fields, replace_done=force)
            if evaluation_id is None:
                return False
            conn.execute(sa.delete(results_table).where(results_table.c.evaluation_id == evaluation_id))
            conn.execute(sa.insert(results_table), [
                {"evaluation_id": evaluation_id, "split": split, "metric": result["metric"],
                 "value": result["value"], "metrics": result.get("metrics"),
                 "per_class": result.get("per_class"), "per_case": result.get("per_case")}
                for split, result in splits.items()])
        return True

    def record_failed(self, key: EvalKey, *, reason: str, protocol: dict, provenance: dict,
                      wall_time_s: float) -> None:
        """Record a failed job; never overwrites a done record, replaces an earlier failure."""
        with self._writer.begin() as conn:
            _upsert_evaluation(conn, key, _fields("failed", reason, protocol, provenance, wall_time_s),
                               replace_done=False)

    def evaluations(self, *, checkpoint_id: str | None = None, task: str | None = None,
                    status: str | None = None) -> list[dict]:
        ev = evaluations_table.c
        query = sa.select(evaluations_table).where(
            *_filters(ev, checkpoint_id=checkpoint_id, task=task, status=status)
        ).order_by(*(ev[k] for k in KEY_COLUMNS))
        return [_public(row) for row in self._read(query)]

    def results(self, *, checkpoint_id: str | None = None, task: str | None = None,
                protocol: str | None = None, split: str | None = None, label_fraction: float | None = None,
                details: bool = True) -> list[dict]:
        """Flat rows, one per job x split, of done jobs (failures are in `evaluations`). details=False
        leaves out the per-class and per-case values, most of a store's bytes (the leaderboard reads
        the per-case values of a few cells only)."""
        ev, res = evaluations_table.c, results_table.c
        ppm = None if label_fraction is None else label_fraction_ppm(label_fraction)
        query = (
            sa.select(*(ev[k] for k in KEY_COLUMNS), res.split, res.metric, res.value, res.metrics,
                      *([res.per_class, res.per_case] if details else []), ev.status, ev.protocol_config,
                      ev.provenance, ev.data_hash, ev.synthetic, ev.wall_time_s, ev.created)
            .join_from(evaluations_table, results_table, res.evaluation_id == ev.id)
            .where(*_filters(ev, checkpoint_id=checkpoint_id, task=task, protocol=protocol, label_fraction_ppm=ppm),
                   *([res.split == split] if split is not None else []))
            .order_by(*(ev[k] for k in KEY_COLUMNS), res.split.desc())  # val before test
        )
        return [_public(row) for row in self._read(query)]


def _fields(status: str, reason: str | None, protocol: dict, provenance: dict, wall_time_s: float) -> dict:
    data = (provenance or {}).get("data") or {}
    return {"status": status, "reason": reason, "protocol_config": protocol, "provenance": provenance,
            "data_hash": data.get("content_hash"), "synthetic": data.get("synthetic"),
            "wall_time_s": wall_time_s, "updated": datetime.now(timezone.utc)}


def _upsert_evaluation(conn: Connection, key: EvalKey, fields: dict, *, replace_done: bool) -> int | None:
    """Insert or replace the job's row; its id, or None when a done row was kept. ON CONFLICT
    (not select-then-insert) so that concurrent writers of one job on PostgreSQL wait for each
    other instead of raising IntegrityError."""
    stmt = _insert(conn, evaluations_table).values(**_key_values(key), **fields, created=fields["updated"])
    stmt = stmt.on_conflict_do_update(
        index_elements=list(KEY_COLUMNS), set_={name: stmt.excluded[name] for name in fields},
        where=None if replace_done else evaluations_table.c.status != "done",
    ).returning(evaluations_table.c.id)
    return conn.scalar(stmt)


def _filters(columns, **wanted) -> Iterator:
    return (columns[name] == value for name, value in wanted.items() if value is not None)


def _public(mapping) -> dict:
    """A row as the API shows it: label_fraction as a float, no internal ids."""
    hidden = (*KEY_COLUMNS, "id", "evaluation_id")
    return {**_row_key(mapping)._asdict(), **{k: v for k, v in mapping.items() if k not in hidden}}


def _insert(bind, table: sa.Table):
    """The dialect's INSERT, which has ON CONFLICT on both SQLite and PostgreSQL."""
    dialect = bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)

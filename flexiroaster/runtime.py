"""The runtime: the one process that owns the store, runs the engine and seeds the sample pipelines."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .airflow_link import AirflowLink
from .alerts import Alerts
from .engine import Engine
from .errors import Conflict, FlexiError
from .external import ExternalRuns
from .metrics import ProcessMeter
from .records import ExecutionRecord, PipelineRecord, now
from .retention import Retention
from .review import Review
from .scheduler import Scheduler
from .settings import Settings
from .spec import Pipeline, load_pipeline_text
from .store import Store

log = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    record: PipelineRecord
    pipeline: Pipeline


class Runtime:
    """Opens the store (recovering interrupted runs) and the engine; closes both cleanly."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = now):
        # httpx logs every request's full URL at INFO; a webhook connection's URL is a secret.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.settings = settings
        self.store = Store(settings.store_file, flush_interval=settings.log_flush_interval)
        self.engine = Engine(self.store, settings)
        self.variables = self.engine.variables  # variables and secrets (encrypted at rest)
        self.connections = self.engine.connections  # postgres/http/smtp/webhook, secrets encrypted
        # Schedules are loaded here; they fire once start() is called (the serving runtime).
        self.scheduler = Scheduler(self, clock)
        # Alert rules judge finished runs and missed schedules once start() is called.
        self.alerts = Alerts(self)
        # Insights and their review: recomputed in the background once start() is called.
        self.review = Review(self)
        # Airflow's trigger and task callbacks: its credentials and replay memory.
        self.airflow = AirflowLink(self)
        self.external = ExternalRuns(self)  # runs whose stages Airflow tasks execute
        # Old finished runs pruned in the background once start() is called (retention_days).
        self.retention = Retention(self)
        self.started_at = time.time()
        self.meter = ProcessMeter()
        self.closed = False
        # Parsed pipelines by id, with the stored version they came from: parsed once per save.
        self._parsed: dict[str, tuple[PipelineRecord, Pipeline]] = {}
        if self.store.created:
            self.seed()

    def seed(self) -> list[str]:
        """Load DATA_DIR/pipelines/*.yaml into the store (done on the store's first start)."""
        loaded = []
        folder = self.settings.pipelines_dir
        for path in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
            try:
                self.save_pipeline(path.read_text(encoding="utf-8"), str(path))
                loaded.append(path.name)
            except FlexiError as exc:
                log.warning("sample %s not loaded: %s", path, exc)
        log.info("loaded %d sample pipeline(s) from %s", len(loaded), folder)
        return loaded

    def save_pipeline(
        self,
        text: str,
        source: str = "<request>",
        pipeline_id: str | None = None,
        *,
        new: bool = False,
    ) -> LoadedPipeline:
        """Validate pipeline text and store it as a new version (`new`: refuse an existing id)."""
        pipeline = load_pipeline_text(
            text, source, data_dir=self.settings.data_dir, roots=self.settings.path_roots
        )
        self.scheduler.check_yaml(pipeline.id, pipeline.name, pipeline.schedule)
        if new and self.store.has_pipeline(pipeline.id):
            raise Conflict(
                f"pipeline {pipeline.id!r} exists; PUT /api/v1/pipelines/{pipeline.id} saves a new version"
            )
        if pipeline_id is not None and pipeline.id != pipeline_id:
            raise Conflict(
                f"the body names pipeline {pipeline.name!r} (id {pipeline.id!r}), not {pipeline_id!r};"
                " renaming is not supported"
            )
        rec = self.store.save_pipeline(pipeline.id, pipeline.name, pipeline.description, text)
        self.store.audit(
            "seed" if source.endswith((".yaml", ".yml")) and self.store.created else "api",
            "pipeline.create" if rec.version == 1 else "pipeline.update",
            "pipeline",
            pipeline.id,
            {"version": rec.version, "source": source},
        )
        self.scheduler.sync_pipeline(pipeline.id, pipeline.name, pipeline.schedule)
        return LoadedPipeline(rec, pipeline)

    def delete_pipeline(self, pipeline_id: str) -> list[str]:
        """Forget a pipeline (refused while it has active runs) and its schedules; its runs stay.
        Returns the ids of the schedules deleted with it."""
        active = self.active_runs(pipeline_id)
        if active:
            raise Conflict(
                f"pipeline {pipeline_id!r} has {len(active)} active run(s) ({', '.join(active[:5])});"
                " cancel them first"
            )
        self.store.delete_pipeline(pipeline_id)
        gone = self.scheduler.forget_pipeline(pipeline_id)
        self.store.audit("api", "pipeline.delete", "pipeline", pipeline_id, {"schedules": gone})
        return gone

    def get_pipeline(self, pipeline_id: str) -> LoadedPipeline:
        rec = self.store.get_pipeline(pipeline_id)
        hit = self._parsed.get(pipeline_id)
        if hit is None or hit[0] is not rec:
            hit = self._parsed[pipeline_id] = (
                rec,
                load_pipeline_text(rec.spec_yaml, f"pipeline {pipeline_id}"),
            )
        return LoadedPipeline(rec, hit[1])

    def trigger(
        self,
        pipeline_id: str,
        params: dict | None = None,
        trigger: str = "api",
        scheduled_for: datetime | None = None,
        lineage: dict | None = None,
    ) -> ExecutionRecord:
        """Start a run (or queue it); the risk gate, when on, holds it instead."""
        loaded = self.get_pipeline(pipeline_id)
        held = self.review.gate(pipeline_id)
        rec = self.engine.submit(
            loaded.pipeline, params or {}, trigger=trigger, scheduled_for=scheduled_for,
            held=held is not None, lineage=lineage,
        )  # fmt: skip
        return self._audit_hold(rec, held)

    async def trigger_async(
        self, pipeline_id: str, params: dict | None = None, trigger: str = "api"
    ) -> ExecutionRecord:
        """trigger() for the API's event loop: no thread is held while the run is committed."""
        loaded = self.get_pipeline(pipeline_id)
        held = self.review.gate(pipeline_id)
        rec = await self.engine.submit_async(
            loaded.pipeline, params or {}, trigger=trigger, held=held is not None
        )
        return self._audit_hold(rec, held)

    def _audit_hold(self, rec: ExecutionRecord, insight: dict | None) -> ExecutionRecord:
        if insight is not None:
            self.store.audit(
                f"ai:{insight['model_version']}", "run.hold", "run", rec.id,
                {"pipeline_id": rec.pipeline_id, "insight_id": insight["id"],
                 "probability": insight["data"].get("probability"),
                 "confidence": insight["confidence"], "input_hash": insight["input_hash"],
                 "model_version": insight["model_version"]},
            )  # fmt: skip
            self.engine.log_held(rec, insight["title"])
        return rec

    def start_external(self, pipeline_id: str, params: dict, lineage: dict) -> ExecutionRecord:
        """A run whose stages Airflow tasks execute (see external.py)."""
        return self.external.start(pipeline_id, params, lineage)

    def external_stage(self, execution_id: str, stage_id: str, state: str, **kw) -> ExecutionRecord:
        """Apply an Airflow task's state to its stage of an external run (see external.py)."""
        return self.external.report(execution_id, stage_id, state, **kw)

    def release(self, execution_id: str, by: str, reason: str | None = None) -> ExecutionRecord:
        """Let a run the risk gate held start; audited with who and why."""
        rec = self.engine.release(execution_id)
        self.store.audit(
            by,
            "run.release",
            "run",
            execution_id,
            {"pipeline_id": rec.pipeline_id, "reason": reason},
        )
        return rec

    def active_runs(self, pipeline_id: str | None = None) -> list[str]:
        ids = self.engine.active()
        if pipeline_id is None:
            return ids
        return [i for i in ids if self.engine.pipeline_of(i) == pipeline_id]

    def start(self) -> None:
        """Start firing schedules (the serving runtime; a CLI run leaves them alone)."""
        self.alerts.start()  # before the scheduler, so it sees fire times missed while down
        if not self.scheduler.running:
            self.scheduler.start()
        self.review.start()
        self.retention.start()

    def close(self) -> None:
        """Cancel running runs (recorded as cancelled), then close the store."""
        if self.closed:
            return
        self.closed = True
        self.scheduler.shutdown()
        self.retention.stop()
        self.alerts.close()
        self.review.stop()
        self.engine.shutdown()
        self.store.close()

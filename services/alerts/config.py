"""The ``alerts`` section of the config file."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from services.alerts.events import check_params
from services.alerts.params import parse
from shared.config import Duration, Endpoint, Port
from shared.constants import PORTS, tcp

Frequency = Literal["once", "once_per_bar", "once_per_bar_close", "every"]
Kind = Literal["price_cross", "percent_move", "zone_event", "order_flow", "python"]
# "bucket": run by the workers at bucket boundaries, if the universe moved (seed 004);
# "event": price_cross and zone_event checked by the service on each message, alerts sent at once
Trigger = Literal["bucket", "event"]


class StrategyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One strategy: what it watches (universe), how often it runs (bucket), what it checks (kind)."""

    id: str
    kind: Kind
    trigger: Trigger = "bucket"
    bucket: Duration = Duration(60.0)
    # Tickers ("pm.123", "dex.0xabc"), glob patterns ("pm.*"), or the single word "discover":
    # start with every ticker, then narrow to the used_symbols its results report.
    universe: list[str] | Literal["discover"] = "discover"
    params: dict[str, Any] = {}
    function: str = ""  # kind "python": "package.module:function"
    frequency: Frequency = "every"
    repeat_interval: Duration = Duration(0.0)  # "every": re-fire a still-firing alert at most this often
    bar: Duration = Duration(0.0)  # bar for the once_per_bar* options (0: the bucket)
    flow_window: Duration = Duration(60.0)  # kind "order_flow": the metrics window

    def __post_init__(self) -> None:
        if not self.id or "." in self.id:
            raise ValueError(
                f"strategy id must be non-empty and without dots (it is a topic part): {self.id!r}"
            )
        if self.bucket <= 0:
            raise ValueError(f"strategy {self.id}: bucket must be > 0")
        if self.kind == "python" and ":" not in self.function:
            raise ValueError(f"strategy {self.id}: kind python needs function: 'module:function'")
        if self.trigger == "event":
            if self.frequency == "once_per_bar_close":
                raise ValueError(f"strategy {self.id}: once_per_bar_close needs bar closes (trigger: bucket)")
            try:
                check_params(self.kind, self.params)
            except ValueError as exc:
                raise ValueError(f"strategy {self.id} (trigger: event): {exc}") from None
        elif self.kind != "python":
            try:  # the built-ins' params are checked here, not at the first job
                parse(self.kind, self.params)
            except ValueError as exc:
                raise ValueError(f"strategy {self.id}: {exc}") from None


class AlertsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Inputs: every publisher of px.*, md.trade.*, dex.swap.*, zone.*
    sub: list[Endpoint] = msgspec.field(
        default_factory=lambda: [tcp("ingest", "pub"), tcp("sync", "pub"), tcp("registry", "pub")]
    )
    pub: Endpoint = tcp("alerts", "pub")
    jobs: Endpoint = tcp("alerts", "jobs")  # ventilator PUSH (bound)
    results: Endpoint = tcp("alerts", "results")  # sink PULL (bound)
    metrics_port: Port = PORTS["alerts"]["metrics"]
    metrics_host: str = "127.0.0.1"
    # `python -m services.alerts.worker` (supervising alerts.workers) serves its workers' exits here
    worker_metrics_port: Port = 9106

    store: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: str = ""  # default: <common.data_dir>/alerts.sqlite3
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = ""  # key prefix, to share one Redis between deployments
    large_universe: int = 1000  # Redis: universes above this many tickers intersect server-side (Lua)

    # Worker processes to run and keep running: by this service (spawn_workers), or by
    # `python -m services.alerts.worker` (a Procfile line) when spawn_workers is false.
    # 0: nobody supervises any; single workers (`--name`, e.g. containers) connect on their own.
    workers: int = msgspec.field(default=2)
    spawn_workers: bool = True
    job_timeout: Duration = Duration(10.0)  # a job without a result after this long is retried once
    max_in_flight: int = 1000  # jobs pushed and not answered; more wait in the ventilator's queue
    # Redis: an instance's pending jobs are adopted by another (or its restart) when it has not renewed
    # its lease for this long (it renews every fifth of it); longer than any stall of its event loop.
    job_lease: Duration = Duration(10.0)

    retention: Duration = Duration(90 * 86400.0)  # ticker updates older than this are cleaned up
    cleanup_first: Duration = Duration(3600.0)
    cleanup_every: Duration = Duration(86400.0)
    summary_every: Duration = Duration(300.0)
    flush_every: Duration = Duration(0.25)  # ticker updates are batched into the store this often
    # Inputs are bucketed by their event time; bucket B is evaluated once the inputs' event time
    # (or the wall clock, while they arrive in real time) passes B plus this. Later inputs for it
    # are counted as late (poolwire_alerts_late_inputs_total), never put into the next bar.
    allowed_lateness: Duration = Duration(1.0)

    flow_cache_ttl: Duration = Duration(5.0)
    flow_cache_size: int = 4096
    flow_tick_buffer: int = 1000
    flow_delta_history: int = 200
    flow_cvd_history: int = 400
    # zone events kept per ticker per open bar (a flood guard; more are counted and dropped)
    max_zone_events: int = 64

    strategies: list[StrategyConfig] = []

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.job_timeout <= 0:
            raise ValueError("job_timeout must be > 0")
        if self.job_lease <= 0:
            raise ValueError("job_lease must be > 0")
        for key in ("flow_tick_buffer", "flow_delta_history", "flow_cvd_history", "flow_cache_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")
        if self.max_zone_events < 1:
            raise ValueError("max_zone_events must be >= 1")
        seen: set[str] = set()
        for s in self.strategies:
            if s.id in seen:
                raise ValueError(f"duplicate strategy id {s.id!r}")
            seen.add(s.id)

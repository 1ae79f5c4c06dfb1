"""``python -m services.alerts --config FILE``."""

from services.alerts.config import AlertsConfig
from services.alerts.service import main
from shared.runner import run

raise SystemExit(run("alerts", AlertsConfig, main))

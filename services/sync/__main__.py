from services.sync.config import SyncConfig
from services.sync.service import main
from shared.runner import run

raise SystemExit(run("sync", SyncConfig, main))

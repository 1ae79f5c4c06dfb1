from services.registry.config import RegistryConfig
from services.registry.service import main
from shared.runner import run

raise SystemExit(run("registry", RegistryConfig, main))

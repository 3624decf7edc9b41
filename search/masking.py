"""Keep secrets out of everything logged, written or printed: URIs with passwords are masked."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

def mask_uri(uri: str | None) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; other URIs unchanged."""
    if not uri:
        return ""
    return re.sub(r"(://[^/:@]+):[^@/]*@", r"\1:***@", str(uri))


SECRET_URIS = ("optuna_storage", "mlflow_uri", "artifact_location")  # keys under `tracking:` that may hold a password


def safe_container(cfg: DictConfig) -> dict:
    """The resolved config as plain data with passwords in the tracking URIs masked: safe to store anywhere."""
    data = OmegaConf.to_container(cfg, resolve=True)
    tracking = data.get("tracking") if isinstance(data, dict) else None
    for key in SECRET_URIS if isinstance(tracking, dict) else ():
        if tracking.get(key):
            tracking[key] = mask_uri(tracking[key])
    return data


def to_yaml(cfg: DictConfig) -> str:
    """`safe_container` as YAML: what is logged to MLflow or written to disk."""
    return OmegaConf.to_yaml(safe_container(cfg))

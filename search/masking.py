"""Keep secrets out of everything logged, written or printed.

Passwords in tracking URIs are masked wherever a URI is shown (`mask_uri`), and left out of
a config written for reuse (`to_yaml(..., omit_secrets=True)`, e.g. `best.yaml`), so a file
never holds a password, nor a `***` that would later be used as one.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

SECRET_URIS = ("optuna_storage", "mlflow_uri", "artifact_location")  # keys under `tracking:` that may hold a password
SECRET_QUERY_KEYS = ("password", "passwd", "pwd")  # e.g. postgresql://u@host/db?password=...
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")  # a URI inside free text, e.g. an error message
_QUERY_SECRET = re.compile(rf"(?i)([?&](?:{'|'.join(SECRET_QUERY_KEYS)})=)[^&#]*")


def mask_uri(text: str | None) -> str:
    """Mask the password of every URI in `text`: `postgresql://user:s/e@c:r@host/db` -> `postgresql://user:***@host/db`.

    Works on a whole URI or on free text that contains some (error messages). Text without a
    password is returned unchanged.
    """
    if not text:
        return ""
    return _URI.sub(lambda m: _mask_one(m.group(0)), str(text))


def has_secret(uri: str | None) -> bool:
    """Whether a URI carries a password (in its user info or a `?password=` parameter)."""
    return bool(uri) and mask_uri(uri) != str(uri)


def _mask_one(uri: str) -> str:
    """SQLAlchemy's URL parser finds the password (it may hold `/`, `:` and `?`); an unescaped `@` in it
    makes the parser take the rest for the host, so the host is what follows the last `@`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):  # e.g. several hosts (h1:5432,h2:5433): mask up to the last `@`
        masked = re.sub(r"^([^:]+://[^:/@]*):.*@", r"\1:***@", uri)
    else:
        if url.password is None:
            masked = uri
        else:
            masked = url.set(host=(url.host or "").rpartition("@")[2] or None).render_as_string(hide_password=True)
    return _QUERY_SECRET.sub(r"\1***", masked)


def safe_container(cfg: DictConfig, omit_secrets: bool = False) -> dict:
    """The resolved config as plain data with the tracking URIs' passwords masked: safe to store anywhere.

    With `omit_secrets`, a tracking URI that holds a password is left out instead, so a config
    written for reuse (`best.yaml`) takes it from the current `tracking.*` or the environment
    (`CONVSWEEP_OPTUNA_STORAGE`, `CONVSWEEP_MLFLOW_URI`, `CONVSWEEP_ARTIFACT_LOCATION`) when it runs.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    tracking = data.get("tracking") if isinstance(data, dict) else None
    for key in SECRET_URIS if isinstance(tracking, dict) else ():
        if not has_secret(tracking.get(key)):
            continue
        if omit_secrets:
            del tracking[key]
        else:
            tracking[key] = mask_uri(tracking[key])
    return data


def to_yaml(cfg: DictConfig, omit_secrets: bool = False) -> str:
    """`safe_container` as YAML: what is logged to MLflow or written to disk."""
    return OmegaConf.to_yaml(safe_container(cfg, omit_secrets))

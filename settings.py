"""The one module that reads the environment: every setting, its default and its valid form."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


def _form(description: str, **constraints: Any) -> Any:
    return Field(description=description, **constraints)


class Settings(BaseSettings):
    """Inference Studio worker settings, read from the environment."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: Annotated[
        str | None,
        _form("a PostgreSQL URL such as postgresql://user:pass@host:5432/db", default=None),
    ]
    embedded_pg_dir: Annotated[
        Path,
        _form("a folder for the embedded PostgreSQL data", default=PROJECT_DIR / ".studio" / "pgdata"),
    ]
    s3_endpoint_url: Annotated[
        str | None, _form("an http(s) URL of an S3-compatible server", default=None)
    ]
    s3_bucket: Annotated[str, _form("an S3 bucket name", default="inference-studio", min_length=3)]
    aws_access_key_id: Annotated[str | None, _form("an access key id", default=None)]
    aws_secret_access_key: Annotated[SecretStr | None, _form("a secret key", default=None)]
    aws_region: Annotated[
        str, _form("an AWS region name", default="us-east-1", validation_alias=_env(
            "AWS_REGION", "AWS_DEFAULT_REGION"))
    ]
    ray_address: Annotated[str | None, _form("a Ray address such as http://host:8265", default=None)]
    resend_api_key: Annotated[SecretStr | None, _form("a Resend API key (re_...)", default=None)]
    resend_api_url: Annotated[
        str, _form("an http(s) URL of the Resend API", default="https://api.resend.com")
    ]
    email_from: Annotated[
        str, _form("a sender such as 'Studio <noreply@example.com>'",
                   default="Inference Studio <noreply@inference.studio>")
    ]
    studio_url: Annotated[
        str, _form("the http(s) URL of the Studio web app", default="http://localhost:3000")
    ]
    worker_concurrency: Annotated[
        int,
        _form("an integer from 1 to 256 (jobs run at once per worker process)", default=5,
              ge=1, le=256,
              validation_alias=_env("WORKER_CONCURRENCY", "GRAPHILE_WORKER_CONCURRENCY")),
    ]
    worker_poll_interval: Annotated[
        int,
        _form("an integer number of milliseconds from 10 to 60000", default=1000, ge=10, le=60_000,
              validation_alias=_env("WORKER_POLL_INTERVAL", "GRAPHILE_WORKER_POLL_INTERVAL")),
    ]
    worker_heartbeat_ttl_s: Annotated[
        float,
        _form("seconds from 3 to 3600 after which a silent worker's jobs are redelivered",
              default=10.0, ge=3, le=3600),
    ]
    job_retention_days: Annotated[
        float, _form("a number of days greater than 0", default=7.0, gt=0)
    ]
    job_max_retries: Annotated[
        int, _form("an integer from 0 to 100", default=5, ge=0, le=100)
    ]
    job_time_limit_s: Annotated[
        int, _form("an integer number of seconds from 1 to 86400", default=600, ge=1, le=86_400)
    ]
    sync_interval_s: Annotated[
        int, _form("an integer number of seconds from 10 to 86400", default=300, ge=10, le=86_400)
    ]
    admin_username: Annotated[str, _form("a user name", default="admin", min_length=1)]
    admin_password: Annotated[SecretStr | None, _form("a password", default=None)]
    secret_key: Annotated[
        SecretStr | None,
        _form("a secret of at least 32 characters (encrypts stored Langfuse keys)", default=None),
    ]

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("not a postgresql:// URL")
        return value or None

    @field_validator("s3_endpoint_url", "resend_api_url", "studio_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("not an http(s) URL")
        return value or None

    @field_validator("secret_key")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("shorter than 32 characters")
        return value

    @property
    def poll_interval_s(self) -> float:
        """The broker poll interval in seconds."""
        return self.worker_poll_interval / 1000


class SettingsError(SystemExit):
    """The environment holds an invalid setting; the message names the variable."""


def _variable_name(field: str) -> str:
    """The environment variable the user set for a field (an alias when that one is set)."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    names = [str(c) for c in alias.choices] if isinstance(alias, AliasChoices) else [field]
    set_names = [n for n in names if n.upper() in {k.upper() for k in os.environ}]
    return (set_names or names)[0].upper()


def describe_errors(error: ValidationError) -> list[str]:
    """One line per invalid variable: its name, the value given and the expected form."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]).lower() if item["loc"] else ""
        field = next((f for f in Settings.model_fields if f == field or
                      field in _aliases(f)), field)
        form = Settings.model_fields[field].description if field in Settings.model_fields else ""
        value = item.get("input")
        shown = "***" if "SECRET" in field.upper() or "PASSWORD" in field.upper() else value
        lines.append(f"invalid setting {_variable_name(field)}={shown!r}: expected {form}")
    return lines


def _aliases(field: str) -> set[str]:
    alias = Settings.model_fields[field].validation_alias
    return {str(c).lower() for c in alias.choices} if isinstance(alias, AliasChoices) else set()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings; an invalid value stops the process with exit code 2."""
    try:
        return Settings()
    except ValidationError as error:
        print("\n".join(describe_errors(error)), file=sys.stderr)
        raise SettingsError(2) from None

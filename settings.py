"""The one module that reads the environment: every setting, its default and its valid form."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


class Settings(BaseSettings):
    """Inference Studio worker settings, read from the environment."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: str | None = Field(
        None, description="a PostgreSQL URL such as postgresql://user:pass@host:5432/db")
    embedded_pg_dir: Path = Field(
        PROJECT_DIR / ".studio" / "pgdata", description="a folder for the embedded PostgreSQL data")
    s3_endpoint_url: str | None = Field(None, description="an http(s) URL of an S3-compatible server")
    s3_bucket: str = Field("inference-studio", min_length=3, description="an S3 bucket name")
    aws_access_key_id: str | None = Field(None, description="an access key id")
    aws_secret_access_key: SecretStr | None = Field(None, description="a secret key")
    aws_region: str = Field("us-east-1", validation_alias=_env("AWS_REGION", "AWS_DEFAULT_REGION"),
                            description="an AWS region name")
    ray_address: str | None = Field(None, description="a Ray address such as http://host:8265")
    resend_api_key: SecretStr | None = Field(None, description="a Resend API key (re_...)")
    resend_api_url: str = Field("https://api.resend.com", description="an http(s) URL of the Resend API")
    email_from: str = Field("Inference Studio <noreply@inference.studio>",
                            description="a sender such as 'Studio <noreply@example.com>'")
    studio_url: str = Field("http://localhost:3000", description="the http(s) URL of the Studio web app")
    worker_concurrency: int = Field(
        5, ge=1, le=256, validation_alias=_env("WORKER_CONCURRENCY", "GRAPHILE_WORKER_CONCURRENCY"),
        description="an integer from 1 to 256 (jobs run at once per worker process)")
    worker_poll_interval: int = Field(
        1000, ge=10, le=60_000,
        validation_alias=_env("WORKER_POLL_INTERVAL", "GRAPHILE_WORKER_POLL_INTERVAL"),
        description="an integer number of milliseconds from 10 to 60000")
    worker_heartbeat_ttl_s: float = Field(
        10.0, ge=3, le=3600,
        description="seconds from 3 to 3600 after which a silent worker's jobs are redelivered")
    job_retention_days: float = Field(7.0, gt=0, description="a number of days greater than 0")
    job_max_retries: int = Field(10, ge=0, le=100, description="an integer from 0 to 100")
    job_time_limit_s: int = Field(600, ge=1, le=86_400,
                                  description="an integer number of seconds from 1 to 86400")
    sync_interval_s: int = Field(300, ge=10, le=86_400,
                                 description="an integer number of seconds from 10 to 86400")
    admin_username: str = Field("admin", min_length=1, description="a user name")
    admin_password: SecretStr | None = Field(None, description="a password")
    secret_key: SecretStr | None = Field(
        None, description="a secret of at least 32 characters (encrypts stored Langfuse keys)")

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


def _names(field: str) -> list[str]:
    """The environment variables that set a field, preferred first."""
    alias = Settings.model_fields[field].validation_alias
    return [str(c).upper() for c in alias.choices] if isinstance(alias, AliasChoices) else [field.upper()]


def _field_of(location: str) -> str:
    return next(f for f in Settings.model_fields if location.upper() in _names(f))


def describe_errors(error: ValidationError) -> list[str]:
    """One line per invalid variable: the name the user set, the value and the expected form."""
    lines = []
    for item in error.errors():
        field = _field_of(str(item["loc"][0]))
        name = next((n for n in _names(field) if n in {k.upper() for k in os.environ}), _names(field)[0])
        secret = Settings.model_fields[field].annotation == SecretStr | None
        shown = "***" if secret else item.get("input")
        lines.append(f"invalid setting {name}={shown!r}: expected "
                     f"{Settings.model_fields[field].description}")
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process settings; an invalid value stops the process with exit code 2."""
    try:
        return Settings()
    except ValidationError as error:
        print("\n".join(describe_errors(error)), file=sys.stderr)
        raise SettingsError(2) from None

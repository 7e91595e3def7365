"""Where an HPO study lives: SQLite under the study dir, or a database URL shared by workers.

SQLAlchemy reports a malformed URL, an unknown dialect, a missing driver and an
unreachable server with as many exception types, each with a traceback; a user gets one
sentence (``StorageError``, exit 2) that names the URL with its password hidden.
"""

from __future__ import annotations

import warnings
from typing import Any

from ris_model.config import ConfigError

HEARTBEAT_S, GRACE_S = 5, 15  # a trial whose worker is silent for GRACE_S is failed
CONNECT_TIMEOUT_S = 10  # a server that does not answer is an error, not a hang
EXAMPLE = "use e.g. postgresql://user:password@host/db or sqlite:///path/study.db"
# how to get the drivers SQLAlchemy loads for a plain postgresql:// (psycopg from SQLAlchemy 2.1 on,
# psycopg2 before) or mysql:// URL
DRIVER_HINTS = {
    "psycopg": "pip install 'ris-health[postgres]'",
    "psycopg2": "pip install psycopg2-binary, or 'ris-health[postgres]' and a postgresql+psycopg:// URL",
    "mysqldb": "pip install mysqlclient, or PyMySQL with a mysql+pymysql:// URL",
}
NETWORK_BACKENDS = ("postgresql", "mysql")


class StorageError(ConfigError):
    """The study storage cannot be opened: a bad URL, a missing driver, an unreachable server."""


def shown_url(url: str) -> str:
    """The storage URL with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return url


def driver_words(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's SQL echo and background link."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__).rstrip(".")


def make_storage(url: str) -> Any:
    """An optuna RDB storage with heartbeats on ``url``, or a StorageError saying what is wrong.

    IntegrityError and OperationalError pass through: workers starting together race to
    create the tables (and SQLite's lock), so the caller retries before giving up with a
    StorageError.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, SQLAlchemyError

    shown = shown_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"--storage {shown!r} is not a database URL; {EXAMPLE}") from None
    backend = parsed.get_backend_name()
    try:
        driver = parsed.get_driver_name()
    except NoSuchModuleError:
        raise StorageError(f"--storage {shown!r}: SQLAlchemy knows no database called {parsed.drivername!r}; "
                           f"{EXAMPLE}") from None
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args = {"timeout": 60}  # workers on one file wait for its lock
    elif backend in NETWORK_BACKENDS:
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in optuna, and what workers rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, engine_kwargs={"connect_args": connect_args}
            )
    except ImportError:
        how = DRIVER_HINTS.get(driver, f"install the {driver} package")
        raise StorageError(f"--storage {shown!r} needs the {backend} driver {driver}, which is not installed: "
                           f"{how}") from None
    except ArgumentError as exc:
        raise StorageError(f"--storage {shown!r}: {driver_words(exc)}; {EXAMPLE}") from None
    except (IntegrityError, OperationalError):
        raise  # maybe a race with a worker creating the same tables: the caller tries again
    except SQLAlchemyError as exc:  # unreachable server, refused login, missing database, unwritable file
        raise StorageError(f"cannot open the study storage {shown!r}: {driver_words(exc)}") from None
    except RuntimeError as exc:  # optuna: tables written by an incompatible optuna version
        raise StorageError(f"cannot use the study storage {shown!r}: {driver_words(exc)}") from None

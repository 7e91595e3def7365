"""Where events go once the monitor has decided on them.

A sink is any object with ``emit(event, action)`` and ``close()``; the monitor calls
``emit`` for every event it lets through (``action`` is what the policy decided: record,
warn, stop or prune) and ``close`` once at the end. A sink decides what to show: the
run-dir file keeps everything, the console shows only what the policy wants a person to
see. Sinks for optional services (W&B, optuna) import them only when constructed and
never let a failure of the service reach the training loop.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol

from .events import HealthEvent, HealthLogWriter, Severity

HEALTH_FILE = "health.jsonl"


class Sink(Protocol):
    def emit(self, event: HealthEvent, action: str) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Every event, whatever its action, appended to health.jsonl (fsynced per event)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, HEALTH_FILE)
        self.writer = HealthLogWriter(path)
        self.path = self.writer.path

    def emit(self, event: HealthEvent, action: str) -> None:
        self.writer.write(event)

    def close(self) -> None:
        self.writer.close()


_STYLE = {
    Severity.INFO: "dim",
    Severity.WARNING: "yellow",
    Severity.ERROR: "bold red",
    Severity.CRITICAL: "bold white on red",
}


class ConsoleSink:
    """One concise coloured line per event the policy wants seen (warn, stop, prune):
    severity, code, where, step, title, hint. Writes to stderr so stdout stays the loop's."""

    def __init__(self, console: Any = None, *, show_summary: bool = True) -> None:
        if console is None:
            from rich.console import Console

            console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.console = console
        self.show_summary = show_summary

    def emit(self, event: HealthEvent, action: str) -> None:
        from rich.markup import escape

        if event.code == "monitor.summary":
            if self.show_summary and any(event.evidence.get(str(s), 0) for s in Severity if s >= Severity.WARNING):
                self.console.print(f"[bold]health:[/] {escape(event.title)}")
            return
        if action == "record":
            return
        sev = str(event.severity).upper()
        where = f" @{escape(event.where)}" if event.where else ""
        when = f" step {event.step}" if event.step is not None else ""
        times = f" ×{event.count}" if event.count > 1 else ""
        verdict = {"stop": " [bold]→ stopping[/]", "prune": " [bold]→ pruning trial[/]"}.get(action, "")
        hint = f" [dim]— {escape(event.hint)}[/]" if event.hint else ""
        self.console.print(f"[{_STYLE[event.severity]}]{sev}[/] [bold]{escape(event.code)}[/]{where}"
                           f"{when}{times}: {escape(event.title)}{verdict}{hint}")

    def close(self) -> None:
        try:
            self.console.file.flush()
        except (AttributeError, ValueError):
            pass


class _Guarded:
    """Runs calls into an optional service; the first failure is reported, later ones
    are swallowed: a logging service must never stop a training run."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._warned = False

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not self._warned:
                self._warned = True
                warnings.warn(f"{self._name} call failed ({err!r}); health events still go to the "
                              "other sinks", RuntimeWarning, stacklevel=3)
            return None


class WandbSink:
    """Events into a W&B run: running ``health/<severity>`` counts, a ``health/events``
    table written at close, and ``run.alert`` for events at or above ``alert_at`` while
    the run is online (offline or disabled runs cannot alert).

    ``run`` defaults to the active ``wandb.run``; without one the sink does nothing.
    Counts are logged with ``commit=False``, so they join the row of the loop's next
    ``log`` call instead of advancing W&B's step counter behind the loop's back.
    """

    COLUMNS = ["step", "epoch", "severity", "code", "where", "title", "count", "action"]

    def __init__(self, run: Any = None, *, alert_at: Severity | str = Severity.ERROR,
                 alert_wait_s: float = 300.0) -> None:
        self._guard = _Guarded("W&B")
        self.alert_at = Severity.parse(alert_at)
        self.alert_wait_s = alert_wait_s
        self._rows: list[list[Any]] = []
        self._counts = {str(s): 0 for s in Severity}
        self._wandb = self._guard.call(_import, "wandb")
        if run is None and self._wandb is not None:
            run = getattr(self._wandb, "run", None)
        self.run = run

    @property
    def online(self) -> bool:
        run = self.run
        if run is None:
            return False
        return not (bool(getattr(run, "offline", True)) or bool(getattr(run, "disabled", False)))

    def emit(self, event: HealthEvent, action: str) -> None:
        if self.run is None or event.code == "monitor.summary":
            return
        self._counts[str(event.severity)] += 1
        self._rows.append([event.step, event.epoch, str(event.severity), event.code, event.where,
                           event.title, event.count, action])
        self._guard.call(self.run.log, {f"health/{k}": v for k, v in self._counts.items()}, commit=False)
        if event.severity >= self.alert_at and self.online and self._wandb is not None:
            level = getattr(self._wandb, "AlertLevel", None)
            lvl = None if level is None else (level.ERROR if event.severity >= Severity.ERROR else level.WARN)
            self._guard.call(self.run.alert, title=f"{event.code} @ {event.where or '-'}"[:64],
                             text=event.line(), level=lvl, wait_duration=self.alert_wait_s)

    def close(self) -> None:
        if self.run is None:
            return
        if self._rows and self._wandb is not None:
            table = self._guard.call(self._wandb.Table, columns=self.COLUMNS, data=self._rows)
            if table is not None:
                self._guard.call(self.run.log, {"health/events": table}, commit=False)
        summary = getattr(self.run, "summary", None)
        if summary is not None:
            for k, v in self._counts.items():
                self._guard.call(summary.__setitem__, f"health/{k}", v)


class OptunaSink:
    """Connects the monitor to an optuna trial.

    On a prune (or stop) decision it stores why on the trial (``health_prune_reason`` /
    ``health_stop_reason`` as a sentence, ``…_code`` as the event code), so the study shows
    why a trial ended; the monitor's ``should_prune`` is what the HPO loop acts on
    (``raise optuna.TrialPruned(monitor.stop_message)``). At close the event counts are
    stored as ``health_counts``. optuna itself is never imported here: the trial is handed in.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self._guard = _Guarded("optuna")
        self._stored: set[str] = set()

    def emit(self, event: HealthEvent, action: str) -> None:
        if event.code == "monitor.summary":
            self._guard.call(self.trial.set_user_attr, "health_counts", dict(event.evidence))
            return
        if action not in ("prune", "stop") or action in self._stored:
            return
        self._stored.add(action)
        self._guard.call(self.trial.set_user_attr, f"health_{action}_reason", event.line())
        self._guard.call(self.trial.set_user_attr, f"health_{action}_code", event.code)

    def close(self) -> None:
        pass


def _import(name: str) -> Any:
    import importlib

    return importlib.import_module(name)


def default_sinks(run_dir: str | os.PathLike | None = None, *, console: bool = True) -> list[Any]:
    """health.jsonl in ``run_dir`` (if given) and, if ``console``, the console."""
    sinks: list[Any] = []
    if run_dir is not None:
        sinks.append(JsonlSink(os.path.join(os.fspath(run_dir), HEALTH_FILE)))
    if console:
        sinks.append(ConsoleSink())
    return sinks


__all__ = ["ConsoleSink", "HEALTH_FILE", "JsonlSink", "OptunaSink", "Sink", "WandbSink", "default_sinks"]

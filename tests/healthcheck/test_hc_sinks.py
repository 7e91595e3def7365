from __future__ import annotations

import io

import pytest

from healthcheck.events import HealthEvent
from healthcheck.sinks import ConsoleSink, OptunaSink, WandbSink


def ev(code="grad.zero", severity="error", where="head", **over):
    fields = dict(code=code, severity=severity, step=3, time=0.0, title="title here", where=where, hint="fix it")
    fields.update(over)
    return HealthEvent(**fields)


def console():
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=200), buf


def test_console_prints_one_line_for_warn_and_stop_only():
    c, buf = console()
    sink = ConsoleSink(c)
    sink.emit(ev(severity="info"), "record")
    sink.emit(ev(), "warn")
    sink.emit(ev(code="grad.nonfinite", severity="critical", where="enc[0]"), "stop")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("ERROR grad.zero @head step 3") and "title here" in lines[0] and "fix it" in lines[0]
    assert "CRITICAL grad.nonfinite @enc[0]" in lines[1] and "stopping" in lines[1]


def test_console_summary_only_when_something_was_wrong():
    c, buf = console()
    sink = ConsoleSink(c)
    sink.emit(ev(code="monitor.summary", severity="info", title="0 events",
                 evidence={"info": 2, "warning": 0, "error": 0, "critical": 0}), "record")
    assert buf.getvalue() == ""
    sink.emit(ev(code="monitor.summary", severity="info", title="1 health event(s): 1 warning",
                 evidence={"info": 0, "warning": 1, "error": 0, "critical": 0}), "record")
    assert "1 warning" in buf.getvalue()


class FakeRun:
    def __init__(self, offline=False, fail=False):
        self.offline, self.disabled, self.fail = offline, False, fail
        self.logged, self.alerts, self.summary = [], [], {}

    def log(self, data, commit=True):
        if self.fail:
            raise ConnectionError("wandb down")
        self.logged.append((data, commit))

    def alert(self, **kw):
        self.alerts.append(kw)


def test_wandb_counts_table_and_alerts_only_online_for_errors():
    run = FakeRun()
    sink = WandbSink(run)
    sink.emit(ev(severity="warning"), "warn")
    sink.emit(ev(severity="error", code="lr.zero"), "warn")
    assert run.logged[-1] == ({"health/info": 0, "health/warning": 1, "health/error": 1, "health/critical": 0}, False)
    assert len(run.alerts) == 1 and run.alerts[0]["title"].startswith("lr.zero")
    sink.close()
    table = run.logged[-1][0]["health/events"]
    assert table.columns == WandbSink.COLUMNS and len(table.data) == 2
    assert run.summary["health/error"] == 1

    offline = FakeRun(offline=True)
    WandbSink(offline).emit(ev(severity="critical"), "stop")
    assert offline.alerts == [] and offline.logged


def test_wandb_failure_never_propagates():
    run = FakeRun(fail=True)
    sink = WandbSink(run)
    with pytest.warns(RuntimeWarning, match="wandb down"):
        sink.emit(ev(), "warn")
    sink.emit(ev(), "warn")  # second failure: silent
    sink.close()


def test_wandb_with_a_real_disabled_run():
    wandb = pytest.importorskip("wandb")
    run = wandb.init(mode="disabled")
    try:
        sink = WandbSink()
        assert sink.run is run and not sink.online
        sink.emit(ev(severity="critical"), "stop")
        sink.close()
    finally:
        run.finish()


def test_wandb_without_a_run_does_nothing():
    sink = WandbSink(run=None)
    sink.run = None
    sink.emit(ev(), "warn")
    sink.close()


def test_optuna_sink_stores_why_a_trial_was_pruned():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    trial = study.ask()
    sink = OptunaSink(trial)
    sink.emit(ev(), "warn")
    assert trial.user_attrs == {}
    sink.emit(ev(code="loss.diverging", where="total"), "prune")
    sink.emit(ev(code="lr.zero"), "prune")  # the first reason is kept
    sink.emit(ev(code="monitor.summary", severity="info", evidence={"error": 2}), "record")
    attrs = study.trials[0].user_attrs
    assert attrs["health_prune_code"] == "loss.diverging" and "loss.diverging @total" in attrs["health_prune_reason"]
    assert attrs["health_counts"] == {"error": 2}

"""What to do about an event: record it, warn, stop the run, or prune the HPO trial.

Detectors only report; the policy decides, per code and severity, and per context,
because the same finding deserves different handling in an interactive run (tell me) and
in an HPO sweep or the pre-HPO gate (don't spend compute on it). A user can also re-grade
a code (``loss.constant`` → error) or silence it outright. Every code a policy names must
exist: a typo in a policy would otherwise silently do nothing, the very failure this
harness exists to catch.

Resolution for an event's code: silence wins; then a re-grade changes the severity; the
action is taken from the most specific ``actions`` rule that matches the code (an exact
code beats a glob; a glob with more literal characters beats a shorter one), else from
the severity defaults for the context.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from .codes import CODES
from .events import HealthEvent, Severity

ACTIONS = ("record", "warn", "stop", "prune")
CONTEXTS = ("train", "hpo", "gate")
_GLOB = set("*?[")

# critical stops everywhere; error stops where compute is spent on many runs (HPO) or where
# the verdict is the point (gate), and warns in an interactive run; warning warns. In HPO
# "stop" takes the form of pruning the trial, so the study records why it ended.
DEFAULT_SEVERITY_ACTIONS: Mapping[Severity, Mapping[str, str]] = MappingProxyType({
    Severity.CRITICAL: MappingProxyType({"train": "stop", "hpo": "prune", "gate": "stop"}),
    Severity.ERROR: MappingProxyType({"train": "warn", "hpo": "prune", "gate": "stop"}),
    Severity.WARNING: MappingProxyType({"train": "warn", "hpo": "warn", "gate": "warn"}),
    Severity.INFO: MappingProxyType({"train": "record", "hpo": "record", "gate": "record"}),
})

ENV_SILENCE = "HEALTHCHECK_SILENCE"
ENV_REGRADE = "HEALTHCHECK_REGRADE"
ENV_POLICY = "HEALTHCHECK_POLICY"


class PolicyError(ValueError):
    """A policy names an unknown code, action, severity or context."""


def _choice(kind: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise PolicyError(f"{kind} must be one of {', '.join(choices)}, but got {value!r}")


def check_pattern(pattern: Any, where: str) -> str:
    """An exact registered code or a glob matching at least one; else an error naming the
    closest valid code."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PolicyError(f"{where}: an event code must be a non-empty string, but got {pattern!r}")
    pattern = pattern.strip()
    if _GLOB & set(pattern):
        if any(fnmatchcase(c, pattern) for c in CODES):
            return pattern
        problem = f"pattern {pattern!r} matches no event code"
    elif pattern in CODES:
        return pattern
    else:
        problem = f"unknown event code {pattern!r}"
    close = difflib.get_close_matches(pattern, list(CODES), n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid codes: {', '.join(sorted(CODES))}"
    raise PolicyError(f"{where}: {problem}{hint}")


def _specificity(pattern: str) -> int:
    return 10_000 if not (_GLOB & set(pattern)) else sum(ch not in _GLOB for ch in pattern)


def _best(code: str, rules: Mapping[str, Any]) -> Any:
    """Value of the most specific matching pattern (later rules win ties), or None."""
    best, best_rank = None, -1
    for pattern, value in rules.items():
        if fnmatchcase(code, pattern):
            rank = _specificity(pattern)
            if rank >= best_rank:
                best, best_rank = value, rank
    return best


class Policy:
    """Maps events to actions. Immutable after construction; see the module docstring.

    Args:
        actions: {code or glob: action}, e.g. ``{"grad.*": "stop", "val.plateau": "record"}``.
        severity: {severity: action or {context: action}} overriding the defaults.
        regrade: {code or glob: severity}.
        silence: codes or globs whose events are dropped (not even recorded).
    """

    def __init__(self, actions: Mapping[str, str] | None = None, *,
                 severity: Mapping[str, Any] | None = None,
                 regrade: Mapping[str, str] | None = None,
                 silence: Iterable[str] = ()) -> None:
        self.actions = {check_pattern(k, "actions"): _choice(f"action for {k!r}", v, ACTIONS)
                        for k, v in (actions or {}).items()}
        self.regrade = {check_pattern(k, "regrade"): Severity.parse(v) for k, v in (regrade or {}).items()}
        if isinstance(silence, str):
            silence = [s for s in silence.split(",") if s.strip()]
        self.silence = tuple(check_pattern(s, "silence") for s in silence)
        table = {s: dict(ctx) for s, ctx in DEFAULT_SEVERITY_ACTIONS.items()}
        for sev, spec in (severity or {}).items():
            s = Severity.parse(sev)
            if isinstance(spec, Mapping):
                for ctx, act in spec.items():
                    table[s][_choice("context", ctx, CONTEXTS)] = _choice(f"action for {sev}", act, ACTIONS)
            else:
                act = _choice(f"action for {sev}", spec, ACTIONS)
                table[s] = {ctx: act for ctx in CONTEXTS}
        self.severity_actions = table
        self._cache: dict[tuple[str, Severity, str], tuple[Severity | None, str]] = {}

    # -- decisions ----------------------------------------------------------------------
    def decide(self, code: str, severity: Severity, context: str = "train") -> tuple[Severity | None, str]:
        """(effective severity or None if silenced, action). Cached: called on hot paths."""
        key = (code, severity, context)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if context not in CONTEXTS:
            raise PolicyError(f"context must be one of {', '.join(CONTEXTS)}, but got {context!r}")
        if any(fnmatchcase(code, s) for s in self.silence):
            result: tuple[Severity | None, str] = (None, "record")
        else:
            sev = _best(code, self.regrade) or severity
            action = _best(code, self.actions) or self.severity_actions[sev][context]
            if action == "prune" and context != "hpo":
                action = "stop"  # outside a trial, the nearest thing to pruning is stopping
            result = (sev, action)
        self._cache[key] = result
        return result

    def apply(self, event: HealthEvent, context: str = "train") -> tuple[HealthEvent | None, str]:
        """The event as the policy sees it (re-graded, or None if silenced) and its action."""
        sev, action = self.decide(event.code, event.severity, context)
        if sev is None:
            return None, action
        return (event if sev == event.severity else event.with_(severity=sev)), action

    # -- construction -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "actions": dict(self.actions),
            "severity": {str(s): dict(c) for s, c in self.severity_actions.items()},
            "regrade": {k: str(v) for k, v in self.regrade.items()},
            "silence": list(self.silence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """From ``{"actions": …, "severity": …, "regrade": …, "silence": […]}``."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"a policy is a mapping, but got {type(data).__name__}")
        valid = ("actions", "severity", "regrade", "silence")
        unknown = [k for k in data if k not in valid]
        if unknown:
            raise PolicyError(f"unknown policy key(s) {unknown}; valid keys: {', '.join(valid)}")
        return cls(data.get("actions"), severity=data.get("severity"),
                   regrade=data.get("regrade"), silence=data.get("silence") or ())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """From a .toml, .yaml/.yml or .json file with the keys of `from_dict`."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".toml", ".yaml", ".yml", ".json"):
            raise PolicyError(f"policy file must end in .toml, .yaml, .yml or .json, but got {path!r}")
        with open(path, "rb") as fh:
            raw = fh.read()
        try:
            data = _parse_policy_text(raw, ext)
        except Exception as err:  # every parser's own error type, UnicodeDecodeError, RecursionError
            text = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise PolicyError(f"{path} is not a valid {ext[1:].upper()} policy file ({text})") from None
        try:
            return cls.from_dict(data)
        except PolicyError as err:
            raise PolicyError(f"{path}: {err}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: Policy | None = None) -> Policy:
        """``base`` (or the file named by HEALTHCHECK_POLICY, or the defaults) with
        HEALTHCHECK_SILENCE=code,… and HEALTHCHECK_REGRADE=code=severity,… layered on top."""
        env = os.environ if environ is None else environ
        if base is None:
            path = env.get(ENV_POLICY)
            base = cls.from_file(path) if path else cls()
        silence = [s.strip() for s in env.get(ENV_SILENCE, "").split(",") if s.strip()]
        regrade = {}
        for item in (s.strip() for s in env.get(ENV_REGRADE, "").split(",")):
            if not item:
                continue
            code, eq, sev = item.partition("=")
            if not eq:
                raise PolicyError(f"{ENV_REGRADE} items are code=severity, but got {item!r}")
            regrade[code.strip()] = sev.strip()
        if not silence and not regrade:
            return base
        try:
            return base.merged(cls(regrade=regrade, silence=silence))
        except (PolicyError, ValueError) as err:
            raise PolicyError(f"from {ENV_SILENCE}/{ENV_REGRADE}: {err}") from None

    def merged(self, other: Policy) -> Policy:
        """This policy with ``other``'s rules added on top (other wins on conflicts)."""
        sev = {str(s): dict(c) for s, c in self.severity_actions.items()}
        for s, c in other.severity_actions.items():
            if c != DEFAULT_SEVERITY_ACTIONS[s]:
                sev[str(s)] = dict(c)
        return Policy({**self.actions, **other.actions}, severity=sev,
                      regrade={**{k: str(v) for k, v in self.regrade.items()},
                               **{k: str(v) for k, v in other.regrade.items()}},
                      silence=tuple(dict.fromkeys(self.silence + other.silence)))

    def __repr__(self) -> str:
        return f"Policy({self.to_dict()!r})"


def _parse_policy_text(raw: bytes, ext: str) -> Any:
    """The document in a policy file's bytes; parsers' errors are the caller's to word."""
    if ext == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(raw.decode("utf-8"))
    if ext in (".yaml", ".yml"):
        import yaml
        return yaml.safe_load(raw) or {}
    return json.loads(raw)

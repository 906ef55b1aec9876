r"""``lifecycle k8s lint``: pod specs checked against the app's own shutdown budget.

General linters check that probes exist; this one checks that their numbers
fit the shutdown the app declares (the timeline is in `lifecycle._tools.k8s`).
It reads Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs
and bare Pods, from multi-document YAML and ``List`` objects, and reports per
container, with the resource, the field path, why, and the value to use.

Rules (``needs app``: checked only with ``--app``; without it the manifest and
the Kubernetes defaults are used — grace 30 s, probes every 10 s, 3 failures,
1 s timeout)::

    grace-period       grace < preStop + the app's shutdown budget (needs app;
                       without it: preStop alone uses the whole grace)
    readiness-missing  no readiness probe
    readiness-path     readiness on the liveness path, on /livez or /startupz,
                       or a TCP check: none of them turns 503 in the drain
    readiness-reaction period x failures + timeout longer than drain + preStop
                       (error) or than the drain alone (warning: /readyz is
                       still 200 during preStop) (needs app)
    no-prestop         no preStop while the app has no drain delay (needs app)
    liveness-drain     liveness on /readyz, which is 503 from SIGTERM on
    probe-path         a path the health endpoint does not serve (404)
    probe-port         a probe on another port than the health endpoint's, or
                       a named port the container does not declare
    health-loopback    the app's health endpoint listens on loopback only

Example::

    >>> from lifecycle._tools.lint import lint_text
    >>> report = lint_text("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}")
    >>> [f.rule for f in report.findings]
    ['readiness-missing']

Added in 0.2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Literal, TextIO

import attrs

from .._core.errors import ConfigError
from .._serving.health import PATHS
from .k8s import (
    ENDPOINT_WINDOW,
    GRACE_MARGIN,
    NoHealthEndpointError,
    Numbers,
    check_health,
    container_name,
    derive,
    start_budget,
)
from .plan import Plan, plan

__all__ = ["Finding", "LintError", "Report", "lint_documents", "lint_text", "main"]

Severity = Literal["error", "warning", "info"]

DEFAULT_GRACE: Final = 30
DEFAULT_PERIOD: Final = 10
DEFAULT_FAILURE: Final = 3
DEFAULT_TIMEOUT: Final = 1

NEEDS_APP: Final = ("grace-period", "readiness-reaction", "no-prestop", "probe-port")
"""Rules that need ``--app`` to be checked in full."""

_TEMPLATE_KINDS: Final = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
)
_LOOPBACK = ("127.", "localhost", "::1")


class LintError(ConfigError):
    """A manifest cannot be read: missing file, YAML error (with its line), no PyYAML."""


@attrs.frozen
class Finding:
    """One problem in one container (or pod) of one resource.

    ``path`` is the field path inside the document; ``fix`` the value to use.
    """

    rule: str
    severity: Severity
    source: str
    resource: str
    container: str
    path: str
    why: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """A JSON-ready form."""
        return attrs.asdict(self)

    def line(self) -> str:
        """One line of text: where, what, why and what to use."""
        return (
            f"{self.source}: {self.resource} container {self.container}: {self.severity} "
            f"[{self.rule}] {self.path}: {self.why}; use {self.fix}"
        )


@attrs.frozen
class Report:
    """What a lint found, and what it read."""

    findings: tuple[Finding, ...]
    resources: int
    containers: int
    needed_app: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    """``Kind/name container`` of the sidecars left out: containers of a pod with
    several, none of whose ports or probes is the health endpoint's."""

    @property
    def errors(self) -> int:
        """The number of error findings."""
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        """The number of warning findings."""
        return sum(f.severity == "warning" for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``--format json`` prints)."""
        return {
            "findings": [f.as_dict() for f in self.findings],
            "resources": self.resources,
            "containers": self.containers,
            "errors": self.errors,
            "warnings": self.warnings,
            "needed_app": list(self.needed_app),
            "skipped": list(self.skipped),
        }


@attrs.frozen
class _Target:
    """The app side of the comparison: its plan and the numbers derived from it."""

    plan: Plan
    numbers: Numbers
    port: int | None
    loopback: bool


@attrs.frozen
class _Pod:
    source: str
    resource: str
    spec: dict[str, Any]
    path: str
    serves: bool = True
    """Whether Services route to it: not for Jobs and CronJobs (no readiness rules)."""


def _yaml() -> Any:
    try:
        import yaml  # noqa: PLC0415 - an optional extra
    except ImportError:
        raise LintError(
            "lifecycle k8s lint reads YAML with PyYAML, which is not installed; "
            "pip install 'lifecycle[k8s]' (or pip install pyyaml)"
        ) from None
    return yaml


def _load(text: str, source: str) -> list[Any]:
    yaml = _yaml()
    try:
        return list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise LintError(
            f"{source}{where}: not valid YAML: {error.problem or error}; fix the manifest"
        ) from None
    except yaml.YAMLError as error:
        raise LintError(f"{source}: not valid YAML: {error}; fix the manifest") from None


def _pods(documents: Sequence[Any], source: str) -> Iterator[_Pod]:
    def walk(doc: Any, prefix: str) -> Iterator[_Pod]:
        if not isinstance(doc, dict):
            return
        kind = doc.get("kind")
        if kind == "List" or (isinstance(kind, str) and kind.endswith("List")):
            for i, item in enumerate(doc.get("items") or []):
                yield from walk(item, f"{prefix}items[{i}].")
            return
        name = (doc.get("metadata") or {}).get("name", "?")
        resource = f"{kind}/{name}"
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            return
        if kind == "Pod":
            yield _Pod(source, resource, spec, f"{prefix}spec")
        elif kind in _TEMPLATE_KINDS:
            pod = (spec.get("template") or {}).get("spec")
            if isinstance(pod, dict):
                path = f"{prefix}spec.template.spec"
                yield _Pod(source, resource, pod, path, serves=kind != "Job")
        elif kind == "CronJob":
            job = (spec.get("jobTemplate") or {}).get("spec") or {}
            pod = (job.get("template") or {}).get("spec")
            if isinstance(pod, dict):
                path = f"{prefix}spec.jobTemplate.spec.template.spec"
                yield _Pod(source, resource, pod, path, serves=False)

    for index, document in enumerate(documents):
        label = f"{source}#{index + 1}" if len(documents) > 1 else source
        for pod in walk(document, ""):
            yield attrs.evolve(pod, source=label)


def _number(value: object, default: float) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return default


_SLEEP = re.compile(r"^\s*(?:exec\s+)?sleep\s+(\d+(?:\.\d+)?)\s*s?\s*(?:[;&|].*)?$")


def _prestop(container: dict[str, Any]) -> float | None:
    """Seconds the container's preStop takes, 0.0 for a hook of unknown length, None for none."""
    hook = ((container.get("lifecycle") or {}).get("preStop")) or None
    if not isinstance(hook, dict):
        return None
    sleep = hook.get("sleep")
    if isinstance(sleep, dict):
        return _number(sleep.get("seconds"), 0.0)
    command = (hook.get("exec") or {}).get("command")
    if isinstance(command, list) and command:
        words = [str(w) for w in command]
        if words[0].rsplit("/", 1)[-1] == "sleep" and len(words) == 2:
            return _number(_float(words[1]), 0.0)
        if words[0].rsplit("/", 1)[-1] in ("sh", "bash", "ash") and len(words) >= 3:
            match = _SLEEP.match(words[-1])
            if match:
                return float(match.group(1))
    return 0.0


def _float(text: str) -> float | None:
    try:
        return float(text.rstrip("s"))
    except ValueError:
        return None


def _probe_kind(probe: dict[str, Any]) -> str:
    for kind in ("httpGet", "tcpSocket", "grpc", "exec"):
        if isinstance(probe.get(kind), dict):
            return kind
    return "none"


def _reaction(probe: dict[str, Any]) -> float:
    period = _number(probe.get("periodSeconds"), DEFAULT_PERIOD)
    failure = _number(probe.get("failureThreshold"), DEFAULT_FAILURE)
    timeout = _number(probe.get("timeoutSeconds"), DEFAULT_TIMEOUT)
    return period * failure + timeout


def _port(container: dict[str, Any], value: object) -> int | str | None:
    """A probe's port as a number (a name resolved through the container's ports).

    The name itself when the container declares no such port; None when absent.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit():
        return int(text)
    for declared in container.get("ports") or []:
        if isinstance(declared, dict) and declared.get("name") == text:
            number = declared.get("containerPort")
            if isinstance(number, int):
                return number
    return text


def _s(value: float) -> str:
    return f"{value:g}s"


class _Checker:
    def __init__(self, target: _Target | None) -> None:
        self.target = target
        self.findings: list[Finding] = []
        self.containers = 0
        self.resources = 0
        self.skipped: list[str] = []

    def add(  # noqa: PLR0917 - one finding's fields, in the order they read
        self, pod: _Pod, name: str, path: str, rule: str, severity: Severity, why: str, fix: str
    ) -> None:
        self.findings.append(
            Finding(rule, severity, pod.source, pod.resource, name, path, why, fix)
        )

    def pod(self, pod: _Pod) -> None:
        self.resources += 1
        containers = [c for c in pod.spec.get("containers") or [] if isinstance(c, dict)]
        chosen = self._app_containers(containers)
        for index, container in enumerate(containers):
            if index not in chosen:
                self.skipped.append(f"{pod.resource} {container.get('name', '?')}")
                continue
            self.containers += 1
            self.container(pod, container, f"{pod.path}.containers[{index}]")

    def _app_containers(self, containers: list[dict[str, Any]]) -> set[int]:
        """The indexes of the containers that run the app (the others are sidecars)."""
        if len(containers) <= 1:
            return set(range(len(containers)))
        mine: set[int] = set()
        for index, container in enumerate(containers):
            if self._talks_to_health(container):
                mine.add(index)
        return mine or set(range(len(containers)))

    def _talks_to_health(self, container: dict[str, Any]) -> bool:
        t = self.target
        if t is not None and t.port is not None:
            declared = {p.get("containerPort") for p in container.get("ports") or []}
            if t.port in declared:
                return True
            if container.get("name") == container_name(t.plan.name):
                return True
        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(field)
            if isinstance(probe, dict):
                path = (probe.get("httpGet") or {}).get("path")
                if path in ("/livez", "/readyz", "/startupz"):
                    return True
        return False

    def container(self, pod: _Pod, c: dict[str, Any], where: str) -> None:
        name = str(c.get("name", "?"))
        t = self.target
        prestop = _prestop(c)
        stop_before = prestop or 0.0
        grace_path = f"{pod.path}.terminationGracePeriodSeconds"
        grace = _number(pod.spec.get("terminationGracePeriodSeconds"), DEFAULT_GRACE)
        shown = "" if "terminationGracePeriodSeconds" in pod.spec else " (default)"

        # grace-period
        if t is not None:
            needed = stop_before + t.numbers.budget
            if grace < needed:
                self.add(
                    pod, name, grace_path, "grace-period", "error",
                    f"{_s(grace)}{shown} is shorter than preStop {_s(stop_before)} + the app's "
                    f"shutdown budget {_s(t.numbers.budget)} = {_s(needed)}: SIGKILL lands "
                    f"mid-shutdown (SIGTERM comes only after preStop)",
                    str(math.ceil(needed + GRACE_MARGIN)),
                )  # fmt: skip
        elif stop_before >= grace:
            self.add(
                pod, name, grace_path, "grace-period", "error",
                f"{_s(grace)}{shown} is used up by the preStop {_s(stop_before)} alone: "
                f"SIGTERM would come with no time left to shut down",
                f"preStop + the app's shutdown budget + {GRACE_MARGIN}s (lint with --app)",
            )  # fmt: skip

        # no-prestop
        if pod.serves and t is not None and prestop is None and t.plan.drain_max <= 0:
            self.add(
                pod, name, f"{where}.lifecycle.preStop", "no-prestop", "error",
                "no preStop hook and the app has no drain delay: it stops serving at "
                "SIGTERM, while kube-proxy and the ingress still route to it",
                f"lifecycle: {{preStop: {{sleep: {{seconds: {ENDPOINT_WINDOW}}}}}}} "
                "or App(drain_delay=5)",
            )  # fmt: skip

        readiness = c.get("readinessProbe")
        liveness = c.get("livenessProbe")
        if not pod.serves:
            pass  # a Job's pods get no Service traffic: readiness does not matter
        elif not isinstance(readiness, dict):
            self.add(
                pod, name, f"{where}.readinessProbe", "readiness-missing", "error",
                "no readiness probe: the pod gets traffic before it started, and anything "
                "following the probe never sees the drain",
                "readinessProbe: {httpGet: {path: /readyz, port: <health port>}}",
            )  # fmt: skip
        else:
            self._readiness(pod, name, c, readiness, liveness, where, prestop)

        if isinstance(liveness, dict):
            path = (liveness.get("httpGet") or {}).get("path")
            if isinstance(path, str) and path.split("?")[0] == "/readyz":
                self.add(
                    pod, name, f"{where}.livenessProbe.httpGet.path", "liveness-drain", "error",
                    "/readyz is 503 while starting, when a dependency is not ready and from "
                    "SIGTERM on: this liveness probe restarts the container mid-drain",
                    "/livez (200 until the app has finished)",
                )  # fmt: skip

        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(field)
            if isinstance(probe, dict):
                self._target(pod, name, c, probe, f"{where}.{field}")

    def _readiness(  # noqa: PLR0917 - the container's context, as container() has it
        self,
        pod: _Pod,
        name: str,
        c: dict[str, Any],
        probe: dict[str, Any],
        liveness: object,
        where: str,
        hook: float | None,
    ) -> None:
        kind = _probe_kind(probe)
        path = (probe.get("httpGet") or {}).get("path") if kind == "httpGet" else None
        live_path = (
            (liveness.get("httpGet") or {}).get("path") if isinstance(liveness, dict) else None
        )
        field = f"{where}.readinessProbe"
        if isinstance(path, str):
            base = path.split("?")[0]
            same = base == (live_path or "").split("?")[0]
            if base in ("/livez", "/startupz") or (same and base != "/readyz"):
                self.add(
                    pod, name, f"{field}.httpGet.path", "readiness-path", "error",
                    f"readiness on {path}"
                    + (", the liveness probe's path" if same else "")
                    + ", which stays 200 through the drain: nothing following the probe "
                    "ever sees the pod go not-ready",
                    "/readyz",
                )  # fmt: skip
        elif kind == "tcpSocket":
            self.add(
                pod, name, f"{field}.tcpSocket", "readiness-path", "error",
                "a TCP readiness check only sees the port open, which it stays through the "
                "drain: the probe never reports the shutdown",
                "httpGet: {path: /readyz, port: <health port>}",
            )  # fmt: skip
        t = self.target
        if t is None or (hook is None and t.plan.drain_max <= 0):
            return  # without --app nothing to compare; without any window no-prestop says it
        prestop = hook or 0.0
        reaction = _reaction(probe)
        drain = t.plan.drain_min
        r = t.numbers.readiness
        fix = (
            f"periodSeconds: {r.period}, failureThreshold: {r.failure}, "
            f"timeoutSeconds: {r.timeout} ({r.reaction}s)"
        )
        if reaction > drain + prestop:
            self.add(
                pod, name, f"{field}.periodSeconds", "readiness-reaction", "error",
                f"the probe takes up to {_s(reaction)} (period x failures + timeout) to report "
                f"not-ready, longer than drain delay {_s(drain)} + preStop {_s(prestop)}: "
                "load balancers that follow it route to a pod that stopped serving",
                fix,
            )  # fmt: skip
        elif drain > 0 and reaction > drain:
            self.add(
                pod, name, f"{field}.periodSeconds", "readiness-reaction", "warning",
                f"the probe takes up to {_s(reaction)} to report not-ready, longer than the "
                f"app's drain delay {_s(drain)}: /readyz is still 200 during preStop, so a "
                "load balancer that follows the probe keeps routing after the drain",
                fix,
            )  # fmt: skip

    def _target(
        self, pod: _Pod, name: str, c: dict[str, Any], probe: dict[str, Any], at: str
    ) -> None:
        kind = _probe_kind(probe)
        if kind in ("none", "exec"):
            return
        raw = probe[kind].get("port")
        port = _port(c, raw)
        t = self.target
        health = None if t is None else t.port
        if isinstance(port, str):
            self.add(
                pod, name, f"{at}.{kind}.port", "probe-port", "error",
                f"named port {port!r} is not among the container's ports: the probe fails",
                "a name from ports[].name, or the health endpoint's number",
            )  # fmt: skip
            return
        if kind == "httpGet":
            path = str(probe["httpGet"].get("path") or "/").split("?")[0]
            on_health = health is not None and port == health
            if (
                (on_health or health is None)
                and path not in PATHS
                and self._lifecycle_port(c, port)
            ):
                self.add(
                    pod, name, f"{at}.httpGet.path", "probe-path", "error",
                    f"the health endpoint does not serve {path} (it answers 404): the probe "
                    "always fails",
                    "/readyz, /livez or /startupz",
                )  # fmt: skip
        if t is not None and t.plan.health is None:
            self.add(
                pod, name, f"{at}.{kind}", "probe-port", "error",
                "the app serves no health endpoint: this probe asks one of its own servers, "
                "which close their listeners in the stop and know nothing of the drain",
                "App(health=('0.0.0.0', 8081)) and this probe on it",
            )  # fmt: skip
        if t is None or health is None:
            return
        if t.loopback:
            host = t.plan.health[0] if t.plan.health else "?"
            self.add(
                pod, name, f"{at}.{kind}", "health-loopback", "error",
                f"the app's health endpoint listens on {host}, a loopback address: the "
                "kubelet probes the pod IP and never gets an answer",
                f"App(health=('0.0.0.0', {health}))",
            )  # fmt: skip
        if port == health:
            if kind == "grpc":
                self.add(
                    pod, name, f"{at}.grpc.port", "probe-port", "error",
                    f"a gRPC probe on the health endpoint ({health}), which speaks HTTP",
                    f"httpGet: {{path: /readyz, port: {health}}}",
                )  # fmt: skip
            return
        severity: Severity = "warning" if kind == "grpc" else "error"
        extra = (
            " (right only if that is a lifecycle.grpc server, whose health turns "
            "NOT_SERVING in the drain)"
            if kind == "grpc"
            else ": the app's own servers close their listeners in the stop, and their "
            "answers do not follow the drain"
        )
        self.add(
            pod, name, f"{at}.{kind}.port", "probe-port", severity,
            f"port {port} is not the health endpoint's ({health}){extra}",
            str(health),
        )  # fmt: skip

    def _lifecycle_port(self, c: dict[str, Any], port: int | None) -> bool:
        """Whether ``port`` serves the health endpoint, as far as the manifest shows."""
        if self.target is not None and self.target.port is not None:
            return port == self.target.port
        for field in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = c.get(field)
            if isinstance(probe, dict) and isinstance(probe.get("httpGet"), dict):
                other = probe["httpGet"]
                if (
                    str(other.get("path", "")).split("?")[0] in PATHS[:3]
                    and _port(c, other.get("port")) == port
                ):
                    return True
        return False


def _target(app: Any) -> _Target:
    p = plan(app)
    try:
        port: int | None = check_health(p)
        loopback = False
    except NoHealthEndpointError:
        port = None if p.health is None or p.health[1] == 0 else p.health[1]
        loopback = port is not None
    return _Target(p, derive(p, start_seconds=start_budget(app, p.waves)), port, loopback)


def lint_documents(
    documents: Sequence[Any], source: str = "<manifest>", *, app: Any = None
) -> Report:
    """Lint parsed YAML documents (one file's), against ``app`` (an `App`) when given."""
    checker = _Checker(None if app is None else _target(app))
    for pod in _pods(documents, source):
        checker.pod(pod)
    return Report(
        tuple(checker.findings),
        checker.resources,
        checker.containers,
        () if app is not None else NEEDS_APP,
        tuple(checker.skipped),
    )


def lint_text(text: str, source: str = "<manifest>", *, app: Any = None) -> Report:
    """Lint YAML text (``---`` documents, ``List`` objects).

    Raises:
        LintError: the text is not valid YAML (the message has the line), or
            PyYAML is missing.
    """
    return lint_documents(_load(text, source), source, app=app)


def lint_files(paths: Sequence[str], *, app: Any = None) -> Report:
    """Lint manifest files; `LintError` names a file that cannot be read."""
    findings: list[Finding] = []
    resources = containers = 0
    needed: tuple[str, ...] = ()
    skipped: list[str] = []
    for name in paths:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as error:
            raise LintError(
                f"cannot read {name}: {error.strerror or error}; give a manifest file"
            ) from None
        except UnicodeDecodeError:
            raise LintError(f"{name} is not UTF-8 text; give a YAML manifest") from None
        report = lint_text(text, name, app=app)
        findings += report.findings
        resources += report.resources
        containers += report.containers
        needed = report.needed_app
        skipped += report.skipped
    return Report(tuple(findings), resources, containers, needed, tuple(skipped))


def _text(report: Report, out: TextIO) -> None:
    for finding in report.findings:
        out.write(finding.line() + "\n")
    summary = (
        f"{report.errors} error(s), {report.warnings} warning(s) in {report.containers} "
        f"container(s) of {report.resources} resource(s)"
    )
    out.write(summary + "\n")
    if report.skipped:
        out.write(
            f"left out as sidecars (no port or probe of the health endpoint): "
            f"{', '.join(report.skipped)}\n"
        )
    if report.needed_app:
        out.write(
            f"not checked without --app MODULE:ATTR: {', '.join(report.needed_app)} "
            "(they compare with the app's drain delay, stop timeouts and health port)\n"
        )


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``lifecycle k8s lint MANIFEST... [--app MODULE:ATTR] [--format text|json]``.

    Exit codes: 0 no error finding, 1 at least one, 2 unreadable input.

    Example::

        sys.exit(main(["deploy.yaml", "--app", "shop.main:app"]))
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser = argparse.ArgumentParser(
        prog="lifecycle k8s lint",
        description="Check pod specs against the app's shutdown: grace period, preStop, probes.",
    )
    parser.add_argument("manifests", nargs="+", metavar="MANIFEST.yaml")
    parser.add_argument("--app", metavar="MODULE:ATTR", help="compare with this App's plan")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    from .plan import LoadError, load_app  # noqa: PLC0415 - imports user code

    try:
        app = None if args.app is None else load_app(args.app)
        report = lint_files(args.manifests, app=app)
    except (LintError, LoadError, ConfigError) as error:
        err.write(f"lifecycle k8s lint: error: {error}\n")
        return 2
    if args.format == "json":
        out.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        _text(report, out)
    return 1 if report.errors else 0

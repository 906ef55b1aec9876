"""``lifecycle k8s``: the Kubernetes container fragment that matches an app, and its lint.

``lifecycle k8s module:attr`` prints the part of a pod template that depends
on the app's own declaration: the grace period, the preStop hook and the three
probes on the health endpoint, each number explained in a YAML comment.
``lifecycle k8s lint MANIFEST...`` checks manifests against the same reasoning
(see `lifecycle._tools.lint`).

The timeline the numbers follow, from the moment a pod is deleted::

    t=0        the endpoint controller marks the pod not-ready; kube-proxy,
               ingress controllers and meshes learn it over the next seconds
    t=0        the kubelet runs preStop (sleep N); /readyz still answers 200
    t=N        SIGTERM: /readyz 503 at once, the app keeps serving its drain
               delay D (what follows the readiness probe notices now), then
               stops its components under their timeouts
    t=grace    SIGKILL, whatever is still running

So the grace period covers preStop *and* the app's whole shutdown (they run one
after the other); the endpoint removal has preStop + D to propagate; a load
balancer that follows the readiness probe has D alone, since /readyz turns
503 only at SIGTERM.

Example::

    >>> import lifecycle
    >>> from lifecycle._tools.k8s import derive
    >>> from lifecycle._tools.plan import plan
    >>> app = lifecycle.App("shop", drain_delay=5, stop_timeout=10, health=("0.0.0.0", 8081))
    >>> _ = app.add(object(), name="db", stop=lambda: None)
    >>> n = derive(plan(app))
    >>> n.prestop, n.grace, (n.readiness.period, n.readiness.failure, n.readiness.timeout)
    (0, 20, (2, 2, 1))

Added in 0.2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import Any, Final, TextIO

import attrs

from .._core.errors import ConfigError
from .._runtime.app import App
from .plan import Plan, plan

__all__ = [
    "ENDPOINT_WINDOW",
    "GRACE_MARGIN",
    "NoHealthEndpointError",
    "Numbers",
    "Probe",
    "derive",
    "fragment",
    "main",
    "render_yaml",
]

ENDPOINT_WINDOW: Final = 5
"""Seconds the pod keeps serving after its deletion (preStop + drain delay, at least),
so that the endpoint removal reaches kube-proxy, ingress controllers and meshes."""
GRACE_MARGIN: Final = 5
"""Seconds of the grace period beyond preStop + the app's shutdown budget: the
interpreter's exit, the health endpoint's close, a loaded node."""
READINESS_TIMEOUT: Final = 1
"""``timeoutSeconds`` of the readiness probe (the endpoint answers ``/readyz`` within
its own 1 s ``READY_TIMEOUT``; a probe that times out fails, as a 503 does)."""
STARTUP_PERIOD: Final = 2
"""``periodSeconds`` of the startup probe."""
STARTUP_MARGIN: Final = 10
"""Seconds the startup probe allows beyond the start timeouts: imports, the health bind."""
HEALTH_PORT_NAME: Final = "health"
"""The name the fragment gives the health endpoint's container port."""

_LOOPBACK = ("127.", "localhost", "::1")


@attrs.frozen
class Probe:
    """One probe's timings: ``periodSeconds``, ``failureThreshold``, ``timeoutSeconds``."""

    period: int
    failure: int
    timeout: int

    @property
    def reaction(self) -> int:
        """Worst-case seconds from the path turning 503 to the kubelet acting on it."""
        return self.period * self.failure + self.timeout


@attrs.frozen
class Numbers:
    """The numbers of the fragment, derived from a `Plan`, with the reasons.

    Attributes:
        prestop: seconds of the preStop sleep (0: no preStop hook).
        budget: seconds the app may take from SIGTERM to its exit: its worst
            case (drain max + the stop path), bounded by ``shutdown_timeout``.
        grace: ``terminationGracePeriodSeconds``: prestop + budget + margin.
        readiness, liveness, startup: the probes' timings.
        notes: what the app should change for the fragment to be safe.
    """

    prestop: int
    budget: float
    grace: int
    readiness: Probe
    liveness: Probe
    startup: Probe
    drain_min: float
    drain_max: float
    start_budget: float
    notes: tuple[str, ...] = ()


def _readiness(window: float) -> Probe:
    """The slowest readiness probe (up to every 10 s) that reacts within ``window`` seconds."""
    room = window - READINESS_TIMEOUT
    failure = 2 if room >= 4 else 1  # one flaky answer is forgiven when there is room
    period = max(1, min(10, math.floor(room / failure)))
    return Probe(period=period, failure=failure, timeout=READINESS_TIMEOUT)


def start_budget(app: App, waves: Sequence[Sequence[str]]) -> float:
    """Seconds startup may take at most: per wave the longest ``start_timeout``, summed."""
    # The app's own per-component bound (its default when the component gives none).
    per = {n: app._start_timeout(n) for n in app.start_order()}
    return sum(max((per.get(n, app.start_timeout) for n in wave), default=0.0) for wave in waves)


def derive(p: Plan, *, start_seconds: float | None = None) -> Numbers:
    """The fragment's numbers for the plan ``p`` (see the module docstring's timeline).

    ``start_seconds`` bounds the startup (default: 30 s per start wave).
    """
    notes: list[str] = []
    prestop = max(0, math.ceil(ENDPOINT_WINDOW - p.drain_min))
    budget = min(p.needed, p.shutdown_timeout)
    if p.overrun:
        notes.append(
            f"the stop path ({' -> '.join(p.stop_path) or 'nothing'}) may take "
            f"{p.needed:g}s, more than shutdown_timeout={p.shutdown_timeout:g}s: the app "
            f"abandons what is left at {p.shutdown_timeout:g}s; raise shutdown_timeout "
            f"to {math.ceil(p.needed)} or lower the stop timeouts"
        )
    grace = math.ceil(prestop + budget + GRACE_MARGIN)
    # Without a drain, the preStop sleep is the only window (the endpoint removal's).
    readiness = _readiness(p.drain_min if p.drain_min > 0 else prestop)
    if 0 < p.drain_min < readiness.reaction:
        notes.append(
            f"the drain delay ({p.drain_min:g}s) is shorter than the fastest readiness "
            f"reaction ({readiness.reaction}s): a load balancer that follows the probe "
            f"keeps routing after the drain; raise drain_delay to {readiness.reaction}"
        )
    starting = 30.0 * max(1, len(p.waves)) if start_seconds is None else start_seconds
    failures = max(1, math.ceil((starting + STARTUP_MARGIN) / STARTUP_PERIOD))
    return Numbers(
        prestop=prestop,
        budget=budget,
        grace=grace,
        readiness=readiness,
        liveness=Probe(period=10, failure=3, timeout=READINESS_TIMEOUT),
        startup=Probe(period=STARTUP_PERIOD, failure=failures, timeout=READINESS_TIMEOUT),
        drain_min=p.drain_min,
        drain_max=p.drain_max,
        start_budget=starting,
        notes=tuple(notes),
    )


class NoHealthEndpointError(ConfigError):
    """The app has no health endpoint the kubelet can probe; the message says what to add."""


def container_name(app_name: str) -> str:
    """``app_name`` as a DNS-1123 label (what a container name must be)."""
    label = re.sub(r"[^a-z0-9-]+", "-", app_name.lower()).strip("-")[:63].strip("-")
    return label or "app"


def check_health(p: Plan) -> int:
    """The health port the kubelet can reach; else `NoHealthEndpointError` says what to type."""
    if p.health is None:
        raise NoHealthEndpointError(
            f"app {p.name!r} has no health endpoint, so there is nothing for the probes to "
            f"ask; add one on all interfaces: App({p.name!r}, health=('0.0.0.0', 8081)) "
            f"(health=8081 listens on 127.0.0.1 only, which the kubelet cannot reach)"
        )
    host, port = p.health
    if port == 0:
        raise NoHealthEndpointError(
            f"app {p.name!r} has health port 0 (a free port chosen at start), which a "
            f"manifest cannot name; give a fixed one: health=({host!r}, 8081)"
        )
    if host.startswith(_LOOPBACK):
        raise NoHealthEndpointError(
            f"app {p.name!r} serves its health endpoint on {host}:{port}, a loopback "
            f"address: the kubelet probes the pod IP and would never get an answer; "
            f"listen on all interfaces: health=('0.0.0.0', {port})"
        )
    return port


def prestop_hook(seconds: int, *, exec_sleep: bool) -> dict[str, Any]:
    """The ``lifecycle`` field of a container: preStop sleeping ``seconds``."""
    if exec_sleep:
        return {"preStop": {"exec": {"command": ["sleep", str(seconds)]}}}
    return {"preStop": {"sleep": {"seconds": seconds}}}


def _probe(path: str, t: Probe) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
        "periodSeconds": t.period,
        "failureThreshold": t.failure,
        "timeoutSeconds": t.timeout,
    }


def fragment(app: App, *, exec_sleep: bool = False) -> dict[str, Any]:
    """The pod-spec fragment for ``app``: grace period and one container's probes and hook.

    Raises:
        NoHealthEndpointError: the app has no health endpoint the kubelet can reach.

    Example::

        spec = fragment(app)
        spec["terminationGracePeriodSeconds"]  # preStop + shutdown budget + margin
    """
    p = plan(app)
    port = check_health(p)
    n = derive(p, start_seconds=start_budget(app, p.waves))
    container: dict[str, Any] = {
        "name": container_name(p.name),
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "startupProbe": _probe("/startupz", n.startup),
        "readinessProbe": _probe("/readyz", n.readiness),
        "livenessProbe": _probe("/livez", n.liveness),
    }
    if n.prestop:
        container["lifecycle"] = prestop_hook(n.prestop, exec_sleep=exec_sleep)
    return {"terminationGracePeriodSeconds": n.grace, "containers": [container]}


def _comment(lines: Sequence[str], indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in lines]


def render_yaml(app: App, spec: str, *, exec_sleep: bool = False) -> str:
    """`fragment` as commented YAML: each number says where it comes from."""
    frag = fragment(app, exec_sleep=exec_sleep)
    p = plan(app)
    n = derive(p, start_seconds=start_budget(app, p.waves))
    c = frag["containers"][0]
    port = c["ports"][0]["containerPort"]
    drain = (
        f"drain delay {n.drain_min:g}s"
        if n.drain_min == n.drain_max
        else f"drain delay {n.drain_min:g}-{n.drain_max:g}s (adaptive)"
    )
    out: list[str] = _comment(
        [
            f"lifecycle k8s {spec}: app {p.name!r}, {drain}, stop path "
            f"{' -> '.join(p.stop_path) or '(nothing)'} {p.stop_seconds:g}s, "
            f"shutdown_timeout {p.shutdown_timeout:g}s.",
            "Merge into the pod template's spec (spec.template.spec of a Deployment);",
            "add the image, your ports and the rest. Check the result with",
            f"  lifecycle k8s lint MANIFEST.yaml --app {spec}",
        ],
        "",
    )
    out += _comment(
        [
            "Covers preStop and the app's shutdown together (SIGTERM comes only after",
            f"preStop): preStop {n.prestop}s + shutdown budget {n.budget:g}s "
            f"(min(drain max {n.drain_max:g}s + stop path {p.stop_seconds:g}s,",
            f"shutdown_timeout {p.shutdown_timeout:g}s)) + margin {GRACE_MARGIN}s.",
        ],
        "",
    )
    out.append(f"terminationGracePeriodSeconds: {n.grace}")
    out.append("containers:")
    out.append(f"  - name: {c['name']}")
    out += _comment(["The health endpoint (App(health=...)): /livez, /readyz, /startupz."], "    ")
    out += [
        "    ports:",
        f"      - name: {HEALTH_PORT_NAME}",
        f"        containerPort: {port}",
        "        protocol: TCP",
    ]
    if n.prestop:
        window = (
            f"with the {n.drain_min:g}s drain that follows, {ENDPOINT_WINDOW}s"
            if n.drain_min
            else f"{ENDPOINT_WINDOW}s, since the app has no drain delay"
        )
        out += _comment(
            [
                f"preStop sleeps {n.prestop}s before SIGTERM while the endpoint removal",
                f"reaches kube-proxy and the ingress ({window}).",
                "It adds to the app's drain delay (they run one after the other), so",
                f"it only tops the two up to {ENDPOINT_WINDOW}s. /readyz still answers 200",
                "while it sleeps.",
            ],
            "    ",
        )
        if exec_sleep:
            out += _comment(
                ["exec sleep: for clusters before 1.30 (the image needs a sleep binary)."], "    "
            )
            out += [
                "    lifecycle:",
                "      preStop:",
                "        exec:",
                f'          command: ["sleep", "{n.prestop}"]',
            ]
        else:
            out += _comment(
                [
                    "preStop.sleep: beta and on by default since Kubernetes 1.30, GA in 1.34;",
                    "older clusters: lifecycle k8s --exec-sleep.",
                ],
                "    ",
            )
            out += [
                "    lifecycle:",
                "      preStop:",
                "        sleep:",
                f"          seconds: {n.prestop}",
            ]
    else:
        out += _comment(
            [
                f"No preStop: the app's own drain delay ({n.drain_min:g}s, /readyz 503 while",
                "it keeps serving) already covers the endpoint removal; a preStop sleep",
                "would add to it (they run one after the other) and slow every rollout.",
            ],
            "    ",
        )
    s, r, live = n.startup, n.readiness, n.liveness
    out += _comment(
        [
            f"/startupz is 503 until every component started: {s.failure} x {s.period}s",
            f"= {s.failure * s.period}s >= start timeouts {n.start_budget:g}s + "
            f"{STARTUP_MARGIN}s (imports, bind). Liveness waits for it.",
        ],
        "    ",
    )
    out += _probe_yaml("startupProbe", "/startupz", s)
    if n.drain_min > 0:
        why = [
            f"/readyz turns 503 at SIGTERM: {r.failure} x {r.period}s + {r.timeout}s timeout",
            f"= {r.reaction}s, within the {n.drain_min:g}s drain delay, so a load balancer",
            "that follows this probe stops routing before the app stops serving.",
        ]
    else:
        why = [
            f"/readyz: 503 when a component's ready() fails and from SIGTERM; {r.failure} x "
            f"{r.period}s + {r.timeout}s",
            f"= {r.reaction}s, within the preStop. The app has no drain delay: the endpoint",
            "removal (preStop above) protects the rollout; give App(drain_delay=...) for",
            "load balancers that follow the probe (it turns 503 only at SIGTERM).",
        ]
    out += _comment(why, "    ")
    out += _probe_yaml("readinessProbe", "/readyz", r)
    out += _comment(
        [
            f"/livez stays 200 through the drain and the stops ({live.failure} x "
            f"{live.period}s: slow to",
            "restart on purpose); never /readyz here, which is 503 while draining.",
        ],
        "    ",
    )
    out += _probe_yaml("livenessProbe", "/livez", live)
    for note in n.notes:
        out += _comment([f"WARNING: {note}"], "")
    return "\n".join(out) + "\n"


def _probe_yaml(field: str, path: str, t: Probe) -> list[str]:
    return [
        f"    {field}:",
        "      httpGet:",
        f"        path: {path}",
        f"        port: {HEALTH_PORT_NAME}",
        f"      periodSeconds: {t.period}",
        f"      failureThreshold: {t.failure}",
        f"      timeoutSeconds: {t.timeout}",
    ]


def _generate(argv: Sequence[str], out: TextIO, err: TextIO) -> int:
    from .plan import LoadError, load_app  # noqa: PLC0415 - the loader imports user code

    parser = argparse.ArgumentParser(
        prog="lifecycle k8s",
        description="Print the pod-spec fragment (grace period, preStop, probes) that matches "
        "the app; 'lifecycle k8s lint' checks manifests.",
    )
    parser.add_argument("app", metavar="MODULE:ATTR", help="the App, e.g. shop.main:app")
    parser.add_argument(
        "--exec-sleep",
        action="store_true",
        help="preStop as exec [sleep, N] (clusters before 1.30) instead of preStop.sleep",
    )
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    args = parser.parse_args(list(argv))
    try:
        app = load_app(args.app)
        if args.format == "json":
            frag = fragment(app, exec_sleep=args.exec_sleep)
            notes = derive(plan(app)).notes
            out.write(json.dumps(frag, indent=2) + "\n")
        else:
            out.write(render_yaml(app, args.app, exec_sleep=args.exec_sleep))
            notes = derive(plan(app)).notes
    except (LoadError, ConfigError) as error:
        err.write(f"lifecycle k8s: error: {error}\n")
        return 2
    for note in notes:
        err.write(f"lifecycle k8s: warning: {note}\n")
    return 0


def main(argv: Sequence[str]) -> int:
    """``lifecycle k8s ...`` (``argv`` is what follows ``k8s``): the fragment, or ``lint``.

    Exit codes: 0 printed (or lint clean), 1 lint found an error, 2 the app or a
    manifest could not be read (the message says why).

    Example::

        sys.exit(main(["shop.main:app", "--format", "json"]))
    """
    args = list(argv)
    if args[:1] == ["lint"]:
        from .lint import main as lint_main  # noqa: PLC0415 - PyYAML is an optional extra

        return lint_main(args[1:])
    try:
        return _generate(args, sys.stdout, sys.stderr)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2)
        return stop.code if isinstance(stop.code, int) else 2

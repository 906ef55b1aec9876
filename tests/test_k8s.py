"""``lifecycle k8s``: the pod-spec fragment derived from the app's plan."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lifecycle._tools import k8s
from lifecycle._tools.k8s import GRACE_MARGIN, derive, fragment, render_yaml
from lifecycle._tools.lint import lint_documents
from lifecycle._tools.plan import Plan, load_app, plan

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
APPS = "tests.procs.k8s_apps"
GOOD_APPS = ["drained", "short_drain", "no_drain", "overrun", "make"]
VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"]


def _plan(drain_min: float, drain_max: float, stop: float = 10.0, timeout: float = 60.0) -> Plan:
    return Plan(
        name="p",
        start_order=("a",),
        waves=(("a",),),
        drain_min=drain_min,
        drain_max=drain_max,
        stop_path=("a",),
        stop_seconds=stop,
        shutdown_timeout=timeout,
        health=("0.0.0.0", 8081),
    )


def _generate(name: str, *, exec_sleep: bool = False) -> dict[str, Any]:
    text = render_yaml(load_app(f"{APPS}:{name}"), f"{APPS}:{name}", exec_sleep=exec_sleep)
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _deployment(spec: dict[str, Any], name: str = "shop") -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    for container in spec["containers"]:
        container["image"] = "registry.example.com/shop:1.0"
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = k8s._generate(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


# -- the numbers -------------------------------------------------------------------------


def test_drain_covers_readiness_and_replaces_prestop() -> None:
    """A 10 s drain: no preStop, readiness within the drain, grace = budget + margin."""
    n = derive(plan(load_app(f"{APPS}:drained")))
    assert (n.prestop, n.budget, n.grace) == (0, 30.0, 30 + GRACE_MARGIN)
    assert (n.readiness.period, n.readiness.failure, n.readiness.timeout) == (4, 2, 1)
    assert n.readiness.reaction <= 10
    assert n.notes == ()


def test_short_drain_is_topped_up_by_prestop() -> None:
    """A 2 s drain: preStop 3 s so that the pod serves 5 s after its deletion."""
    n = derive(plan(load_app(f"{APPS}:short_drain")))
    assert (n.prestop, n.grace) == (3, 3 + 12 + GRACE_MARGIN)
    assert n.readiness.reaction <= 2


def test_no_drain_gets_full_prestop() -> None:
    """No drain delay: preStop 5 s does the whole job; readiness reacts within it."""
    n = derive(plan(load_app(f"{APPS}:no_drain")))
    assert (n.prestop, n.grace) == (5, 5 + 10 + GRACE_MARGIN)
    assert n.readiness.reaction <= 5


def test_overrun_grace_follows_shutdown_timeout_and_warns() -> None:
    """Stops needing more than shutdown_timeout: the app cuts at it; the note says so."""
    n = derive(plan(load_app(f"{APPS}:overrun")))
    assert (n.budget, n.grace) == (30.0, 30 + GRACE_MARGIN)
    assert len(n.notes) == 1
    assert "shutdown_timeout=30s" in n.notes[0]
    assert "raise shutdown_timeout to 45" in n.notes[0]


def test_adaptive_drain_readiness_by_min_grace_by_max() -> None:
    """Drain(min=6, max=20): readiness fits in 6 s, the grace covers 20 s + the stops."""
    n = derive(_plan(6, 20, stop=10))
    assert n.readiness.reaction <= 6
    assert n.prestop == 0
    assert n.grace == 20 + 10 + GRACE_MARGIN


def test_adaptive_drain_prestop_from_min() -> None:
    """A drain that may end after 2 s gets its preStop top-up from the 2, not the max."""
    n = derive(_plan(2, 30, stop=5))
    assert n.prestop == 3
    assert n.grace == 3 + 35 + GRACE_MARGIN


def test_drain_shorter_than_any_probe_is_noted() -> None:
    """A 1 s drain cannot be covered by a probe: the note says what drain to use."""
    n = derive(plan(load_app(f"{APPS}:tiny_drain")))
    assert any("raise drain_delay to 2" in note for note in n.notes)


def test_startup_probe_covers_start_timeouts() -> None:
    """The startup probe allows the start timeouts of every wave, plus a margin."""
    n = derive(plan(load_app(f"{APPS}:drained")), start_seconds=45)
    assert n.startup.period * n.startup.failure >= 45 + k8s.STARTUP_MARGIN


# -- the fragment ------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_APPS)
@pytest.mark.parametrize("exec_sleep", [False, True], ids=["sleep", "exec"])
def test_yaml_and_json_are_the_same_fragment(name: str, exec_sleep: bool) -> None:
    """The commented YAML parses to exactly the JSON form."""
    app = load_app(f"{APPS}:{name}")
    assert _generate(name, exec_sleep=exec_sleep) == fragment(app, exec_sleep=exec_sleep)


def test_every_field_is_explained() -> None:
    """Each number-bearing key of the fragment comes right after a comment."""
    lines = render_yaml(load_app(f"{APPS}:short_drain"), "x:y").splitlines()
    for key in (
        "terminationGracePeriodSeconds:",
        "    ports:",
        "    lifecycle:",
        "    startupProbe:",
        "    readinessProbe:",
        "    livenessProbe:",
    ):
        at = next(i for i, line in enumerate(lines) if line.startswith(key))
        assert lines[at - 1].lstrip().startswith("#"), key


def test_prestop_sleep_and_exec_fallback() -> None:
    """preStop.sleep by default; exec [sleep, N] with --exec-sleep."""
    assert _generate("short_drain")["containers"][0]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 3}}
    }
    assert _generate("short_drain", exec_sleep=True)["containers"][0]["lifecycle"] == {
        "preStop": {"exec": {"command": ["sleep", "3"]}}
    }
    assert "lifecycle" not in _generate("drained")["containers"][0]


def test_comments_document_the_double_count_choice() -> None:
    """The YAML says why there is no preStop with a drain, and that the two add up."""
    drained = render_yaml(load_app(f"{APPS}:drained"), "x:y")
    assert "would add to it (they run one after the other)" in drained
    topped = render_yaml(load_app(f"{APPS}:short_drain"), "x:y")
    assert "It adds to the app's drain delay" in " ".join(topped.split("# "))


def test_probes_use_the_named_health_port() -> None:
    """The probes name the health port, which the container declares with its number."""
    c = _generate("no_drain")["containers"][0]
    assert c["ports"] == [{"name": "health", "containerPort": 9000, "protocol": "TCP"}]
    paths = {f: c[f]["httpGet"] for f in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {
        "startupProbe": {"path": "/startupz", "port": "health"},
        "readinessProbe": {"path": "/readyz", "port": "health"},
        "livenessProbe": {"path": "/livez", "port": "health"},
    }


def test_container_name_is_a_dns_label() -> None:
    """App names become valid container names."""
    assert k8s.container_name("My_Shop.v2") == "my-shop-v2"
    assert k8s.container_name("___") == "app"


# -- the command -------------------------------------------------------------------------


def test_no_health_endpoint_exits_2_saying_how_to_add_one() -> None:
    """Without a health endpoint: exit 2 and the App(health=...) to type."""
    code, out, err = _run(f"{APPS}:no_health")
    assert (code, out) == (2, "")
    assert "has no health endpoint" in err
    assert "health=('0.0.0.0', 8081)" in err


def test_loopback_health_exits_2() -> None:
    """health=8081 (127.0.0.1) is unreachable for the kubelet: exit 2, say 0.0.0.0."""
    code, _, err = _run(f"{APPS}:loopback")
    assert code == 2
    assert "loopback" in err
    assert "health=('0.0.0.0', 8081)" in err


def test_unloadable_app_exits_2() -> None:
    """A spec that names nothing: exit 2 with the loader's message."""
    code, _, err = _run("tests.procs.k8s_apps:nothing_here")
    assert code == 2
    assert "has no attribute 'nothing_here'" in err


def test_overrun_warns_on_stderr() -> None:
    """The plan's overrun goes to stderr as a warning; the fragment is still printed."""
    code, out, err = _run(f"{APPS}:overrun", "--format", "json")
    assert code == 0
    assert json.loads(out)["terminationGracePeriodSeconds"] == 35
    assert "warning:" in err


def test_bad_option_exits_2() -> None:
    """An unknown --format is a usage error: exit 2."""
    assert k8s.main([f"{APPS}:drained", "--format", "toml"]) == 2


# -- proofs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_APPS)
@pytest.mark.parametrize("exec_sleep", [False, True], ids=["sleep", "exec"])
def test_generated_fragment_passes_lint(name: str, exec_sleep: bool) -> None:
    """What `lifecycle k8s` prints, in a Deployment, passes `k8s lint --app` with no finding."""
    app = load_app(f"{APPS}:{name}")
    report = lint_documents([_deployment(_generate(name, exec_sleep=exec_sleep))], app=app)
    assert [f.line() for f in report.findings] == []
    assert report.containers == 1


def test_generated_fragment_for_too_short_drain_only_warns() -> None:
    """A 1 s drain: the lint warns (the probe cannot be that fast) but finds no error."""
    app = load_app(f"{APPS}:tiny_drain")
    report = lint_documents([_deployment(_generate("tiny_drain"))], app=app)
    assert (report.errors, [f.rule for f in report.findings]) == (0, ["readiness-reaction"])


@pytest.mark.parametrize("version", VERSIONS)
def test_generated_fragments_validate_against_the_schema(version: str) -> None:
    """Every generated fragment, as a Deployment and as a Pod, is valid (strict schema)."""
    kv = pytest.importorskip("kubernetes_validate")
    for name in [*GOOD_APPS, "tiny_drain"]:
        for exec_sleep in (False, True):
            spec = _generate(name, exec_sleep=exec_sleep)
            deployment = _deployment(spec, name.replace("_", "-"))
            kv.validate(deployment, version, strict=True)
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": deployment["spec"]["template"]["spec"],
            }
            kv.validate(pod, version, strict=True)


def test_schema_rejects_a_broken_fragment() -> None:
    """The validation has teeth: a misspelt probe field fails it."""
    kv = pytest.importorskip("kubernetes_validate")
    spec = _generate("drained")
    spec["containers"][0]["readinessProbe"]["periodSecond"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(_deployment(spec), "1.34.0", strict=True)


@pytest.mark.process
def test_cli_prints_the_fragment() -> None:
    """``python -m lifecycle k8s APP`` prints the YAML; ``--format json`` the same object."""
    command = [sys.executable, "-m", "lifecycle", "k8s", f"{APPS}:short_drain"]
    shown = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    as_json = subprocess.run(
        [*command, "--format", "json", "--exec-sleep"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    from_yaml = yaml.safe_load(shown.stdout)
    from_json = json.loads(as_json.stdout)
    assert from_json["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "3"]
    del from_yaml["containers"][0]["lifecycle"], from_json["containers"][0]["lifecycle"]
    assert from_yaml == from_json


@pytest.mark.process
def test_cli_no_health_exits_2() -> None:
    """``python -m lifecycle k8s`` for an app without health: exit 2, the fix on stderr."""
    command = [sys.executable, "-m", "lifecycle", "k8s", f"{APPS}:no_health"]
    done = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "health=('0.0.0.0', 8081)" in done.stderr


@pytest.mark.process
def test_cli_output_fed_to_lint_passes(tmp_path: Path) -> None:
    """The printed fragment, wrapped in a Deployment file, passes the real ``k8s lint --app``."""
    spec = f"{APPS}:drained"
    command = [sys.executable, "-m", "lifecycle", "k8s", spec]
    shown = subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    manifest = tmp_path / "deploy.yaml"
    manifest.write_text(yaml.safe_dump(_deployment(yaml.safe_load(shown.stdout))))
    lint = [sys.executable, "-m", "lifecycle", "k8s", "lint", str(manifest), "--app", spec]
    done = subprocess.run(lint, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("0 error(s), 0 warning(s) in 1 container(s)")

"""``lifecycle k8s lint``: pod specs checked against the app's shutdown budget."""

from __future__ import annotations

import builtins
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lifecycle._tools import lint
from lifecycle._tools.lint import LintError, lint_files, lint_text
from lifecycle._tools.plan import load_app

pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "tests" / "k8s"
RULES = MANIFESTS / "rules"
CHARTS = MANIFESTS / "charts"
APPS = "tests.procs.k8s_apps"

Pinned = tuple[str, str, str, str, str]  # rule, severity, resource, container, path


def _lint(path: Path, app: str | None = None) -> lint.Report:
    return lint_files([str(path)], app=None if app is None else load_app(f"{APPS}:{app}"))


def _pinned(report: lint.Report) -> list[Pinned]:
    return [(f.rule, f.severity, f.resource, f.container, f.path) for f in report.findings]


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = lint.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


# -- each rule: a manifest that triggers it, a fixed one that passes --------------------

RULE_CASES = [
    # rule, bad manifest, app for it, fixed manifest, app for it
    ("grace-period", "grace-period-bad", "drained", "grace-period-good", "drained"),
    ("grace-period", "grace-prestop-bad", None, "grace-prestop-good", None),
    ("grace-period", "grace-prestop-bad", "drained", "grace-prestop-good", "drained"),
    ("readiness-missing", "readiness-missing-bad", None, "readiness-missing-good", None),
    ("readiness-path", "readiness-path-bad", None, "readiness-path-good", None),
    ("readiness-path", "readiness-tcp-bad", None, "readiness-path-good", None),
    (
        "readiness-reaction",
        "readiness-reaction-bad",
        "drained",
        "readiness-reaction-good",
        "drained",
    ),
    ("no-prestop", "no-prestop-bad", "no_drain", "no-prestop-good", "no_drain"),
    ("liveness-drain", "liveness-drain-bad", None, "liveness-drain-good", None),
    ("probe-port", "probe-port-bad", "drained", "probe-port-good", "drained"),
    ("probe-port", "probe-port-named-bad", None, "probe-port-good", None),
    ("probe-path", "probe-path-bad", None, "probe-path-good", None),
    ("health-loopback", "health-loopback-bad", "loopback", "health-loopback-good", "drained"),
]


@pytest.mark.parametrize(
    ("rule", "bad", "bad_app", "good", "good_app"),
    RULE_CASES,
    ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in RULE_CASES],
)
def test_rule_triggers_and_fix_passes(
    rule: str, bad: str, bad_app: str | None, good: str, good_app: str | None
) -> None:
    """The bad manifest gets errors of this rule only; the fixed one none at all."""
    report = _lint(RULES / f"{bad}.yaml", bad_app)
    assert {(f.rule, f.severity) for f in report.findings} == {(rule, "error")}
    fixed = _lint(RULES / f"{good}.yaml", good_app)
    assert [f.line() for f in fixed.findings] == []


def test_reaction_covered_only_by_prestop_is_a_warning() -> None:
    """9 s of probe fits drain 5 + preStop 5, not the drain alone: a warning, exit 0."""
    report = _lint(RULES / "readiness-reaction-warn.yaml", "mid_drain")
    assert [(f.rule, f.severity) for f in report.findings] == [("readiness-reaction", "warning")]
    assert "/readyz is still 200 during preStop" in report.findings[0].why
    path = str(RULES / "readiness-reaction-warn.yaml")
    assert _main(path, "--app", f"{APPS}:mid_drain")[0] == 0


def test_findings_say_why_and_what_to_use() -> None:
    """A finding names the resource, the container, the field, why, and the value to use."""
    (finding,) = _lint(RULES / "grace-period-bad.yaml", "drained").findings
    assert finding.resource == "Deployment/grace"
    assert finding.container == "shop"
    assert finding.path == "spec.template.spec.terminationGracePeriodSeconds"
    assert "20s is shorter than preStop 0s + the app's shutdown budget 30s" in finding.why
    assert finding.fix == "35"
    (reaction,) = _lint(RULES / "readiness-reaction-bad.yaml", "drained").findings
    assert "31s" in reaction.why
    assert reaction.fix == "periodSeconds: 4, failureThreshold: 2, timeoutSeconds: 1 (9s)"


# -- realistic manifests, findings pinned -------------------------------------------------

CHART_FINDINGS: dict[tuple[str, str | None], list[Pinned]] = {
    ("01-deployment-sidecar.yaml", None): [],
    ("01-deployment-sidecar.yaml", "drained"): [],
    ("02-statefulset.yaml", None): [
        ("liveness-drain", "error", "StatefulSet/ledger", "ledger",
         "spec.template.spec.containers[0].livenessProbe.httpGet.path"),
    ],
    ("02-statefulset.yaml", "drained"): [
        ("liveness-drain", "error", "StatefulSet/ledger", "ledger",
         "spec.template.spec.containers[0].livenessProbe.httpGet.path"),
    ],
    ("03-cronjob.yaml", None): [
        ("grace-period", "error", "CronJob/nightly-report", "report",
         "spec.jobTemplate.spec.template.spec.terminationGracePeriodSeconds"),
    ],
    ("03-cronjob.yaml", "drained"): [
        ("grace-period", "error", "CronJob/nightly-report", "report",
         "spec.jobTemplate.spec.template.spec.terminationGracePeriodSeconds"),
    ],
    ("04-daemonset-tcp.yaml", None): [
        ("readiness-path", "error", "DaemonSet/node-agent", "agent",
         "spec.template.spec.containers[0].readinessProbe.tcpSocket"),
    ],
    ("04-daemonset-tcp.yaml", "drained"): [
        ("readiness-path", "error", "DaemonSet/node-agent", "agent",
         "spec.template.spec.containers[0].readinessProbe.tcpSocket"),
        ("readiness-reaction", "error", "DaemonSet/node-agent", "agent",
         "spec.template.spec.containers[0].readinessProbe.periodSeconds"),
    ],
    ("05-grpc-probes.yaml", None): [],
    ("05-grpc-probes.yaml", "drained"): [
        ("probe-port", "warning", "Deployment/pricing", "pricing",
         "spec.template.spec.containers[0].readinessProbe.grpc.port"),
        ("probe-port", "error", "Deployment/pricing", "pricing",
         "spec.template.spec.containers[0].livenessProbe.grpc.port"),
    ],
    ("06-exec-probes.yaml", None): [],
    ("06-exec-probes.yaml", "drained"): [
        ("readiness-reaction", "error", "Deployment/legacy", "legacy",
         "spec.template.spec.containers[0].readinessProbe.periodSeconds"),
    ],
    ("07-missing-probes.yaml", None): [
        ("readiness-missing", "error", "Deployment/bare", "bare",
         "spec.template.spec.containers[0].readinessProbe"),
    ],
    ("07-missing-probes.yaml", "drained"): [
        ("readiness-missing", "error", "Deployment/bare", "bare",
         "spec.template.spec.containers[0].readinessProbe"),
    ],
    ("08-list.yaml", None): [
        ("readiness-path", "error", "Deployment/web", "web",
         "items[1].spec.template.spec.containers[0].readinessProbe.httpGet.path"),
    ],
    ("08-list.yaml", "drained"): [
        ("readiness-path", "error", "Deployment/web", "web",
         "items[1].spec.template.spec.containers[0].readinessProbe.httpGet.path"),
        ("readiness-reaction", "error", "Deployment/web", "web",
         "items[1].spec.template.spec.containers[0].readinessProbe.periodSeconds"),
    ],
    ("09-multi-doc.yaml", None): [
        ("probe-path", "error", "Deployment/api", "api",
         "spec.template.spec.containers[0].livenessProbe.httpGet.path"),
    ],
    ("09-multi-doc.yaml", "drained"): [
        ("probe-path", "error", "Deployment/api", "api",
         "spec.template.spec.containers[0].livenessProbe.httpGet.path"),
    ],
    ("10-pod.yaml", None): [
        ("probe-port", "error", "Pod/shop-debug", "shop",
         "spec.containers[0].livenessProbe.httpGet.port"),
    ],
    ("10-pod.yaml", "drained"): [
        ("probe-port", "error", "Pod/shop-debug", "shop",
         "spec.containers[0].livenessProbe.httpGet.port"),
    ],
    ("11-deployment-app-port.yaml", None): [
        ("readiness-path", "error", "Deployment/checkout", "checkout",
         "spec.template.spec.containers[0].readinessProbe.httpGet.path"),
    ],
    ("11-deployment-app-port.yaml", "drained"): [
        ("readiness-path", "error", "Deployment/checkout", "checkout",
         "spec.template.spec.containers[0].readinessProbe.httpGet.path"),
        ("readiness-reaction", "error", "Deployment/checkout", "checkout",
         "spec.template.spec.containers[0].readinessProbe.periodSeconds"),
        ("probe-port", "error", "Deployment/checkout", "checkout",
         "spec.template.spec.containers[0].readinessProbe.httpGet.port"),
        ("probe-port", "error", "Deployment/checkout", "checkout",
         "spec.template.spec.containers[0].livenessProbe.httpGet.port"),
    ],
    ("12-job.yaml", None): [
        ("grace-period", "error", "Job/migrate", "migrate",
         "spec.template.spec.terminationGracePeriodSeconds"),
    ],
    ("12-job.yaml", "drained"): [
        ("grace-period", "error", "Job/migrate", "migrate",
         "spec.template.spec.terminationGracePeriodSeconds"),
    ],
    ("13-two-containers.yaml", None): [
        ("readiness-missing", "error", "Deployment/shop-all", "worker",
         "spec.template.spec.containers[1].readinessProbe"),
        ("liveness-drain", "error", "Deployment/shop-all", "worker",
         "spec.template.spec.containers[1].livenessProbe.httpGet.path"),
    ],
    ("13-two-containers.yaml", "drained"): [
        ("readiness-missing", "error", "Deployment/shop-all", "worker",
         "spec.template.spec.containers[1].readinessProbe"),
        ("liveness-drain", "error", "Deployment/shop-all", "worker",
         "spec.template.spec.containers[1].livenessProbe.httpGet.path"),
        ("probe-port", "error", "Deployment/shop-all", "worker",
         "spec.template.spec.containers[1].livenessProbe.httpGet.port"),
    ],
}  # fmt: skip


def test_every_chart_is_pinned() -> None:
    """Each manifest under tests/k8s/charts has its findings pinned, with and without --app."""
    names = sorted(p.name for p in CHARTS.glob("*.yaml"))
    assert len(names) >= 10
    assert sorted({name for name, _ in CHART_FINDINGS}) == names


@pytest.mark.parametrize(
    ("name", "app"), list(CHART_FINDINGS), ids=[f"{n}:{a}" for n, a in CHART_FINDINGS]
)
def test_chart_findings(name: str, app: str | None) -> None:
    """The realistic manifest's findings, exactly."""
    assert _pinned(_lint(CHARTS / name, app)) == CHART_FINDINGS[name, app]


def test_sidecar_is_left_out_and_said_so() -> None:
    """In a pod with several containers, one that never touches the health endpoint is a
    sidecar: left out of the rules, and listed."""
    report = _lint(CHARTS / "01-deployment-sidecar.yaml", "drained")
    assert (report.containers, report.skipped) == (1, ("Deployment/shop envoy",))
    code, out, _ = _main(str(CHARTS / "01-deployment-sidecar.yaml"))
    assert code == 0
    assert "left out as sidecars (no port or probe of the health endpoint): " in out


def test_two_app_containers_are_reported_each() -> None:
    """Two containers probing lifecycle paths are both checked, each on its own."""
    report = _lint(CHARTS / "13-two-containers.yaml", "drained")
    assert report.containers == 2
    assert {f.container for f in report.findings} == {"worker"}


def test_multi_doc_and_list_count_resources() -> None:
    """Only workloads count; documents are numbered in the source of each finding."""
    multi = _lint(CHARTS / "09-multi-doc.yaml")
    assert (multi.resources, multi.findings[0].source.rsplit("#", 1)[1]) == (1, "4")
    listed = _lint(CHARTS / "08-list.yaml")
    assert listed.resources == 1


# -- reading -----------------------------------------------------------------------------


def test_without_app_says_which_rules_needed_it() -> None:
    """Without --app the report lists the rules that compare with the app."""
    code, out, _ = _main(str(RULES / "grace-period-bad.yaml"))
    assert code == 0
    assert "not checked without --app MODULE:ATTR: grace-period, readiness-reaction" in out
    code, out, _ = _main(str(RULES / "grace-period-bad.yaml"), "--app", f"{APPS}:drained")
    assert code == 1
    assert "not checked" not in out


def test_defaults_are_the_kubernetes_ones() -> None:
    """Absent fields count as Kubernetes' defaults: grace 30 s, probe 10 x 3 + 1 s."""
    text = """
kind: Pod
metadata: {name: p}
spec:
  containers:
    - name: c
      ports: [{containerPort: 8081}]
      lifecycle: {preStop: {sleep: {seconds: 2}}}
      readinessProbe: {httpGet: {path: /readyz, port: 8081}}
"""
    grace, reaction = lint_text(text, app=load_app(f"{APPS}:drained")).findings
    assert (grace.rule, reaction.rule) == ("grace-period", "readiness-reaction")
    assert "30s (default) is shorter than preStop 2s + the app's shutdown budget 30s" in grace.why
    assert "up to 31s" in reaction.why


@pytest.mark.parametrize(
    ("hook", "seconds"),
    [
        ({"sleep": {"seconds": 7}}, 7.0),
        ({"exec": {"command": ["sleep", "7"]}}, 7.0),
        ({"exec": {"command": ["/bin/sleep", "7s"]}}, 7.0),
        ({"exec": {"command": ["/bin/sh", "-c", "sleep 7"]}}, 7.0),
        ({"exec": {"command": ["sh", "-c", "sleep 7 && kill -USR1 1"]}}, 7.0),
        ({"exec": {"command": ["nginx", "-s", "quit"]}}, 0.0),
        ({"httpGet": {"path": "/drain", "port": 8081}}, 0.0),
    ],
)
def test_prestop_length_is_read(hook: dict[str, Any], seconds: float) -> None:
    """preStop sleep, exec sleep, a shell's sleep; a hook of unknown length counts 0."""
    assert lint._prestop({"lifecycle": {"preStop": hook}}) == seconds
    assert lint._prestop({}) is None


def test_odd_documents_are_skipped() -> None:
    """Empty documents, scalars, kinds without pods and pods without spec are no crash."""
    text = "---\n---\n42\n---\nkind: Service\nspec: {}\n---\nkind: Deployment\n---\nkind: Pod\n"
    report = lint_text(text)
    assert (report.findings, report.resources) == ((), 0)


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    """A YAML error exits 2 with file:line:column."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nspec:\n  containers:\n    - name: a\n   bad: [1\n")
    code, out, err = _main(str(bad))
    assert (code, out) == (2, "")
    assert f"{bad}:5:4: not valid YAML" in err
    assert "not valid YAML" in err


def test_missing_file_exits_2(tmp_path: Path) -> None:
    """A manifest that does not exist exits 2, naming it."""
    code, _, err = _main(str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read" in err
    assert "nope.yaml" in err


def test_bad_app_exits_2() -> None:
    """An --app that cannot be loaded exits 2."""
    code, _, err = _main(str(RULES / "grace-period-good.yaml"), "--app", "tests.procs.k8s_apps")
    assert code == 2
    assert "MODULE:ATTRIBUTE" in err


def test_missing_pyyaml_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyYAML: a LintError naming the [k8s] extra."""
    real = builtins.__import__

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(LintError, match=r"pip install 'lifecycle\[k8s\]'"):
        lint_text("kind: Pod")


def test_json_format() -> None:
    """--format json: the findings and counts, for CI."""
    code, out, _ = _main(str(CHARTS / "11-deployment-app-port.yaml"), "--format", "json")
    data = json.loads(out)
    assert code == 1
    assert (data["errors"], data["warnings"], data["resources"]) == (1, 0, 1)
    assert data["findings"][0]["rule"] == "readiness-path"
    assert set(data["findings"][0]) == {
        "rule", "severity", "source", "resource", "container", "path", "why", "fix",
    }  # fmt: skip


# -- the real command line ----------------------------------------------------------------


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lifecycle", "k8s", "lint", *argv]
    return subprocess.run(
        command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.process
def test_cli_exit_codes() -> None:
    """The real CLI: 0 clean, 1 an error finding, 2 unreadable input."""
    assert (
        _cli(str(CHARTS / "01-deployment-sidecar.yaml"), "--app", f"{APPS}:drained").returncode == 0
    )
    failing = _cli(str(CHARTS / "02-statefulset.yaml"))
    assert failing.returncode == 1
    assert "StatefulSet/ledger container ledger: error [liveness-drain]" in failing.stdout
    assert _cli("tests/k8s/absent.yaml").returncode == 2


@pytest.mark.process
def test_cli_json_over_several_files() -> None:
    """The real CLI with several files and --format json adds them up."""
    done = _cli(
        *(str(p) for p in sorted(CHARTS.glob("*.yaml"))),
        "--app",
        f"{APPS}:drained",
        "--format",
        "json",
    )
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    expected = [f for (_, app), fs in CHART_FINDINGS.items() if app == "drained" for f in fs]
    assert data["errors"] + data["warnings"] == len(expected)


def test_app_without_health_endpoint_flags_each_probe() -> None:
    """--app for an app with no health endpoint: each probe is on one of its own servers."""
    report = _lint(RULES / "grace-period-good.yaml", "no_health")
    ports = [f for f in report.findings if f.rule == "probe-port"]
    assert [f.path.rsplit(".", 2)[-2] for f in ports] == ["readinessProbe", "livenessProbe"]
    assert "App(health=('0.0.0.0', 8081))" in ports[0].fix

"""`App`: registration, its errors, names, dependencies, plan and report."""

from __future__ import annotations

import math
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lifecycle import (
    App,
    AppState,
    CancelToken,
    ComponentState,
    ConfigError,
    CycleError,
    DuplicateComponent,
    NotAComponent,
    ShutdownPlan,
    UnknownDependency,
)
from lifecycle._core.tokens import on_cancel_inline
from lifecycle._core.views import AppView, ShutdownView


class Database:
    def start(self, token: CancelToken) -> None:
        pass

    def stop(self, token: CancelToken) -> None:
        pass


class Api:
    async def run(self, token: CancelToken) -> None:
        await token.wait_async()


# -- registration errors ------------------------------------------------------------


def test_duplicate_name_is_rejected_at_once():
    """A name registered twice raises DuplicateComponent naming it and the way out."""
    app = App()
    app.add(Database(), name="db")
    with pytest.raises(DuplicateComponent) as caught:
        app.add(Database(), name="db")
    assert caught.value.name == "db"
    assert str(caught.value) == (
        "a component named 'db' is already registered; pass a different name= to app.add(...)"
    )
    assert list(app.components) == ["db"]


def test_same_object_twice_is_a_duplicate():
    """Registering one object twice (even under another name) is a DuplicateComponent."""
    app = App()
    db = app.add(Database(), name="db")
    with pytest.raises(DuplicateComponent) as caught:
        app.add(db, name="db2")
    assert caught.value.name == "db"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (object(), "it has no start, run or stop method; give it a start(token)"),
        (42, "it has no start, run or stop method"),
        (lambda: None, "decorate a function with @app.worker or @app.resource"),
        (Database, "'Database' is a class; register an instance: app.add(Database())"),
    ],
    ids=["object", "int", "function", "class"],
)
def test_not_a_component_is_rejected_with_a_hint(obj, message):
    """Objects without start/run/stop, and classes, raise NotAComponent saying what to do."""
    app = App()
    with pytest.raises(NotAComponent) as caught:
        app.add(obj)
    assert message in str(caught.value)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, ConfigError)
    assert not app.components


def test_non_callable_phase_attribute_is_rejected():
    """A ``start`` that is not a method names the attribute and its type."""

    class Odd:
        start = 3

    with pytest.raises(NotAComponent, match="its 'start' attribute is an int, not a method"):
        App().add(Odd(), name="odd")


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, "5", None, True])
@pytest.mark.parametrize("option", ["start_timeout", "stop_timeout"])
def test_bad_component_timeouts_are_rejected(option, bad):
    """Negative, NaN, bool and non-number timeouts raise ConfigError at add()."""
    app = App()
    kwargs: dict[str, Any] = {option: bad}
    if bad is None:  # None means "the app's default" for a component
        app.add(Database(), **kwargs)
        return
    with pytest.raises(ConfigError, match=f"{option} of 'database'"):
        app.add(Database(), **kwargs)
    assert not app.components


@pytest.mark.parametrize("bad", [-1, math.nan, "30", None, False])
@pytest.mark.parametrize(
    "option", ["shutdown_timeout", "drain_delay", "stop_timeout", "start_timeout"]
)
def test_bad_app_timeouts_are_rejected(option, bad):
    """The app's own timeouts must be numbers >= 0; the message names the option."""
    kwargs: dict[str, Any] = {option: bad}
    with pytest.raises(ConfigError, match=option):
        App(**kwargs)


def test_infinite_and_zero_timeouts_are_allowed():
    """math.inf means no limit; 0 is a legal (if harsh) bound."""
    app = App(shutdown_timeout=math.inf, drain_delay=0)
    app.add(Database(), stop_timeout=math.inf, start_timeout=0)
    assert app.shutdown_timeout == math.inf


@pytest.mark.parametrize("huge", [threading.TIMEOUT_MAX, 1e10, 1e308])
def test_timeouts_no_thread_can_wait_are_no_limit(huge):
    """A timeout of threading.TIMEOUT_MAX (292 years) or more is math.inf, app and component."""
    app = App(shutdown_timeout=huge, stop_timeout=huge, start_timeout=huge, drain_delay=huge)
    app.add(Database(), stop_timeout=huge, start_timeout=huge)
    assert (app.shutdown_timeout, app.stop_timeout, app.start_timeout, app.drain_delay) == (
        math.inf, math.inf, math.inf, math.inf,
    )  # fmt: skip
    assert app.plan().worst_case == math.inf
    below = threading.TIMEOUT_MAX / 2
    assert App(shutdown_timeout=below).shutdown_timeout == below


@pytest.mark.parametrize("health", ["8081", 70000, -1, True, ("host",), ("h", "80"), 1.5])
def test_bad_health_is_rejected(health):
    """health takes a port, a (host, port) tuple or None; the message shows an example."""
    with pytest.raises(ConfigError, match=r"e\.g\. health=8081"):
        App(health=health)


@pytest.mark.parametrize(
    ("health", "address"),
    [(None, None), (8081, ("127.0.0.1", 8081)), (("0.0.0.0", 9000), ("0.0.0.0", 9000))],
)
def test_health_address(health, address):
    """A bare port listens on loopback; a tuple is taken as is."""
    assert App(health=health).health_address == address


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_names_are_rejected(name):
    """App and component names must be non-empty strings."""
    with pytest.raises(ConfigError, match="non-empty str"):
        App(name)
    with pytest.raises(ConfigError, match="non-empty str"):
        App().add(Database(), name=name if name is not None else "")


# -- names and dependencies ------------------------------------------------------------


def test_default_names_are_readable_and_unique():
    """Instances are named after their class in lower case, with -2, -3 for repeats."""
    app = App()
    app.add(Database())
    app.add(Database())
    app.add(Database())

    @app.worker
    def mailer(token: CancelToken) -> None:
        pass

    @app.resource
    def pool():
        yield

    assert list(app.components) == ["database", "database-2", "database-3", "mailer", "pool"]


def test_a_server_given_a_name_is_registered_under_it():
    """``HTTPServer(..., name="api")`` is component "api"; ``add(name=)`` still wins."""
    import http.server  # noqa: PLC0415

    import lifecycle  # noqa: PLC0415

    def wsgi(environ: Any, start_response: Any) -> list[bytes]:
        return []

    async def echo(reader: Any, writer: Any) -> None:
        pass

    handler = http.server.BaseHTTPRequestHandler
    app = App()
    app.add(lifecycle.HTTPServer(handler, ("127.0.0.1", 0), name="api"))
    app.add(lifecycle.WSGIServer(wsgi, ("127.0.0.1", 0), name="web"), depends_on=["api"])
    app.add(lifecycle.HTTPServer(handler, ("127.0.0.1", 0), name="ignored"), name="admin")
    app.add(lifecycle.HTTPServer(handler, ("127.0.0.1", 0)))  # no name: the class's
    app.add(lifecycle.AsyncStreamServer(echo, name="stream"))
    assert list(app.components) == ["api", "web", "admin", "httpserver", "stream"]
    with pytest.raises(DuplicateComponent, match="'api'"):
        app.add(lifecycle.TCPServer(socketserver.BaseRequestHandler, ("127.0.0.1", 0), name="api"))


def test_depends_on_takes_names_objects_and_a_single_string():
    """depends_on accepts names, the registered objects, and one bare string."""
    app = App()
    db = app.add(Database(), name="db")
    app.add(Api(), name="api", depends_on=[db])

    @app.worker(depends_on="api")
    def w(token: CancelToken) -> None:
        pass

    @app.worker(depends_on=[w, "db"])
    def w2(token: CancelToken) -> None:
        pass

    graph = app.graph()
    assert graph.depends_on["api"] == ("db",)
    assert graph.depends_on["w"] == ("api",)
    assert graph.depends_on["w2"] == ("w", "db")
    assert app.start_order() == ["db", "api", "w", "w2"]


def test_dependencies_may_be_registered_later():
    """A dependency named before it is registered is resolved at start_order()."""
    app = App()
    app.add(Api(), name="api", depends_on=["db"])
    app.add(Database(), name="db")
    assert app.start_order() == ["db", "api"]


def test_unknown_dependency_and_cycle_are_reported_by_start_order():
    """start_order() raises UnknownDependency (with a suggestion) and CycleError (.cycle)."""
    app = App()
    app.add(Database(), name="db")
    app.add(Api(), name="api", depends_on=["dbb"])
    with pytest.raises(UnknownDependency) as unknown:
        app.start_order()
    assert (unknown.value.component, unknown.value.dependency) == ("api", "dbb")
    assert unknown.value.suggestion == "db"

    app = App()
    app.add(Database(), name="a", depends_on=["c"])
    app.add(Database(), name="b", depends_on=["a"])
    app.add(Database(), name="c", depends_on=["b"])
    with pytest.raises(CycleError) as cycle:
        app.start_order()
    assert cycle.value.cycle[0] == cycle.value.cycle[-1]
    assert sorted(cycle.value.cycle[:-1]) == ["a", "b", "c"]


def test_unregistered_object_as_dependency_is_unknown():
    """A dependency given as an object that was never registered is an UnknownDependency."""
    app = App()
    app.add(Api(), name="api", depends_on=[Database()])
    with pytest.raises(UnknownDependency, match="component 'api' depends on 'database'"):
        app.start_order()


def test_lifecycle_bind_is_called_once_at_add():
    """A component's lifecycle_bind(app) is called once, when it is added."""
    bound: list[App] = []

    class Server(Database):
        def lifecycle_bind(self, app: App) -> None:
            bound.append(app)

    app = App()
    app.add(Server())
    assert bound == [app]


# -- introspection ----------------------------------------------------------------------


def test_components_are_read_only_and_start_new():
    """app.components maps names to ComponentInfo in registration order; it is read-only."""
    app = App()
    app.add(Database(), name="db", critical=False)
    info = app.components["db"]
    assert info.state is ComponentState.NEW
    assert info.critical is False
    assert info.error is None
    with pytest.raises(TypeError):
        app.components["x"] = info  # type: ignore[index]
    assert app.state is AppState.NEW
    assert repr(app) == "<App 'app' NEW components=1>"


def _chain_app() -> App:
    app = App("shop", drain_delay=5, shutdown_timeout=30, stop_timeout=10)
    db = app.add(Database(), name="db")
    app.add(Database(), name="cache", stop_timeout=2)
    api = app.add(Api(), name="api", depends_on=[db, "cache"])
    app.add(Api(), name="edge", depends_on=[api], stop_timeout=1)
    return app


def test_plan_follows_the_heaviest_chain():
    """plan(): drain + the heaviest chain of stop timeouts, in stop order."""
    plan = _chain_app().plan()
    assert plan == ShutdownPlan(
        drain_delay=5,
        path=("edge", "api", "db"),
        path_timeouts=(1, 10, 10),
        worst_case=26,
        shutdown_timeout=30,
    )
    assert plan.fits
    assert plan.describe() == (
        "drain 5s + edge 1s -> api 10s -> db 10s = 26s, fits shutdown_timeout 30s"
    )


def test_plan_that_overruns_says_so():
    """A chain longer than shutdown_timeout does not fit; describe() says OVERRUNS."""
    app = App(shutdown_timeout=15, stop_timeout=10)
    db = app.add(Database(), name="db")
    app.add(Database(), name="api", depends_on=[db])
    plan = app.plan()
    assert not plan.fits
    assert plan.describe() == "drain 0s + api 10s -> db 10s = 20s, OVERRUNS shutdown_timeout 15s"


def test_plan_of_an_empty_app():
    """An empty app's plan is just the drain delay."""
    plan = App(drain_delay=2).plan()
    assert (plan.path, plan.worst_case, plan.fits) == ((), 2, True)
    assert plan.describe() == "drain 2s + nothing = 2s, fits shutdown_timeout 30s"


def test_report_shape_before_running():
    """report() is JSON-ready: app fields and one entry per component."""
    app = _chain_app()
    report = app.report()
    assert report == {
        "app": "shop",
        "state": "new",
        "ready": False,
        "exit_code": None,
        "shutdown_reason": None,
        "shutdown_timeout": 30.0,
        "drain_delay": 5.0,
        "phases": {},
        "components": {
            name: {
                "state": "new",
                "critical": True,
                "error": None,
                "timed_out": None,
                "start_seconds": None,
                "stop_seconds": None,
                "start_at": None,
                "stop_at": None,
                "depends_on": deps,
                "start_timeout": 30.0,
                "stop_budget": budget,
                "stop_called": False,
                "restarts": 0,
                "next_restart_in": None,
            }
            for name, deps, budget in (
                ("db", [], 10.0),
                ("cache", [], 2.0),
                ("api", ["db", "cache"], 10.0),
                ("edge", ["api"], 1.0),
            )
        },
    }


def test_request_shutdown_before_running():
    """request_shutdown is idempotent: first reason wins, deadline set, token cancelled soon."""
    app = App(shutdown_timeout=7)
    before = (app.shutdown_reason, app.shutdown_deadline, app.shutdown_token.cancelled)
    assert before == (None, None, False)
    app.request_shutdown("first")
    deadline = app.shutdown_deadline
    app.request_shutdown("second")
    assert not app.ready
    assert deadline is not None
    assert (app.shutdown_reason, app.shutdown_deadline) == ("first", deadline)
    assert app.shutdown_token.cancelled  # a plain call returns once the cancel is done
    assert app.shutdown_token.reason == "first"


def where() -> str:
    return threading.current_thread().name


def test_request_shutdown_without_a_runner_cancels_on_the_deferred_thread():
    """With no runner, shutdown_token is cancelled by lifecycle-deferred, never by the caller."""
    app = App()
    cancelled_in: list[str] = []
    on_cancel_inline(app.shutdown_token, lambda: cancelled_in.append(where()))
    app.request_shutdown("deploy")
    assert cancelled_in == ["lifecycle-deferred"]


def test_request_shutdown_needs_a_str_reason():
    """A reason that is not a str is refused at once, naming its type; nothing is recorded."""
    app = App()
    with pytest.raises(TypeError, match="reason must be a str, not int"):
        app.request_shutdown(15)  # type: ignore[arg-type]
    assert app.shutdown_reason is None


def test_app_is_the_view_serving_is_typed_against():
    """App satisfies the core's ShutdownView and AppView: serving depends on those only."""
    app = App("shop", shutdown_timeout=7)
    shutdown: ShutdownView = app
    view: AppView = app
    assert (shutdown.name, shutdown.shutdown_deadline, view.state) == ("shop", None, AppState.NEW)
    app.request_shutdown("deploy")
    assert view.shutdown_reason == "deploy"
    assert shutdown.shutdown_token.cancelled  # no runner: cancelled before it returns


def test_an_app_is_claimed_once():
    """The run of an App is handed to one driver; a second claim says to build a new App."""
    app = App("shop")
    app._claim()
    with pytest.raises(ConfigError, match="an App runs once: build a new App to run again"):
        app._claim()


def test_value_of_unknown_component_is_a_key_error():
    """app.value() of something not registered names what is."""
    app = App("shop")
    app.add(Database(), name="db")
    with pytest.raises(KeyError, match="registered: db"):
        app.value("nope")
    assert app.value("db") is None


# -- decorators ---------------------------------------------------------------------------


def test_worker_decorator_with_and_without_arguments():
    """@app.worker and @app.worker(...) both register and return the function."""
    app = App()

    @app.worker
    def plain(token: CancelToken) -> None:
        pass

    @app.worker(name="named", depends_on=[plain], stop_timeout=3, critical=False)
    async def configured(token: CancelToken) -> None:
        pass

    assert callable(plain)
    assert plain.__name__ == "plain"
    assert list(app.components) == ["plain", "named"]
    assert app.components["named"].critical is False
    assert app._stop_timeout("named") == 3
    assert app.graph().depends_on["named"] == ("plain",)


def test_resource_decorator_with_and_without_arguments():
    """@app.resource and @app.resource(...) both register and return the function."""
    app = App()

    @app.resource
    def pool() -> Iterator[str]:
        yield "p"

    @app.resource(name="client", depends_on=[pool], start_timeout=2)
    async def client():
        yield "c"

    assert list(app.components) == ["pool", "client"]
    assert app._start_timeout("client") == 2
    assert app._start_timeout("pool") == 30


def test_decorators_reject_the_wrong_kind_of_function():
    """A generator given to worker, or a plain function to resource, says which to use."""
    app = App()

    def gen(token: CancelToken) -> Iterator[None]:
        yield

    def plain(token: CancelToken) -> None:
        pass

    with pytest.raises(NotAComponent, match=r"use @app\.resource for"):
        app.worker(gen)
    with pytest.raises(NotAComponent, match=r"use @app\.worker$"):
        app.resource(plain)
    assert not app.components


def test_zero_argument_methods_are_components():
    """start()/stop() without a token parameter are accepted (called without one)."""

    class Closer:
        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

    app = App()
    app.add(Closer())
    component = app._blueprint().components["closer"]
    assert component.start is not None
    assert not component.start.takes_token


def test_methods_with_two_required_arguments_are_rejected():
    """A phase needing more than the token is a ConfigError naming the arguments."""

    class Greedy:
        def start(self, token: CancelToken, other: Any) -> None:
            pass

    with pytest.raises(ConfigError, match=r"greedy\.start\(\) takes 2 required arguments"):
        App().add(Greedy())


def test_adding_after_start_is_refused():
    """Once frozen by a runner, the app refuses new components with a clear message."""
    app = App("shop")
    app._claim()
    with pytest.raises(ConfigError, match="has already started; declare every component"):
        app.add(Database())


# -- restart policies and periodic jobs ----------------------------------------------------


def test_add_takes_a_restart_mode_or_policy_for_run_style_components():
    """restart= is recorded on the component's info; the default is no policy at all."""
    from lifecycle._core.restart import RestartPolicy  # noqa: PLC0415 - not exported yet

    app = App()

    @app.worker(restart="on-failure")
    def listen(token):
        token.wait()

    policy = RestartPolicy("always", max_restarts=3, within=30)

    @app.worker(restart=policy)
    def poll(token):
        token.wait()

    @app.worker
    def plain(token):
        token.wait()

    infos = app.components
    assert infos["listen"].restart_policy == RestartPolicy("on-failure")
    assert infos["poll"].restart_policy is policy
    assert infos["plain"].restart_policy is None
    assert app.report()["components"]["poll"]["restarts"] == 0


def test_add_refuses_an_unknown_restart_mode():
    """A restart= that is no mode and no RestartPolicy names the component and the choices."""
    app = App()
    with pytest.raises(ConfigError) as caught:

        @app.worker(name="w", restart="sometimes")  # type: ignore[call-overload]
        def w(token):
            pass

    assert str(caught.value) == (
        "restart='sometimes' of 'w' is not a restart policy: use one of 'never', "
        "'on-failure', 'always' or a RestartPolicy"
    )
    assert "w" not in app.components


def test_the_report_is_strict_json_with_unbounded_timeouts_and_a_cut_of_ones_own():
    """drain_delay and shutdown_timeout of math.inf are None in the report; a DeadlineExceeded
    subclass that sets no ``cut`` still reports (nothing named)."""
    import json  # noqa: PLC0415
    import math  # noqa: PLC0415

    from lifecycle import DeadlineExceeded, ThreadedRunner  # noqa: PLC0415

    class OwnCut(DeadlineExceeded):
        def __init__(self) -> None:
            TimeoutError.__init__(self, "gave up")

    class Part:
        def stop(self, token: object) -> None:
            raise OwnCut

    app = App("shop", drain_delay=math.inf, shutdown_timeout=math.inf, stop_timeout=math.inf)
    app.add(Part(), name="part")
    report = app.report()
    json.dumps(report, allow_nan=False)
    assert (report["drain_delay"], report["shutdown_timeout"]) == (None, None)
    assert report["components"]["part"]["stop_budget"] is None

    app = App("shop")
    app.add(Part(), name="part")
    runner = ThreadedRunner(app, signals=None)
    runner.start()
    assert runner.stop() == 3
    report = app.report()
    json.dumps(report, allow_nan=False)
    assert report["components"]["part"]["error"] == "OwnCut: gave up"
    assert "cut" not in report["components"]["part"]

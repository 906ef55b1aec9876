"""The dependency graph: validation, its error messages, dependents, critical path."""

from __future__ import annotations

import pytest

from lifecycle import ConfigError, CycleError, DuplicateComponent, UnknownDependency
from lifecycle._core.graph import analyze, critical_path


def test_dependencies_come_before_their_users():
    """Every name in the order comes after all of its dependencies."""
    graph = analyze({"api": ("db", "cache"), "cache": ("db",), "db": ()})
    position = {name: i for i, name in enumerate(graph.order)}
    assert position["db"] < position["cache"] < position["api"]


def test_empty_declaration_is_an_empty_graph():
    """Nothing declared is a valid, empty graph."""
    graph = analyze({})
    assert (graph.order, graph.layers, dict(graph.depends_on)) == ((), (), {})


def test_repeated_dependency_counts_once():
    """A dependency named twice is kept once, in declaration order."""
    graph = analyze({"db": (), "cache": (), "api": ("db", "cache", "db")})
    assert graph.depends_on["api"] == ("db", "cache")
    assert graph.dependents["db"] == ("api",)


def test_dependents_are_the_reverse_edges():
    """dependents maps each name to the names that depend on it, in registration order."""
    graph = analyze({"db": (), "api": ("db",), "worker": ("db",), "admin": ("api",)})
    assert dict(graph.dependents) == {
        "db": ("api", "worker"),
        "api": ("admin",),
        "worker": (),
        "admin": (),
    }


def test_two_node_cycle_is_drawn_with_arrows():
    """A loop of two raises CycleError drawing `api -> cache -> api`, with `.cycle`."""
    with pytest.raises(CycleError) as caught:
        analyze({"api": ("cache",), "cache": ("api",)})
    assert caught.value.cycle == ["api", "cache", "api"]
    assert str(caught.value) == (
        "dependency cycle: api -> cache -> api (each depends on the next); "
        "remove one of these depends_on links to break the loop"
    )


def test_cycle_drawing_starts_at_the_earliest_registered_member():
    """The loop is drawn from its earliest-registered name, whatever the entry point."""
    with pytest.raises(CycleError) as caught:
        analyze({"cache": ("web",), "web": ("db",), "db": ("cache",)})
    assert caught.value.cycle == ["cache", "web", "db", "cache"]


def test_cycle_is_found_among_valid_components():
    """Only the names in the loop are drawn, not the valid ones around it."""
    with pytest.raises(CycleError) as caught:
        analyze({"ok": (), "x": ("ok", "y"), "y": ("x",), "tail": ("x",)})
    assert caught.value.cycle == ["x", "y", "x"]


def test_self_dependency_is_a_cycle():
    """A component depending on itself is a loop of one."""
    with pytest.raises(CycleError) as caught:
        analyze({"a": ("a",)})
    assert caught.value.cycle == ["a", "a"]
    assert str(caught.value).startswith("dependency cycle: a -> a (each depends on the next)")


def test_unknown_dependency_names_asker_missing_and_closest():
    """UnknownDependency names the missing name, the asker and the closest registered name."""
    with pytest.raises(UnknownDependency) as caught:
        analyze({"db": (), "api": ("dbb",)})
    error = caught.value
    assert (error.component, error.dependency, error.suggestion) == ("api", "dbb", "db")
    assert str(error) == (
        "component 'api' depends on 'dbb', which is not registered "
        "(did you mean 'db'? registered: api, db); add it with app.add(...) or fix the name"
    )


def test_unknown_dependency_without_a_close_name():
    """With nothing close, the message lists what is registered and suggests nothing."""
    with pytest.raises(UnknownDependency) as caught:
        analyze({"api": ("zzz",)})
    assert caught.value.suggestion is None
    assert str(caught.value) == (
        "component 'api' depends on 'zzz', which is not registered "
        "(registered: api); add it with app.add(...) or fix the name"
    )


def test_first_unknown_dependency_in_registration_order_is_reported():
    """Of several unknown names, the first registered asker's is reported."""
    with pytest.raises(UnknownDependency) as caught:
        analyze({"b": ("nope",), "a": ("missing",)})
    assert (caught.value.component, caught.value.dependency) == ("b", "nope")


def test_unknown_dependency_wins_over_a_cycle():
    """Names are checked before loops: a typo is reported even inside a cycle."""
    with pytest.raises(UnknownDependency):
        analyze({"a": ("b",), "b": ("a", "c_typo")})


def test_duplicate_component_message():
    """DuplicateComponent names the duplicate and the way out."""
    error = DuplicateComponent("db")
    assert error.name == "db"
    assert str(error) == (
        "a component named 'db' is already registered; pass a different name= to app.add(...)"
    )


def test_config_errors_are_value_errors():
    """Every ConfigError is a ValueError, so `except ValueError` catches it."""
    with pytest.raises(ValueError, match="dependency cycle"):
        analyze({"a": ("b",), "b": ("a",)})
    assert issubclass(UnknownDependency, ConfigError)
    assert issubclass(DuplicateComponent, ConfigError)


def test_critical_path_is_the_heaviest_chain_in_stop_order():
    """critical_path returns the heaviest dependents-to-root chain, first stopped first."""
    graph = analyze({"db": (), "cache": (), "api": ("db", "cache"), "worker": ("db",)})
    weights = {"db": 1.0, "cache": 5.0, "api": 2.0, "worker": 4.0}
    assert critical_path(graph, weights.__getitem__) == (7.0, ("api", "cache"))


def test_critical_path_of_independent_components_is_the_slowest_one():
    """Independent components stop concurrently: the path is the single heaviest."""
    graph = analyze({"a": (), "b": (), "c": ()})
    weights = {"a": 3.0, "b": 9.0, "c": 1.0}
    assert critical_path(graph, weights.__getitem__) == (9.0, ("b",))


def test_critical_path_of_an_empty_graph():
    """An empty graph has an empty critical path of length 0."""
    assert critical_path(analyze({}), lambda _: 1.0) == (0.0, ())

"""Policy registry: built-ins by name, third-party policies through the ``dpf_sched.policies`` entry points."""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint

import pytest

from dpf_sched.errors import UnknownPolicyError
from dpf_sched.policies import registry
from dpf_sched.policies.drf import DRF


def test_builtins_are_registered() -> None:
    assert {"fcfs", "drf", "dpf-n", "dpf-t", "rr-n", "rr-t"} <= set(registry.available())


def test_entry_points_of_this_package_name_the_builtins() -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"fcfs", "drf", "dpf-n", "dpf-t", "rr-n", "rr-t"} <= names


def test_third_party_entry_point_is_discovered(monkeypatch, caplog) -> None:
    good = EntryPoint(name="vendor-drf", value="dpf_sched.policies.drf:DRF", group=registry.ENTRY_POINT_GROUP)
    broken = EntryPoint(name="broken", value="no_such_module_xyz:Policy", group=registry.ENTRY_POINT_GROUP)
    not_policy = EntryPoint(name="not-policy", value="dpf_sched.errors:DpfSchedError", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [good, broken, not_policy])
    registry.refresh()
    try:
        with caplog.at_level(logging.WARNING):
            found = registry.available()
        assert found["vendor-drf"] is DRF
        assert "broken" not in found and "not-policy" not in found
        assert isinstance(registry.create_policy("vendor-drf"), DRF)
        assert "broken" in caplog.text
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_unknown_policy_lists_the_available_ones() -> None:
    with pytest.raises(UnknownPolicyError, match=r"available: .*dpf-n"):
        registry.create_policy("no-such-policy")

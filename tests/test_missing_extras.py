"""A feature whose optional extra is not installed says which extra to install (CLI: ``error: …``, exit status 2),
never a ``ModuleNotFoundError`` traceback. Missing modules are simulated: ``sys.modules[name] = None`` in process,
a meta-path blocker in a subprocess (a fresh interpreter, as on a machine without the extra)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dpf_sched.cli import main
from dpf_sched.extras import EXTRAS, MissingExtraError, import_extra, require_extra, requires_extra

ROOT = Path(__file__).resolve().parents[1]

# Modules of ours that import an extra at import time: dropped from sys.modules while a test blocks the extra,
# so that the import really runs again (monkeypatch puts them back afterwards).
_DEPENDENTS = ("dpf_sched.service", "dpf_sched.client", "dpf_sched.integrations.opacus")


def _block(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in _DEPENDENTS):
            monkeypatch.delitem(sys.modules, name)
    for module in EXTRAS[extra]:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` → ModuleNotFoundError


def _assert_clean(res: Result, extra: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and f"pip install 'dpf-sched[{extra}]'" in res.output, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


def test_the_extras_are_the_ones_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(declared) - {"docs", "dev"}


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_every_extra_missing_is_a_typed_error_with_the_pip_command(monkeypatch: pytest.MonkeyPatch, extra: str) -> None:
    _block(monkeypatch, extra)
    with pytest.raises(MissingExtraError, match=rf"pip install 'dpf-sched\[{extra}\]'") as info:
        require_extra(extra)
    assert info.value.extra == extra and info.value.module == EXTRAS[extra][0]
    assert isinstance(info.value, ImportError)  # code that guards optional imports keeps working
    with pytest.raises(MissingExtraError, match=extra):
        import_extra(EXTRAS[extra][-1], extra)
    with pytest.raises(MissingExtraError, match=extra), requires_extra(extra):
        importlib.import_module(EXTRAS[extra][0])


def test_requires_extra_lets_other_import_errors_through() -> None:
    with pytest.raises(ModuleNotFoundError) as info, requires_extra("plot"):
        importlib.import_module("no_such_module_dpf_sched_test")
    assert not isinstance(info.value, MissingExtraError)
    with pytest.raises(ValueError, match="unknown extra"):
        require_extra("nope")


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--db", "DB", "--policy", "fcfs"],
        ["tokens", "create", "--db", "DB", "--tenant", "team-a"],
        ["tokens", "create", "--db", "DB", "--tenant", "root", "--admin"],
        ["tokens", "list", "--db", "DB"],
        ["tokens", "revoke", "--db", "DB", "dpf_x"],
    ],
)
def test_service_commands_without_the_service_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str]
) -> None:
    _block(monkeypatch, "service")
    db = tmp_path / "budget.db"
    res = CliRunner().invoke(main, [f"sqlite:///{db}" if a == "DB" else a for a in args])
    _assert_clean(res, "service")
    assert not db.exists()  # refused before anything was created


def test_service_library_imports_without_the_service_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("dpf_sched.service", "dpf_sched.client"):
        _block(monkeypatch, "service")
        with pytest.raises(MissingExtraError, match=r"pip install 'dpf-sched\[service\]'"):
            importlib.import_module(module)


def test_postgres_ledger_without_the_postgres_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "postgres")
    res = CliRunner().invoke(main, ["ledger", "init", "--db", "postgresql://nobody@127.0.0.1:1/none"])
    _assert_clean(res, "postgres")


def test_compare_without_the_plot_extra_fails_before_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _block(monkeypatch, "plot")
    out = tmp_path / "res"
    args = ["compare", "--policies", "fcfs", "--n", "1", "--wparam", "duration=20", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    _assert_clean(res, "plot")
    assert "--no-plots" in res.output and not out.exists()
    res = CliRunner().invoke(main, [*args, "--no-plots", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "granted.csv").exists() and not (out / "granted.png").exists()
    rep = CliRunner().invoke(main, ["reproduce", "fig6a", "--out", str(tmp_path / "fig")])
    _assert_clean(rep, "plot")
    assert not (tmp_path / "fig").exists()


def test_ray_backend_without_the_ray_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _block(monkeypatch, "ray")
    res = CliRunner().invoke(main, ["compare", "--backend", "ray", "--no-plots", "--out", str(tmp_path)])
    _assert_clean(res, "ray")
    assert "--backend joblib" in res.output


_BLOCKER = """
import sys
BLOCKED = set(sys.argv[1].split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
del sys.argv[1]
"""


def _fresh(blocked: tuple[str, ...], code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + code, ",".join(blocked), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_serve_in_a_fresh_interpreter_without_fastapi(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'b.db'}"
    run = _fresh(("fastapi",), "from dpf_sched.cli import main; main()", "serve", "--db", db, "--policy", "fcfs")
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and "pip install 'dpf-sched[service]'" in run.stderr
    assert "Traceback" not in run.stderr


def test_opacus_integration_in_a_fresh_interpreter_without_torch() -> None:
    code = (
        "from dpf_sched.extras import MissingExtraError\n"
        "try:\n    import dpf_sched.integrations.opacus\n"
        "except MissingExtraError as e:\n    print(e.extra, e)\n"
    )
    for blocked in (("torch",), ("opacus",)):
        run = _fresh(blocked, code)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("opacus ") and "pip install 'dpf-sched[opacus]'" in run.stdout, run.stdout

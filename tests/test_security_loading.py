"""Safe loading: YAML is loaded safely, ``uses`` and ``auth`` import only what the config names,
nothing is unpickled, and in a local run only the gateway binds the public host."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from plait import Deployment, Flow
from plait.config import ExecutorConfig, load_executor_yaml, load_yaml
from plait.errors import ConfigError
from plait.executor.loader import load_executor, resolve_executor_class
from plait.security.auth import load_check

SRC = Path(__file__).resolve().parent.parent / "src" / "plait"


@pytest.mark.parametrize(
    "payload",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system",
    ],
)
def test_yaml_tags_that_run_code_are_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    flow_yml = tmp_path / "flow.yml"
    flow_yml.write_text(f"jtype: Flow\nwith:\n  title: {payload.format(marker=marker)}\nexecutors: []\n")
    executor_yml = tmp_path / "executor.yml"
    executor_yml.write_text(f"jtype: Echo\nwith:\n  greeting: {payload.format(marker=marker)}\n")
    for load in (
        lambda: Flow.load_config(flow_yml),
        lambda: load_executor_yaml(executor_yml),
        lambda: load_yaml(flow_yml),
    ):
        with pytest.raises(ConfigError, match="invalid YAML"):
            load()
    assert not marker.exists()


def test_uses_imports_only_what_the_config_names(tmp_path: Path) -> None:
    (tmp_path / "named_mod.py").write_text("from plait import Executor\nclass Named(Executor):\n    pass\n")
    (tmp_path / "bystander_mod.py").write_text("raise SystemExit('imported without being named')\n")
    executor = load_executor(ExecutorConfig(uses="Named", py_modules=(str(tmp_path / "named_mod.py"),)))
    assert type(executor).__name__ == "Named"
    assert not any("bystander_mod" in name for name in sys.modules)
    with pytest.raises(ConfigError, match="not an Executor subclass"):
        resolve_executor_class("os:system", [])
    with pytest.raises(ConfigError, match="no such Executor class"):
        resolve_executor_class("Named", [])  # a name alone is looked up in py_modules only


def test_auth_checks_are_imported_by_name_only() -> None:
    assert callable(load_check("security_executors:allow_api_key"))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_check("no_such_module_here:check")
    with pytest.raises(ConfigError, match="not callable"):
        load_check("security_executors:__doc__")


_FORBIDDEN_CALLS = {
    ("pickle", "loads"),
    ("pickle", "load"),
    ("marshal", "loads"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("shelve", "open"),
    ("dill", "loads"),
}


def test_nothing_is_unpickled_or_evaluated() -> None:
    """No module of plait unpickles, evaluates or loads YAML unsafely: what arrives from the
    network is protobuf, msgpack (plait's codec) or JSON, and configs are YAML loaded safely."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                if any(
                    n.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}
                    for n in names
                ):
                    found.append(f"{path}:{node.lineno} imports {names}")
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in {"eval", "exec"}:
                    found.append(f"{path}:{node.lineno} calls {func.id}")
                if (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and (func.value.id, func.attr) in _FORBIDDEN_CALLS
                ):
                    found.append(f"{path}:{node.lineno} calls {func.value.id}.{func.attr}")
    assert not found, "\n".join(found)


def test_in_a_local_run_only_the_gateway_binds_the_public_host() -> None:
    flow = (
        Flow(host="0.0.0.0", protocol=["grpc", "http"])
        .add(name="a", uses="executors:Echo", replicas=2)
        .add(name="b", uses="executors:Echo", shards=2)
    )
    children, routes = flow._executor_children()
    for child in children:
        config = child.config
        assert config.host == "127.0.0.1" and config.public_host == "127.0.0.1", child.label  # type: ignore[attr-defined]
    assert all(
        address.startswith("127.0.0.1:") for route in routes for shard in route.shards for address in shard
    )
    assert flow.config.gateway_config(tuple(routes), ports=(1, 2)).host == "0.0.0.0"
    # A secured Deployment puts a gateway in front: its replicas then bind loopback too.
    secured = Deployment(uses="executors:Echo", auth_token_env="PLAIT_TOKENS", replicas=2)
    assert secured.config.needs_gateway
    node_children, _ = secured._as_flow()._executor_children()
    assert {c.config.host for c in node_children} == {"127.0.0.1"}  # type: ignore[attr-defined]

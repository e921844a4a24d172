"""Config models and YAML loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.config import (
    DeploymentConfig,
    ExecutorConfig,
    ReplicaConfig,
    expand_env,
    load_executor_yaml,
    load_yaml,
)
from plait.errors import ConfigError


def test_configs_are_frozen_and_reject_unknown_keys() -> None:
    cfg = ExecutorConfig(uses="m:C")
    with pytest.raises(ValueError, match="frozen"):
        cfg.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="replcas"):
        DeploymentConfig(executor=cfg, replcas=2)  # type: ignore[call-arg]
    changed = cfg.model_copy(update={"name": "other"})
    assert changed.name == "other" and cfg.name == "executor"


def test_replica_config_round_trips_through_json() -> None:
    rc = ReplicaConfig(executor=ExecutorConfig(uses="m:C", uses_with={"a": [1, 2]}), port=1234, replica_id=1)
    assert ReplicaConfig.model_validate_json(rc.model_dump_json()) == rc
    assert rc.runtime_args().replica_id == 1


def test_bad_names_and_protocols_are_rejected() -> None:
    with pytest.raises(ValueError, match="executor name"):
        ExecutorConfig(uses="m:C", name="has space")
    with pytest.raises(ValueError, match="choose from grpc, http, websocket"):
        DeploymentConfig(executor=ExecutorConfig(uses="m:C"), protocol="carrier-pigeon")
    assert DeploymentConfig(executor=ExecutorConfig(uses="m:C"), protocol="http").needs_gateway
    assert DeploymentConfig(executor=ExecutorConfig(uses="m:C"), shards=2).needs_gateway
    assert not DeploymentConfig(executor=ExecutorConfig(uses="m:C"), replicas=3).needs_gateway


def test_env_substitution() -> None:
    env = {"DIM": "64"}
    assert expand_env("dim: ${{ ENV.DIM }}", env) == "dim: 64"
    assert expand_env("dim: ${{ENV.MISSING:-8}}", env) == "dim: 8"
    with pytest.raises(ConfigError, match="MISSING"):
        expand_env("dim: ${{ ENV.MISSING }}", env)


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listy)


def test_executor_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exec.yml"
    path.write_text("jtype: Enc\nwith:\n  dim: 3\nmetas:\n  name: enc\npy_modules: [enc.py]\n")
    cfg = load_executor_yaml(path, uses_with={"dim": 4})
    assert cfg.uses == "Enc"
    assert cfg.uses_with == {"dim": 4}
    assert cfg.name == "enc"
    assert cfg.py_modules == (str((tmp_path / "enc.py").resolve()),)
    path.write_text("jtype: Enc\nwiht: {}\n")
    with pytest.raises(ConfigError, match="wiht"):
        load_executor_yaml(path)

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, Secret, iter_keys, load_settings, require_node

OPERATIONS_MD = Path(__file__).resolve().parents[2] / "docs" / "operations.md"  # the configuration reference


def test_defaults_then_toml_then_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[node]\nport = 9000\nregion = "eu-west"\n[limits]\nwidths = [100, 200]\n')
    s = load_settings(cfg, env={"MINICDN_NODE_PORT": "9100"})
    assert s.node.port == 9100 and s.node.region == "eu-west" and s.limits.widths == (100, 200)
    assert s.limits.max_upload_bytes == 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MINICDN_NODE_PORT": "eighty"}, "MINICDN_NODE_PORT"),
        ({"MINICDN_REPLICATOR_ENABLED": "maybe"}, "MINICDN_REPLICATOR_ENABLED"),
        ({"MINICDN_LIMITS_WIDTHS": "100,abc"}, "MINICDN_LIMITS_WIDTHS"),
        ({"MINICDN_LIMITS_WIDTHS": "0"}, "limits.widths"),
        ({"MINICDN_LOG_FORMAT": "xml"}, "log.format"),
        ({"MINICDN_SIGNING_ACTIVE_KID": "k9"}, "signing.active_kid"),
        ({"MINICDN_SIGNING_KEYS": "k1:short"}, "signing.keys.k1"),
        ({"MINICDN_NATS_STREAM_REPLICAS": "0"}, "nats.stream_replicas"),
        ({"MINICDN_NATS_STREAM_REPLICAS": "6"}, "nats.stream_replicas"),
    ],
)
def test_errors_name_the_bad_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(env=env)


def test_unknown_keys_and_sections_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[node]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"node\.prot: unknown setting"):
        load_settings(cfg, env={})
    cfg.write_text("[nod]\nport = 1\n")
    with pytest.raises(ConfigError, match="nod: unknown section"):
        load_settings(cfg, env={})


def test_secrets_never_show() -> None:
    s = load_settings(
        env={
            "MINICDN_SIGNING_KEYS": "k1:super-secret-value-123",
            "MINICDN_SIGNING_ACTIVE_KID": "k1",
            "MINICDN_DATABASE_URL": "postgresql://u:hunter2hunter2@db/x",
        }
    )
    text = repr(s) + str(s)
    assert "super-secret-value-123" not in text and "hunter2hunter2" not in text
    assert s.signing_key("k1") == b"super-secret-value-123"
    assert s.database.url == Secret("postgresql://u:hunter2hunter2@db/x")


def test_node_role_requires_identity() -> None:
    with pytest.raises(ConfigError, match="database.url"):
        require_node(load_settings(env={}))
    s = load_settings(
        env={
            "MINICDN_DATABASE_URL": "postgresql://x",
            "MINICDN_SIGNING_KEYS": "k1:0123456789abcdef",
            "MINICDN_SIGNING_ACTIVE_KID": "k1",
            "MINICDN_NODE_NODE_ID": "Bad Id",
        }
    )
    with pytest.raises(ConfigError, match="node.node_id"):
        require_node(s)


def test_every_setting_is_documented_in_the_operations_guide() -> None:
    text = OPERATIONS_MD.read_text()
    missing = [f"{section}.{key}" for section, key, _help, _default in iter_keys() if f"`{section}.{key}`" not in text]
    assert missing == []


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("pipeline", {"eager_variants": "thumb.jpg,w99.gif"}, "pipeline.eager_variants"),
        ("pipeline", {"eager_variants": "thumb.auto"}, "pipeline.eager_variants"),
        ("pipeline", {"avif_quality": 0}, "pipeline.avif_quality"),
        ("pipeline", {"avif_effort": 10}, "pipeline.avif_effort"),
        ("pipeline", {"near_duplicate_distance": 40}, "pipeline.near_duplicate_distance"),
        ("callbacks", {"max_attempts": 0}, "callbacks.max_attempts"),
        ("callbacks", {"sweep_interval_s": 0}, "callbacks.sweep_interval_s"),
        ("callbacks", {"backoff_s": -1}, "callbacks.backoff_s"),
    ],
)
def test_pipeline_settings_are_validated(section: str, values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(env={}, overrides={section: values})


def test_pipeline_list_settings_from_env() -> None:
    settings = load_settings(env={"MINICDN_PIPELINE_EAGER_VARIANTS": "thumb.webp, w300.avif"})
    assert settings.pipeline.eager_variants == ("thumb.webp", "w300.avif")

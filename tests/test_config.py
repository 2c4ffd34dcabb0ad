"""One source of defaults: `Settings()` means what `vlserve serve` with no flags means."""

from __future__ import annotations

import dataclasses
import os

import pytest

from vlserve import cli, config
from vlserve.config import DEFAULT_CTX, Settings, context_size


def settings_from_command_line(args: list[str]) -> Settings:
    """What `vlserve serve ARGS` would run with: click parses, the CLI builds Settings."""
    ctx = cli.serve.make_context("serve", list(args))
    return cli.settings_from_options(dict(ctx.params))


@pytest.fixture
def no_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("VLSERVE_"):
            monkeypatch.delenv(name)


def test_every_command_line_default_is_the_settings_default(no_env, tiny_model):
    model, mmproj = tiny_model
    from_cli = settings_from_command_line(["--model", model, "--mmproj", mmproj])
    plain = Settings(model=from_cli.model, mmproj=from_cli.mmproj)
    differing = {f.name: (getattr(from_cli, f.name), getattr(plain, f.name))
                 for f in dataclasses.fields(Settings)
                 if getattr(from_cli, f.name) != getattr(plain, f.name)}
    assert differing == {}, "command line vs Settings() defaults (cli, Settings)"


def test_each_option_reads_its_default_from_settings(no_env):
    """Spot-check the mapping for the options whose values are converted on the way."""
    params = {p.name: p.default for p in cli.serve.params}
    assert params["max_body_mb"] * cli.MiB == config.default("max_body_bytes")
    assert params["max_image_mb"] * cli.MiB == Settings().images.max_bytes
    assert params["parallel"] == "auto" and params["n_gpu_layers"] == "auto"


def test_auto_values_resolve_in_one_place():
    import llama_cpp
    expected = 4 if llama_cpp.llama_supports_gpu_offload() else 2
    assert Settings().parallel == config.auto_parallel() == expected
    assert cli.PARALLEL.convert("auto", None, None) == expected
    assert Settings().n_ctx is None
    assert context_size(None, trained=40960) == DEFAULT_CTX
    assert context_size(0, trained=40960) == 40960
    assert context_size(4096, trained=40960) == 4096


def test_default_calls_factories():
    assert config.default("threads") == config.default_threads()
    assert config.default("port") == 7860
    with pytest.raises(KeyError):
        config.default("no_such_setting")

"""Where JAX's persistent compilation cache goes, and how it is turned off."""

from __future__ import annotations

import os

import pytest

from vitkit.device import COMPILE_CACHE_BYTES, configure_compilation_cache

JAX_NAMES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "JAX_COMPILATION_CACHE_MAX_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("VITKIT_COMPILE_CACHE")
    return monkeypatch


def test_default_folder_is_in_the_vitkit_home(clean_env, vitkit_home):
    assert configure_compilation_cache() == vitkit_home / "compile-cache"
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(vitkit_home / "compile-cache")
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == str(COMPILE_CACHE_BYTES)


def test_chosen_folder_and_users_jax_setting_win(clean_env, tmp_path):
    clean_env.setenv("VITKIT_COMPILE_CACHE", str(tmp_path / "mine"))
    assert configure_compilation_cache() == tmp_path / "mine"
    clean_env.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    clean_env.setenv("JAX_COMPILATION_CACHE_MAX_SIZE", "123")
    assert configure_compilation_cache() == tmp_path / "jax"
    assert os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == "123"


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false"])
def test_off_sets_nothing(clean_env, value):
    clean_env.setenv("VITKIT_COMPILE_CACHE", value)
    assert configure_compilation_cache() is None
    assert not any(name in os.environ for name in JAX_NAMES)

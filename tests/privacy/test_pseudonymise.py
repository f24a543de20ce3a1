"""Keyed pseudonyms: stable, secret-dependent, valid resident ids."""

from __future__ import annotations

import re

import pytest

from bouquet.core.events import ID_RE
from bouquet.privacy.pseudonyms import pseudonymise


def test_stable_keyed_and_valid() -> None:
    a = pseudonymise("72491657-3115-4497-879d-000830f2352b", "secret-one")
    assert a == pseudonymise("72491657-3115-4497-879d-000830f2352b", "secret-one")
    assert a != pseudonymise("72491657-3115-4497-879d-000830f2352b", "secret-two")
    assert a != pseudonymise("72491657-3115-4497-879d-000830f2352c", "secret-one")
    assert re.fullmatch(ID_RE, a) and re.fullmatch(r"p[0-9a-f]{20}", a)
    assert "72491657" not in a
    assert re.fullmatch(r"vb-[0-9a-f]{12}", pseudonymise("x", "s", prefix="vb-", length=12))


def test_refuses_unsafe_use() -> None:
    with pytest.raises(ValueError, match="secret"):
        pseudonymise("x", "")
    with pytest.raises(ValueError, match="prefix"):
        pseudonymise("x", "s", prefix="a:b")
    with pytest.raises(ValueError, match="length"):
        pseudonymise("x", "s", length=4)


def test_cli_warns_when_it_uses_the_development_secret(monkeypatch) -> None:
    from typer.testing import CliRunner

    from bouquet.cli import app
    from bouquet.core import settings as settings_module

    monkeypatch.delenv("BOUQUET_PSEUDONYM_SECRET", raising=False)
    settings_module.get_settings.cache_clear()
    try:
        dev = CliRunner().invoke(app, ["pseudonymise", "ACC-1"])
        assert dev.exit_code == 0 and "development secret" in dev.stderr
        assert re.fullmatch(r"p[0-9a-f]{20}\n", dev.stdout)  # the pseudonym alone on stdout
        monkeypatch.setenv("BOUQUET_PSEUDONYM_SECRET", "a-real-secret-for-this-test")
        settings_module.get_settings.cache_clear()
        real = CliRunner().invoke(app, ["pseudonymise", "ACC-1"])
        assert real.exit_code == 0 and real.stderr == ""
    finally:
        settings_module.get_settings.cache_clear()

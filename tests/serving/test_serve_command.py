"""``bouquet serve`` refuses to listen beyond this machine with the public development
keys or secret: they are printed in the README, so anyone who can connect could use them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bouquet.cli import app
from bouquet.core import settings as settings_module

STRONG = "Xq3v0J8kTz1bR7mWc2LpN5yHs9dFg4Ae6UoKiQwErTy"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    for name in ("BOUQUET_API_KEYS", "BOUQUET_PSEUDONYM_SECRET", "BOUQUET_SERVER_SECRET",
                 "BOUQUET_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BOUQUET_ENV", "local")
    settings_module.get_settings.cache_clear()
    yield monkeypatch
    settings_module.get_settings.cache_clear()


def test_serve_refuses_a_public_host_with_development_credentials(environment,
                                                                   monkeypatch) -> None:
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k["host"]))
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and not started
    for variable in ("BOUQUET_API_KEYS", "BOUQUET_PSEUDONYM_SECRET", "BOUQUET_SERVER_SECRET"):
        assert variable in refused.stderr
    assert "token_urlsafe" in refused.stderr

    assert CliRunner().invoke(app, ["serve", "--host", "127.0.0.1"]).exit_code == 0
    environment.setenv("BOUQUET_API_KEYS", f'{{"{STRONG}": "app"}}')
    environment.setenv("BOUQUET_PSEUDONYM_SECRET", STRONG[::-1])
    environment.setenv("BOUQUET_SERVER_SECRET", STRONG[1:] + "Z")
    settings_module.get_settings.cache_clear()
    assert CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"]).exit_code == 0
    assert started == ["127.0.0.1", "0.0.0.0"]

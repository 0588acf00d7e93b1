"""The operator's kopf identity works for a user with no /etc/passwd entry (the images' 65532)."""

from __future__ import annotations

import getpass
import socket

import pytest

from etha.operator.__main__ import own_identity


def test_identity_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_entry)
    monkeypatch.setattr("os.getuid", lambda: 65532)
    assert own_identity() == f"65532@{socket.gethostname()}"


def test_identity_names_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "etha")
    assert own_identity() == f"etha@{socket.gethostname()}"

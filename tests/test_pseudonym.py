"""Keyed pseudonyms: deterministic per (value, key), different across keys, valid UIDs, and a secret is required."""

from __future__ import annotations

import logging
import re

import pytest
from pydicom.uid import UID

from pneumoscan.errors import PneumoscanError
from pneumoscan.pseudonym import (
    KEY_ENV_VAR,
    MIN_KEY_CHARS,
    PseudonymKeyError,
    load_key,
    pseudonymise,
    pseudonymise_uid,
)

KEY = "0123456789abcdef-site-secret"


def test_same_value_and_key_give_the_same_pseudonym_and_another_key_another():
    p = pseudonymise("MRN-12345", KEY)
    assert re.fullmatch(r"anon-[0-9a-f]{16}", p)
    assert pseudonymise("MRN-12345", KEY) == p == pseudonymise("MRN-12345", KEY.encode())
    assert pseudonymise("MRN-12346", KEY) != p
    assert pseudonymise("MRN-12345", KEY + "x") != p
    assert pseudonymise("", KEY) == "" and pseudonymise_uid("", KEY) == ""
    assert "12345" not in p


def test_uid_pseudonyms_are_valid_uids_and_deterministic():
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    p = pseudonymise_uid(uid, KEY)
    assert p.startswith("2.25.") and UID(p).is_valid and len(p) <= 64
    assert pseudonymise_uid(uid, KEY) == p and pseudonymise_uid(uid + "1", KEY) != p
    assert pseudonymise_uid(uid, "another-secret-of-length") != p
    assert not p[5:].startswith("0") or p[5:] == "0"


def test_load_key_from_a_file_or_the_environment(tmp_path, caplog):
    secret = tmp_path / "site.key"
    secret.write_text(KEY + "\n")
    secret.chmod(0o600)
    assert load_key(secret, environ={}) == KEY.encode()
    assert load_key(None, environ={KEY_ENV_VAR: f"  {KEY} "}) == KEY.encode()
    # the file wins over the environment
    assert load_key(secret, environ={KEY_ENV_VAR: "x" * 40}) == KEY.encode()
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.pseudonym"):
        load_key(secret, environ={})
    assert "chmod 600" in caplog.text


def test_no_or_a_short_secret_is_refused_with_how_to_make_one(tmp_path):
    with pytest.raises(PseudonymKeyError, match="secrets.token_hex") as info:
        load_key(None, environ={})
    assert KEY_ENV_VAR in str(info.value) and isinstance(info.value, PneumoscanError)
    short = tmp_path / "short.key"
    short.write_text("x" * (MIN_KEY_CHARS - 1))
    with pytest.raises(PseudonymKeyError, match=f"at least {MIN_KEY_CHARS}"):
        load_key(short, environ={})
    with pytest.raises(PseudonymKeyError, match="cannot read"):
        load_key(tmp_path / "missing.key", environ={})
    with pytest.raises(PseudonymKeyError):
        pseudonymise("x", b"")

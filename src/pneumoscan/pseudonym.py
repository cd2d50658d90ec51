"""Keyed pseudonyms for patient and study identifiers (``predict --pseudonymise``).

A pseudonym is an HMAC-SHA256 of the identifier under a site secret: the same identifier and secret always give
the same pseudonym (so a patient's films still group together, and a later run links up with an earlier one),
and without the secret nobody can recompute it from a guessed identifier (a bare hash of a patient ID can be
reversed by trying every ID). Keep the secret like a password: whoever has it can test guesses.

* :func:`pseudonymise`: text identifiers (patient ID, accession number) -> ``"anon-"`` + 16 hex digits.
* :func:`pseudonymise_uid`: DICOM UIDs -> ``"2.25."`` + a decimal integer, still a valid UID (at most 44
  characters), so DICOM written with it stays valid and the study's files still share one study UID.
* :func:`load_key`: the secret from ``--secret-file`` or ``$PNEUMOSCAN_PSEUDONYM_KEY``; refuses a missing or short one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from pneumoscan.errors import PneumoscanError

__all__ = ["KEY_ENV_VAR", "MIN_KEY_CHARS", "PREFIX", "PseudonymKeyError", "load_key", "make_key_hint",
           "pseudonymise", "pseudonymise_uid"]

log = logging.getLogger(__name__)

#: Environment variable holding the site secret when no ``--secret-file`` is given.
KEY_ENV_VAR = "PNEUMOSCAN_PSEUDONYM_KEY"
#: The shortest secret accepted, in characters (a short secret can be found by trying them all).
MIN_KEY_CHARS = 16
#: Marks a value as a pseudonym, so nobody takes it for a real ID.
PREFIX = "anon-"
#: Hex digits kept (64 bits: a collision between two of a million patients has odds of about 1 in 40 million).
_HEX_DIGITS = 16


class PseudonymKeyError(PneumoscanError, ValueError):
    """No usable site secret for ``--pseudonymise``; the message says how to make one."""


def make_key_hint() -> str:
    """How to make a site secret, in words for people."""
    return ("make one once per site and keep it (the same secret gives the same pseudonyms): "
            "python -c \"import secrets; print(secrets.token_hex(32))\" > pneumoscan-site.key && "
            "chmod 600 pneumoscan-site.key; then pass --secret-file pneumoscan-site.key "
            f"or set {KEY_ENV_VAR}")


def _digest(value: str, key: bytes | str, domain: bytes) -> bytes:
    secret = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not secret:
        raise PseudonymKeyError(f"the pseudonym secret is empty; {make_key_hint()}")
    return hmac.new(secret, domain + value.encode("utf-8"), hashlib.sha256).digest()


def pseudonymise(value: str, key: bytes | str) -> str:
    """``"anon-"`` + the first 16 hex digits of HMAC-SHA256(key, value); ``""`` stays ``""`` (nothing to hide).

    Deterministic: the same ``value`` and ``key`` always give the same pseudonym; another key gives another.
    """
    if not value:
        return ""
    return PREFIX + _digest(value, key, b"id\x00").hex()[:_HEX_DIGITS]


def pseudonymise_uid(value: str, key: bytes | str) -> str:
    """A DICOM UID's keyed pseudonym: ``"2.25."`` + the decimal value of the first 128 bits of HMAC-SHA256 (the
    UUID-derived UID form of PS3.5 B.2; valid, at most 44 characters). ``""`` stays ``""``; deterministic."""
    if not value:
        return ""
    return "2.25." + str(int.from_bytes(_digest(value, key, b"uid\x00")[:16], "big"))


def load_key(secret_file: str | os.PathLike[str] | None = None, *,
             environ: Mapping[str, str] | None = None) -> bytes:
    """The site secret: the content of ``secret_file`` when given, else ``$PNEUMOSCAN_PSEUDONYM_KEY``; leading
    and trailing white space (a final newline) is dropped.

    A secret file that others may read is used, with a warning (the secret is what keeps the pseudonyms safe).

    Raises:
        PseudonymKeyError: no secret given, the file cannot be read, or the secret is shorter than
            :data:`MIN_KEY_CHARS` characters; the message says how to make one.
    """
    env = os.environ if environ is None else environ
    if secret_file is not None:
        path = Path(secret_file)
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read the secret file {path}: {exc.strerror or exc}; "
                                    f"{make_key_hint()}") from exc
        if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("the secret file %s can be read by other users; restrict it: chmod 600 %s", path, path)
        secret, where = raw.strip(), f"the secret file {path}"
    else:
        secret, where = env.get(KEY_ENV_VAR, "").strip().encode("utf-8"), f"${KEY_ENV_VAR}"
        if not secret:
            raise PseudonymKeyError(f"--pseudonymise needs a site secret, from --secret-file PATH or ${KEY_ENV_VAR}; "
                                    f"{make_key_hint()}")
    if len(secret) < MIN_KEY_CHARS:
        raise PseudonymKeyError(f"{where} holds {len(secret)} character(s); a pseudonym secret needs at least "
                                f"{MIN_KEY_CHARS} (a short one can be guessed); {make_key_hint()}")
    return secret

"""The DICOM node's settings: its AE title, address, allow list and forward target, the SOP classes and transfer
syntaxes it accepts, and the statuses it answers with."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from pneumoscan.errors import ConfigError
from pneumoscan.io.budget import DEFAULT_MEMORY_BUDGET_BYTES, SERVICE_MAX_PIXELS
from pneumoscan.utils import is_loopback

__all__ = ["ACCEPTED_SOP_CLASSES", "VERIFICATION", "ForwardTarget", "NodeSettings", "NodeStats", "Status",
           "decodable_transfer_syntaxes", "is_loopback", "parse_allow", "validate_ae_title"]

#: Image storage SOP classes the node accepts (UID -> name in log lines).
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "CR",            # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",          # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX-proc",   # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7": "SC",            # Secondary Capture Image Storage
}
VERIFICATION = "1.2.840.10008.1.1"


class Status:
    """C-STORE response statuses the node uses (DICOM PS3.4 B.2.3 and PS3.7 C.4)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, 16 characters at most


def validate_ae_title(title: str, what: str = "AE title") -> str:
    """Return ``title`` stripped, or raise :class:`ConfigError` saying why it is not a valid DICOM AE title."""
    text = title.strip()
    if not text or not _AE_RE.match(text):
        raise ConfigError(f"{what} {title!r} is not a valid DICOM AE title: 1 to 16 printable ASCII characters, "
                          "no backslash, not only spaces")
    return text


def parse_allow(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The calling AE titles of ``--allow AET,AET,...`` (or a sequence), validated; ``()`` means anyone."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(validate_ae_title(p, "--allow entry") for p in parts if p.strip())


@dataclass(frozen=True)
class ForwardTarget:
    """Where results go: a PACS's AE title, host and port (``AET@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ForwardTarget:
        """Parse ``AET@HOST:PORT`` (an IPv6 host in brackets: ``AET@[::1]:4242``).

        Raises:
            ConfigError: the text is not of that form, or the AE title or port is invalid.
        """
        m = re.match(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:@\s]+):(?P<port>\d{1,5})$", text.strip())
        if not m:
            raise ConfigError(f"--forward {text!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"--forward {text!r}: port {port} is out of range (1-65535)")
        return cls(validate_ae_title(m["aet"], "--forward AE title"), m["host"].strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeSettings:
    """How the node listens, whom it accepts and where it forwards.

    Attributes:
        ae_title: the node's own AE title; associations must address it (called AE title).
        host, port: where to listen (port 0: any free port; :attr:`DicomNode.address` says which).
        allow: calling AE titles accepted; empty accepts any (only allowed on a loopback address).
        forward: the PACS that receives the SR and SC; None sends nothing.
        workers: images scored at once, all associations together.
        max_associations: associations open at once; more are rejected (transient) until one ends.
        grace_seconds: on shutdown, how long open associations and the outbox's sending may take.
        forward_retention_hours: how long a result's SR/SC may wait in the outbox for the PACS; then it is marked
            failed (with why).
        forward_retry_seconds, forward_retry_max_seconds: the pause after a failed try to send to the PACS, doubling
            from the first to the second.
        max_pixels: largest image decoded (width x height): the server's limit (25 MP), checked from the header.
        memory_budget_bytes: estimated decoding memory of all images at once (the server's budget, 1 GiB); an image
            waits for room at most ``budget_wait_seconds``, then is answered 0xA700 (out of resources), as is one
            that could never fit.
        max_associations_per_peer: associations one IP address may have open at once (more are rejected, transient),
            and connections it may have waiting silent for their association request (a newer one closes the
            oldest).
        association_timeout: seconds a connection may take to send its whole A-ASSOCIATE-RQ; then it is closed.
        max_pdu_bytes: the largest P-DATA PDU the node advertises and accepts; a peer that declares a larger PDU (or
            an A-ASSOCIATE-RQ over 64 KiB) is disconnected before it is read.
    """

    ae_title: str = "PNEUMOSCAN"
    host: str = "127.0.0.1"
    port: int = 11112
    allow: tuple[str, ...] = ()
    forward: ForwardTarget | None = None
    workers: int = 2
    max_associations: int = 10
    grace_seconds: float = 30.0
    forward_retention_hours: float = 72.0
    forward_retry_seconds: float = 1.0
    forward_retry_max_seconds: float = 30.0
    max_pixels: int = SERVICE_MAX_PIXELS
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
    budget_wait_seconds: float = 20.0
    max_associations_per_peer: int = 4
    association_timeout: float = 10.0
    max_pdu_bytes: int = 16382

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title, "--ae-title"))
        object.__setattr__(self, "allow", parse_allow(self.allow))
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port {self.port} is out of range (0-65535)")
        if self.workers < 1 or self.max_associations < 1:
            raise ConfigError("workers and max_associations must be at least 1")
        if not (self.forward_retention_hours > 0 and 0 < self.forward_retry_seconds <= self.forward_retry_max_seconds):
            raise ConfigError("--forward-retention must be above 0 hours, and the pauses between tries above 0 s "
                              "(the first at most the longest)")
        for name, flag in (("max_pixels", "--max-pixels"), ("memory_budget_bytes", "--memory-budget-mb"),
                           ("max_associations_per_peer", "--max-associations-per-peer")):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if not (self.association_timeout > 0 and self.budget_wait_seconds >= 0):
            raise ConfigError(f"--association-timeout must be above 0 s, got {self.association_timeout}")
        if not 4096 <= self.max_pdu_bytes <= 2**31:
            raise ConfigError(f"the maximum PDU size must be 4096 bytes to 2 GiB, got {self.max_pdu_bytes}")

    def check_exposure(self) -> None:
        """Refuse to listen off loopback without an allow list: anyone on the network could then send films and,
        with ``forward``, write reports into the PACS.

        Raises:
            ConfigError: ``host`` is not a loopback address and ``allow`` is empty.
        """
        if not self.allow and not is_loopback(self.host):
            raise ConfigError(f"listening on {self.host} (not a loopback address) needs --allow with the calling AE "
                              "titles of your PACS and modalities (e.g. --allow ORTHANC,DX_ROOM1)")


@dataclass
class NodeStats:
    """Counts since start (read them for progress; the node logs them at shutdown)."""

    received: int = 0
    scored: int = 0
    failed: int = 0
    ignored: int = 0
    duplicates: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, n: int = 1) -> int:
        with self.lock:
            value = getattr(self, name) + n
            setattr(self, name, value)
            return value

    def line(self) -> str:
        return (f"{self.received} received, {self.scored} scored, {self.failed} refused as unreadable or failed, "
                f"{self.ignored} own results ignored, {self.duplicates} already scored (same SOP Instance UID and "
                f"bytes), {self.forwarded} result objects stored on the PACS, {self.forward_failed} given up")


def decodable_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data this installation can decode (uncompressed first, then compressed)."""
    from pydicom import uid
    from pydicom.pixels import get_decoder

    out = [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
           uid.ExplicitVRBigEndian]
    for ts in uid.AllTransferSyntaxes:
        if ts in out:
            continue
        try:
            if get_decoder(ts).is_available:
                out.append(ts)
        except Exception:  # noqa: BLE001, S112 - no decoder for that syntax at all
            continue
    return [str(t) for t in out]

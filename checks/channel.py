"""The channel from the worker to the parent: an inherited pipe, and an HMAC over every message.

The parent makes a fresh 32-byte key for each run and writes it to the worker's stdin; the worker reads it, closes
stdin and keeps the key only inside an `hmac` object, all before any learner code loads. Each message is one line,
`<hex HMAC-SHA256> <JSON>`, and the JSON carries a sequence number, so a message cannot be made up, changed,
dropped, repeated or reordered without the parent noticing. The parent checks the order of the messages itself
(checks/isolated.py); here is only the wire format. Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets

KEY_BYTES = 32
MAX_LINE = 1 << 20  # one message; the worker cuts its texts long before this


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class Writer:
    """The worker's end: `send(kind, **fields)` writes one signed line to the pipe `fd`."""

    def __init__(self, fd: int, key: bytes):
        self._fd = fd
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._seq = 0

    def send(self, kind: str, **fields) -> None:
        body = json.dumps({"seq": self._seq, "kind": kind, **fields}, ensure_ascii=True).encode()
        mac = self._mac.copy()
        mac.update(body)
        data = mac.hexdigest().encode() + b" " + body + b"\n"
        while data:
            data = data[os.write(self._fd, data):]
        self._seq += 1


class Reader:
    """The parent's end: `feed(bytes)` as they arrive; `messages` holds the authentic ones, in order, and `broken`
    says why the stream stopped being trusted (then nothing more is accepted)."""

    def __init__(self, key: bytes):
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._buffer = b""
        self.messages: list[dict] = []
        self.broken = ""

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        self._buffer += data
        while not self.broken and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._accept(line)
        if len(self._buffer) > MAX_LINE and not self.broken:
            self.broken = f"a line of more than {MAX_LINE} bytes arrived on the channel"
            self._buffer = b""

    def close(self) -> None:
        """The pipe reached its end: a part-line left over was never finished."""
        if self._buffer and not self.broken:
            self.broken = "the channel ended in the middle of a message"
        self._buffer = b""

    def _accept(self, line: bytes) -> None:
        tag, _, body = line.partition(b" ")
        mac = self._mac.copy()
        mac.update(body)
        if not hmac.compare_digest(mac.hexdigest().encode(), tag):
            self.broken = "a message on the channel was not signed with this run's key"
            return
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            self.broken = "a signed message was not JSON this side can read"
            return
        if not isinstance(message, dict) or message.get("seq") != len(self.messages):
            self.broken = "a message arrived out of sequence"
            return
        self.messages.append(message)

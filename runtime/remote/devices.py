"""``--on [NAME=]ssh://[USER@]HOST[:PORT]``: a device, checked to the character before anything connects.

HOST may be an alias of the user's ``~/.ssh/config``. Names and hosts are held to a narrow alphabet: nothing that
reaches the ssh command line can start with ``-`` (an option) or carry a space, a quote or a control character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import EdgefoldError

_URL = re.compile(r"ssh://(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
                  r"(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\])"
                  r"(?::(?P<port>[0-9]{1,5}))?/?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Device:
    """One SSH device: ``name`` labels its results (``bench-MODEL@NAME.json``)."""

    name: str
    host: str
    user: str | None = None
    port: int | None = None

    @property
    def destination(self) -> str:
        """What ssh connects to: ``[user@]host``, an IPv6 address without its brackets."""
        host = self.host.strip("[]")
        return f"{self.user}@{host}" if self.user else host

    @property
    def address(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{self.host}{port}"


def parse_device(text: str) -> Device:
    """``[NAME=]ssh://[USER@]HOST[:PORT]`` as a :class:`Device`; one line naming the problem otherwise."""
    name, sep, url = text.partition("=") if "=" in text.split("://", 1)[0] else ("", "", text)
    if sep and not _NAME.fullmatch(name):
        raise EdgefoldError(f"device name {name!r} in {text!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    match = _URL.fullmatch(url)
    if not match:
        raise EdgefoldError(f"--on {text!r}: expected [NAME=]ssh://[USER@]HOST[:PORT], e.g. ssh://pi@raspberrypi or "
                            "pi=ssh://pi@192.168.1.20:2222")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise EdgefoldError(f"--on {text!r}: port {port} is not between 1 and 65535")
    host = match["host"]
    return Device(name=name or re.sub(r"[^A-Za-z0-9._-]", "_", host.strip("[]")).strip("_.-") or "device",
                  host=host, user=match["user"], port=port)


def check_devices(devices: list[Device]) -> None:
    """Each device once, each name once: results are written per name."""
    seen: dict[str, Device] = {}
    for device in devices:
        other = seen.setdefault(device.name, device)
        if other is not device:
            same = other.address == device.address
            raise EdgefoldError(f"{device.address} is given twice" if same else
                                f"two devices are named {device.name!r} ({other.address}, {device.address}): "
                                "name them, e.g. --on pi2=ssh://...")

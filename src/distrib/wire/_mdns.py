"""LAN discovery over mDNS / DNS-SD (zeroconf): workers announce, Mains browse.

A worker's announcement carries its address, port, name and public key. Finding a worker is
not trusting it: the Main decides (trust list, or trust on first use) before connecting, and
CURVE then makes the worker prove the announced key.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

log = logging.getLogger("distrib")

SERVICE = "_distrib._tcp.local."


@dataclass(frozen=True, slots=True)
class Found:
    """A worker seen on the LAN."""

    name: str
    address: str  # host:port
    public_key: str | None


def _zeroconf(interfaces: Sequence[str]) -> Zeroconf:
    if interfaces:
        return Zeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)
    return Zeroconf(ip_version=IPVersion.V4Only)


class Announcer:
    """Advertise one worker until ``close``."""

    def __init__(self, name: str, host: str, port: int, public_key: str | None,
                 facts: dict[str, str], interfaces: Sequence[str] = ()) -> None:
        self._zc = _zeroconf(interfaces or ([host] if host != "0.0.0.0" else []))
        props = {"name": name, **facts}
        if public_key:
            props["key"] = public_key
        label = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:50] or "worker"
        self._info = ServiceInfo(
            SERVICE, f"{label}-{port}.{SERVICE}", port=port,
            addresses=[socket.inet_aton(host)] if host != "0.0.0.0" else None,
            properties=props, server=f"{label}-{port}.local.",
        )
        self._zc.register_service(self._info, allow_name_change=True)

    def close(self) -> None:
        try:
            self._zc.unregister_service(self._info)
        finally:
            self._zc.close()


class Browser:
    """Report workers announcing on the LAN to ``on_found`` (called from zeroconf's thread)."""

    def __init__(self, on_found: Callable[[Found], None], interfaces: Sequence[str] = ()) -> None:
        self._zc = _zeroconf(interfaces)
        self._on_found = on_found
        self._browser = ServiceBrowser(self._zc, SERVICE, handlers=[self._changed])

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str,
                 state_change: ServiceStateChange) -> None:
        if state_change not in (ServiceStateChange.Added, ServiceStateChange.Updated):
            return
        info = zeroconf.get_service_info(service_type, name, timeout=3000)
        if info is None or not info.parsed_addresses() or info.port is None:
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        for addr in info.parsed_addresses(IPVersion.V4Only):
            self._on_found(Found(props.get("name", name), f"{addr}:{info.port}",
                                 props.get("key") or None))

    def close(self) -> None:
        self._browser.cancel()
        self._zc.close()


def browse_once(interfaces: Sequence[str], seconds: float) -> list[Found]:
    """Everything announced within ``seconds`` (for ``distrib status``)."""
    seen: dict[str, Found] = {}
    lock = threading.Lock()

    def keep(found: Found) -> None:
        with lock:
            seen[found.address] = found

    browser = Browser(keep, interfaces)
    try:
        time.sleep(seconds)  # mDNS answers trickle in; there is no "done" signal to wait for
    finally:
        browser.close()
    return list(seen.values())

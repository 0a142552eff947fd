"""Several hosts on one machine: network namespaces joined by veth pairs to a bridge.

Each host is a namespace with one address on 10.213.0.0/24; the bridge lives in a namespace
of its own, so nothing touches the machine's real network. Cutting a host's link (its veth on
the bridge side) simulates a partition.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.213.0"


def available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    ns: str
    address: str
    bridge_side: str  # the veth end in the switch namespace

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace (ip netns exec execs it: same PID)."""
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class Network:
    """A switch namespace with a bridge, and hosts attached to it."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000:04d}{os.urandom(1).hex()}")
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.switch = f"dt{self.tag}-sw"
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 2
        ns = f"dt{self.tag}-{name}"
        inner, outer = f"v{self.tag}{index}a", f"v{self.tag}{index}b"
        _ip("netns", "add", ns)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", outer, "master", "br0")
        _ip("-n", self.switch, "link", "set", outer, "up")
        address = f"{SUBNET}.{index}"
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(name, ns, address, outer)
        self.hosts[name] = host
        return host

    def add_nat(self, name: str, lan: str = "192.168.77") -> tuple[Host, Host]:
        """A router on this network and a host on a private LAN behind it (``lan``.2, its
        router ``lan``.1), as a home or campus network is: the router masquerades the LAN's
        connections out (nftables) and refuses every connection in. Returns (router, host)."""
        router = self.add(f"{name}r")
        index = len(self.hosts) + 2
        ns = f"dt{self.tag}-{name}"
        inner, outer = f"l{self.tag}{index}a", f"l{self.tag}{index}b"
        _ip("netns", "add", ns)
        self.hosts[name] = host = Host(name, ns, f"{lan}.2", outer)
        _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "netns", router.ns)
        _ip("-n", router.ns, "addr", "add", f"{lan}.1/24", "dev", outer)
        _ip("-n", router.ns, "link", "set", outer, "up")
        _ip("-n", ns, "addr", "add", f"{lan}.2/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", f"{lan}.1")
        subprocess.run(router.cmd("sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True,
                       capture_output=True, timeout=30)
        rules = f"""
            table ip nat {{
                chain outward {{ type nat hook postrouting priority 100; oifname != "{outer}"
                              ip saddr {lan}.0/24 masquerade; }}
            }}
            table ip filter {{
                chain inward {{ type filter hook forward priority 0; policy accept;
                             iifname != "{outer}" ct state new reject; }}
            }}
        """
        subprocess.run(router.cmd("nft", "-f", "-"), input=rules, text=True, check=True,
                       capture_output=True, timeout=30)
        return router, host

    def cut(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.bridge_side, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.bridge_side, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True, timeout=30)

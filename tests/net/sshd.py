"""SSH hosts for tests: one OpenSSH ``sshd`` per network-namespace host, with host and user
keys made by the test, a known-hosts file, and a client config (``ssh -F``) naming each host.

Each host has a cache folder of its own (``XDG_CACHE_HOME``, set by its sshd), where distrib
is installed and the worker's key made; their wheel and venv folders are links to one shared
folder, so the hosts of a test (and the tests of a run) install distrib once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.helpers import wait_for
from tests.net.netns import Host

SSHD = "/usr/sbin/sshd"


def available() -> str:
    """Why sshd hosts cannot be made here ("" if they can)."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") \
            is None:
        return "needs OpenSSH's sshd and ssh (apt-get install openssh-server)"
    return ""


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   capture_output=True, timeout=30)
    return (path.with_suffix(".pub")).read_text().strip()


@dataclass
class SSHHosts:
    """sshd daemons on namespace hosts, and the client config that reaches them."""

    folder: Path
    shared: Path  # wheels and venvs, shared by the hosts
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    caches: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user_key = self.folder / "id_ed25519"
        (self.folder / "authorized_keys").write_text(_keygen(self.user_key) + "\n")
        self.config = self.folder / "ssh_config"
        self.known = self.folder / "known_hosts"
        self.config.write_text("")
        self.known.write_text("")
        Path("/run/sshd").mkdir(exist_ok=True)  # (sshd's privilege separation folder)

    def add(self, host: Host, python_hidden: bool = False, disk: str = "") -> str:
        """Start sshd on ``host``; return its name in the client config. ``python_hidden``:
        this host's sessions see no Python 3.11 (hidden in a mount namespace of its own);
        ``disk``: its cache folder is a tmpfs of this size (and shares nothing)."""
        name = host.name
        hostkey = self.folder / f"{name}_host_key"
        public = _keygen(hostkey)
        cache = self.folder / f"{name}-cache"
        launch = cache / "distrib" / "launch"
        launch.mkdir(parents=True)
        for shared in () if disk else ("wheels", "venvs"):
            (self.shared / shared).mkdir(parents=True, exist_ok=True)
            (launch / shared).symlink_to(self.shared / shared)
        self.caches[name] = cache
        config = self.folder / f"{name}_sshd_config"
        config.write_text(f"""
ListenAddress {host.address}
Port 22
HostKey {hostkey}
PidFile none
AuthorizedKeysFile {self.folder / "authorized_keys"}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
SetEnv XDG_CACHE_HOME={cache}
""")
        sshd = f"exec {SSHD} -D -e -f {config}"
        if disk:
            sshd = f"mount -t tmpfs -o size={disk} none {cache} && " + sshd
        if python_hidden:
            sshd = ("mount --bind /dev/null /usr/bin/python3.11 && "
                    "mount -t tmpfs none /root/.pyenv && " + sshd)
        self.procs[name] = subprocess.Popen(host.cmd("unshare", "-m", "sh", "-c", sshd),
                                            stderr=subprocess.DEVNULL)
        with self.known.open("a") as out:
            out.write(f"{host.address} {' '.join(public.split()[:2])}\n")
        with self.config.open("a") as out:
            out.write(f"""
Host {name}
    HostName {host.address}
    User root
    IdentityFile {self.user_key}
    IdentitiesOnly yes
    UserKnownHostsFile {self.known}
    StrictHostKeyChecking yes
    ConnectTimeout 5
""")
        wait_for(lambda: self._listening(host), 30, f"sshd on {name}")
        return name

    @staticmethod
    def _listening(host: Host) -> bool:
        out = subprocess.run(host.cmd("ss", "-ltnH"), capture_output=True, text=True,
                             timeout=30).stdout
        return f"{host.address}:22 " in out

    def sessions(self, name: str) -> list[psutil.Process]:
        """The processes of ``name``'s SSH sessions (sshd's children and all below them)."""
        try:
            return psutil.Process(self.procs[name].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        for proc in self.procs.values():
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            except psutil.NoSuchProcess:
                pass
            proc.kill()
            proc.wait(30)

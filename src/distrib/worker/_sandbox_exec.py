"""Build a sandbox from Linux namespaces and run a command in it, where bubblewrap is not
installed: ``python -I -S _sandbox_exec.py SPEC -- COMMAND...`` (the standard library only:
nothing of distrib's or a Main's is imported before the sandbox stands).

SPEC (JSON) names the mounts (``[how, source, target]``, as ``_sandbox`` lists them), whether
the network is shared, the working folder, the descriptor to say the command's pid on (as
``bwrap --info-fd`` does) and an empty folder for the new root. This process makes user,
mount, PID, IPC, UTS (and network) namespaces, then forks the command's process, which is
PID 1 there: it mounts the new root, pivots into it, drops every capability (and the ability
to regain any by ``execve``) and runs the command. This process waits for it and exits with
its code; both die with their parent.
"""

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS = 1, 24, 28
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SECURE_ALL = 0x2F | 0xF0  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS locked; NO_CAP_AMBIENT_RAISE
_ST_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, 1024), (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21))
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


def call(name: str, *args: object) -> None:
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}{args[:3]!r}: {os.strerror(code)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    call("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
         flags, data and data.encode())


def bind(source: str, target: str, readonly: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    if readonly:  # (a remount must keep the flags the source's mount has: they are locked)
        flags = os.statvfs(target).f_flag
        kept = sum(ms for st, ms in _ST_FLAGS if flags & st)
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def build_root(spec: dict[str, Any]) -> None:
    root = spec["root"]
    os.makedirs(root, exist_ok=True)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for how, source, target in spec["mounts"]:
        inside = root + target
        if how in ("ro", "rw"):
            bind(source, inside, how == "ro")
        elif how == "proc":
            os.makedirs(inside, exist_ok=True)
            mount("proc", inside, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif how == "tmpfs":
            os.makedirs(inside, exist_ok=True)
            mount("tmpfs", inside, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        elif how == "dev":
            os.makedirs(inside, exist_ok=True)
            mount("tmpfs", inside, "tmpfs", MS_NOSUID, "mode=0755")
            for name in DEVICES:
                if os.path.exists(f"/dev/{name}"):
                    bind(f"/dev/{name}", f"{inside}/{name}", False)
            os.makedirs(f"{inside}/shm", exist_ok=True)
            mount("tmpfs", f"{inside}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
            for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
                os.symlink(f"/proc/self/fd/{fd}", f"{inside}/{name}")
            os.symlink("/proc/self/fd", f"{inside}/fd")
    os.chdir(root)
    number = {"x86_64": 155, "aarch64": 41, "riscv64": 41}[os.uname().machine]
    call("syscall", number, b".", b".")  # pivot_root(".", "."): the old root is stacked below
    call("umount2", b".", MNT_DETACH)
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", 1 | 8 | 0x40))  # UP|LOOPBACK|RUNNING


def drop_privileges() -> None:
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    call("prctl", PR_SET_SECUREBITS, SECURE_ALL, 0, 0, 0)
    call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def main() -> None:
    spec = json.loads(sys.argv[1])
    command = sys.argv[sys.argv.index("--") + 1:]
    call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
    call("unshare", flags | (0 if spec["network"] else CLONE_NEWNET))
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{spec['uid']} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    info = spec["info"]
    child = os.fork()
    if child == 0:  # PID 1 of the new namespace
        try:
            call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            os.close(info)
            build_root(spec)
            if not spec["network"]:
                loopback_up()
            os.chdir(spec["cwd"])
            os.setsid()  # (a session of its own: no terminal of the daemon's to write to)
            drop_privileges()
            os.execvp(command[0], command)
        except BaseException as exc:  # (never back into the launcher's code)
            print(f"distrib sandbox: {exc}", file=sys.stderr)
        os._exit(127)
    os.write(info, json.dumps({"child-pid": child}).encode())
    os.close(info)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # (passed on)
        signal.signal(sig, lambda s, _: os.kill(child, s))
    _, status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main()

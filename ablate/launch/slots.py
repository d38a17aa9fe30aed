"""Local slots are a machine-wide resource: `--jobs` bounds one runner, not the machine, and a
second `ablate submit` (another grid, or `--retry` while a runner is still busy) must not put
two cells on one core or one GPU.

Every CPU core and every GPU of this machine is a lock file under $ABLATE_SLOTS_DIR (default
/tmp/ablate-slots, shared by every runner of every user who can write there). A runner takes the
files a job needs (its slot's GPUs; for a CPU slot, as many free cores as the job has threads)
with flock before it starts the job, all or none, and holds them until the job has ended. The
kernel drops a lock when its holder dies, however it dies, so a crashed runner frees its slots;
the job it had started is then unaccounted for (the one case this does not cover).

    machine = MachineSlots()
    held = machine.take(slot)        # None: not free now, try again later
    ...job runs...
    held.release()
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

SLOTS_DIR = "/tmp/ablate-slots"


def machine_cpus() -> int:
    """The cores local jobs share: $ABLATE_SLOT_CPUS when set (a test, or a machine shared with
    other work), else all of this machine's."""
    value = os.environ.get("ABLATE_SLOT_CPUS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


class Held:
    """The lock files of one running job; release() hands them back."""

    def __init__(self, fds: list[int], names: list[str]):
        self.fds, self.names = fds, names

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the file drops its flock
        self.fds = []


class MachineSlots:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or os.environ.get("ABLATE_SLOTS_DIR") or SLOTS_DIR)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.root.chmod(0o1777)  # every user's runners share the machine's cores
        except PermissionError:
            pass

    def _try(self, name: str, holder: str) -> int | None:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())  # who holds it, for a person looking at the folder
        return fd

    def take(self, slot, holder: str = "") -> Held | None:
        """Lock what `slot` (a resources.Slot) needs on this machine, all or none."""
        holder = holder or f"pid {os.getpid()}\n"
        if slot.gpus:
            wanted = [[f"gpu-{g}"] for g in slot.gpus]  # each GPU: exactly that one
        else:
            cores = [f"cpu-{c}" for c in range(machine_cpus())]
            wanted = [cores] * min(max(1, slot.threads), len(cores))  # any free cores, as many as threads
        fds, names = [], []
        for choices in wanted:
            for name in choices:
                if name in names:
                    continue
                fd = self._try(name, holder)
                if fd is not None:
                    fds.append(fd)
                    names.append(name)
                    break
            else:  # not enough free: give back what was taken
                Held(fds, names).release()
                return None
        return Held(fds, names)

"""Entry script of the one-file binary (PyInstaller needs a file, not a module)."""

import os
import sys


def _leave_bootloader_group() -> None:
    # A one-file binary is two processes: PyInstaller's bootloader, which
    # forwards every signal it gets, and this one, its child. A terminal's
    # Ctrl-C reaches every process of the foreground group, so it would
    # arrive here twice (directly and forwarded), and a second signal means
    # "stop at once" rather than drain. In a group of our own we get each
    # signal once, through the bootloader.
    if not getattr(sys, "frozen", False):
        return
    try:
        parent = os.path.realpath(f"/proc/{os.getppid()}/exe")
    except OSError:
        return
    if parent == os.path.realpath(sys.executable):
        try:
            os.setpgid(0, 0)
        except OSError:
            pass


_leave_bootloader_group()

from flowqd.cli import main  # noqa: E402

raise SystemExit(main())

"""A directory whose last component is a symbolic link: followed only where the link's
owner is trusted.  Shared by both cores (the compiled one calls it for this rare case)."""

import errno
import os
import stat

from ._errors import error


def open_linked_directory(path: str) -> int:
    """Open the directory path names where its last component is a symbolic link: followed
    only where the link belongs to this user or to root, who alone could have made a link
    they own (another user's link could point anywhere).  Everything is resolved once: the
    link's parent, the link itself (opened without following it), then its target relative
    to that parent.  Anything but a trusted link to a directory raises OSError."""
    parent, name = os.path.split(path.rstrip("/") or "/")
    held = []
    try:
        held.append(os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        held.append(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=held[0]))
        link = os.fstat(held[1])
        if not stat.S_ISLNK(link.st_mode):
            raise error(errno.ENOTDIR, path)
        if link.st_uid not in (0, os.geteuid()):
            raise OSError(
                errno.ELOOP,
                f"a symbolic link of another user (uid {link.st_uid}) is there, and only this"
                " user's or root's are followed",
                path,
            )
        target = os.readlink("", dir_fd=held[1])
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=held[0])
    except OSError as failure:
        if failure.filename is None:
            raise error(failure.errno or errno.EIO, path) from None
        raise
    finally:
        for fd in held:
            os.close(fd)

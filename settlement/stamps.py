"""Which version of a file is there: the gateway's registry reload, the processor and the deliverer each
read the partner registry again only when its stamp changed."""

from pathlib import Path
from typing import NamedTuple


class FileStamp(NamedTuple):
    """What identifies one version of a file: a write in place changes the times (and often the size), a
    write-then-rename the inode, even with the same modification time and size."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of `path` now, or None when it cannot be read (missing, no permission)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return FileStamp(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

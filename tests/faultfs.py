#!/usr/bin/python3
"""faultfs: a passthrough FUSE filesystem that fails I/O on purpose, for tests/vm_faults.rs.

Serves BACKING at MOUNTPOINT. Reads and writes of a file whose name starts with "bad-" fail
with EIO, as a failing disk's sectors would; everything else passes through. It stands in for
device-mapper's `error`/`flakey` targets on hosts whose kernel has no device-mapper.

    /usr/bin/python3 tests/faultfs.py BACKING MOUNTPOINT    (Debian: python3-fusepy, fuse3)
"""

import errno
import os
import sys

from fusepy import FUSE, FuseOSError, Operations


class FaultFs(Operations):
    def __init__(self, backing):
        self.backing = os.path.realpath(backing)

    def _path(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    @staticmethod
    def _faulty(path):
        return os.path.basename(path).startswith("bad-")

    # Metadata passes through.
    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def statfs(self, path):
        s = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(s, k) for k in keys}

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.lchown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), times)

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))

    def symlink(self, name, target):
        os.symlink(target, self._path(name))

    def link(self, target, name):
        os.link(self._path(name), self._path(target))

    def truncate(self, path, length, fh=None):
        os.truncate(self._path(path), length)

    # Data: the faults.
    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        if self._faulty(path):
            raise FuseOSError(errno.EIO)
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        if self._faulty(path):
            raise FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def fsync(self, path, datasync, fh):
        if self._faulty(path):
            raise FuseOSError(errno.EIO)
        os.fsync(fh)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    FUSE(FaultFs(sys.argv[1]), sys.argv[2], foreground=True, nothreads=False)

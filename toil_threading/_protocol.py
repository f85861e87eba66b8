# One source for both cores and the facade: the compiled core includes this file at build
# time (csrc/_core_c.pyx), the pure core and the facade import it.  Plain Python only.
"""The on-disk protocol's names (Toil's, so both share a directory) and filesystem numbers."""

# A mutex M is the file MUTEX_PREFIX + M; an arena N is the mutex N + ARENA_MUTEX_SUFFIX
# and the directory N + ARENA_MEMBERS_SUFFIX.
MUTEX_PREFIX = "toil-mutex-"
ARENA_MUTEX_SUFFIX = "-arena-lock"
ARENA_MEMBERS_SUFFIX = "-arena-members"

# Name and member files are named as tempfile.mkstemp names them: NAME_PREFIX and
# NAME_LENGTH of NAME_CHARACTERS.
NAME_PREFIX = "tmp"
NAME_LENGTH = 8
NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"

# statfs(2) f_type numbers of the filesystems treated specially (linux/magic.h and the
# filesystems' own headers).

CEPH = 0x00C36400
FUSE = 0x65735546
NFS = 0x00006969

FILESYSTEM_NAMES = {
    CEPH: "ceph",
    FUSE: "fuse",
    NFS: "nfs",
    0x01021994: "tmpfs",
    0x0000EF53: "ext2/ext3/ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x794C7630: "overlayfs",
    0x2FC12FC1: "zfs",
    0x0000517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x47504653: "gpfs",
    0x0BD00BD0: "lustre",
    0x5346414F: "afs",
    0x01021997: "9p",
    0x01161970: "gfs2",
    0x7461636F: "ocfs2",
    0x19830326: "beegfs",
}

# Filesystems shared between machines, whose clients cache attributes and names: there a
# path can still seem to name a file that another client has unlinked or replaced, so
# the same-file check opens the path anew (which the server resolves) instead of
# trusting stat(2).  FUSE is included since most FUSE filesystems are network clients.
SHARED_FILESYSTEMS = frozenset(
    {
        FUSE,
        NFS,
        0x0000517B,
        0xFF534D42,
        0xFE534D42,
        0x47504653,
        0x0BD00BD0,
        0x5346414F,
        0x01021997,
        0x01161970,
        0x7461636F,
        0x19830326,
    }
)

#!/bin/busybox sh
# /init of the vufsd test guest: PID 1, busybox ash, in an initramfs built by
# tests/common/assets.rs. It prepares the views a test script needs, runs the
# script, and powers off.
#
# Kernel cmdline contract with tests/common/vm.rs:
#   vufs_tag=TAG       virtio-fs tag (absent: the VM has no virtio-fs device)
#   vufs_mount=0|1     mount the share at /mnt before the script (default 1)
#   vufs_mntopts=OPTS  virtio-fs mount options, comma separated (default none)
#   vufs_probe=1       accelerator probe: report VUFS-PROBE-OK and power off
#   vufs_9p=0          no 9p shares (a VM that migrates cannot have any): the
#                      script is /test/script.sh in the initramfs, /host is absent
# 9p shares from the host: `hostroot` (the host's /, read-only) and `testdir`
# (this run's io/ directory, read-write, holding script.sh).
# Test output goes to the second serial port (ttyS1); the kernel console
# (ttyS0) stays a plain log. Lines on ttyS1 written by this file:
#   VUFS-MOUNTED uptime=SECS   the share is mounted (the host timestamps it)
#   FAIL vufs-init DETAIL      setup failed; the script did not run
#   DONE rc=N                  the script exited with status N; powering off

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# What udev would add: bash's process substitution, <(...), reads /dev/fd/N (xfstests'
# "not run" checks use it).
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr

# Raw mode: no \n -> \r\n translation and no echo of anything sent to us.
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3>/dev/ttyS1

say() {
    echo "$*" >&3
    echo "vufs-init: $*" >/dev/kmsg
}
die() {
    say "FAIL vufs-init $*"
    say "DONE rc=255"
    sync
    poweroff -f
}

VUFS_TAG=
VUFS_MOUNT=1
VUFS_MNTOPTS=
VUFS_9P=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    vufs_tag=*) VUFS_TAG=${arg#vufs_tag=} ;;
    vufs_mount=*) VUFS_MOUNT=${arg#vufs_mount=} ;;
    vufs_mntopts=*) VUFS_MNTOPTS=${arg#vufs_mntopts=} ;;
    vufs_9p=*) VUFS_9P=${arg#vufs_9p=} ;;
    vufs_probe=1)
        say "VUFS-PROBE-OK"
        poweroff -f
        ;;
    esac
done
export VUFS_TAG VUFS_MNTOPTS

mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run

# Stored decompressed, in dependency order (see assets.rs).
while read -r mod; do
    insmod "/lib/modules/$mod" || die "insmod $mod"
done </lib/modules/modules.order

# The host's root at /host and this run's io/ at /test, over 9p.
host_views() {
    # cache=loose suits a tree nobody changes during the test, and makes running
    # host tools much faster than the default cache=none.
    mkdir -p /.hostro /.hostrw /host /test /mnt
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /.hostro ||
        die "mount 9p hostroot"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 testdir /test || die "mount 9p testdir"

    # /host = overlay(host root, tmpfs). A read-only 9p tree cannot have mount
    # points added to it; the tmpfs upper layer makes the view writable, so
    # /proc, /dev, /tmp, /mnt... can be mounted over and `chroot /host` works.
    mount -t tmpfs -o mode=755 tmpfs /.hostrw
    mkdir -p /.hostrw/upper /.hostrw/work
    mount -t overlay -o lowerdir=/.hostro,upperdir=/.hostrw/upper,workdir=/.hostrw/work overlay /host ||
        die "mount overlay /host"
    for d in proc sys dev; do
        mount --rbind /$d /host/$d || die "bind /$d into /host"
    done
    mount -t tmpfs -o mode=1777 tmpfs /host/tmp
    mount -t tmpfs -o mode=755 tmpfs /host/run
    mkdir -p /host/mnt /host/test
    mount --bind /test /host/test || die "bind /test into /host"

    # /mnt and /host/mnt are peers of one shared mount: whatever is mounted or
    # unmounted on one (e.g. `mount -t virtiofs $VUFS_TAG /mnt`, `umount /mnt`)
    # shows up on the other, so the share has the same path in both views.
    mount -t tmpfs -o size=4k,mode=755 vufs-mnt /mnt || die "tmpfs /mnt"
    mount --make-shared /mnt || die "make-shared /mnt"
    mount --bind /mnt /host/mnt || die "bind /mnt into /host"
}

if [ "$VUFS_9P" = 1 ]; then
    host_views
else
    mkdir -p /test /mnt
fi

. /lib/vufs.sh

if [ -n "$VUFS_TAG" ] && [ "$VUFS_MOUNT" = 1 ]; then
    _err=$(share_mount 2>&1) || die "mount -t virtiofs $VUFS_TAG /mnt: $_err"
    say "VUFS-MOUNTED uptime=$(cut -d' ' -f1 /proc/uptime)"
fi

cd /
# A subshell, so that `exit` in the script cannot skip the shutdown below.
(. /test/script.sh) >&3 2>&3 </dev/null
rc=$?
cd /
sync
# Unmount so the daemon sees FUSE_DESTROY and every write is flushed.
if share_is_mounted; then
    share_umount || say "WARN vufs-init: umount /mnt failed"
fi
say "DONE rc=$rc"
poweroff -f

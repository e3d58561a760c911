# Guest-side helpers for test scripts (busybox ash); sourced before the
# script, which runs as root in the busybox root with cwd /, stdin from
# /dev/null and stdout+stderr on the test serial port.
#
# Paths (the same in the busybox root and in `chroot /host`):
#   /mnt   the virtio-fs share (unless the test turned auto-mount off)
#   /test  this run's io/ directory on the host (9p, read-write)
#   /host  the host's root: an overlay of a read-only 9p mount and a tmpfs,
#          with /proc /sys /dev /tmp /run /mnt /test mounted inside
# Reporting: one line per check, `OK <name>` or `FAIL <name> <detail>`;
# names have no spaces. The init prints `DONE rc=<status>` after the script.

VUFS_SHARE=/mnt

ok() { echo "OK $1"; }
fail() {
    _vufs_n=$1
    shift
    echo "FAIL $_vufs_n $*"
}

# check NAME CMD...: OK if CMD exits 0, else FAIL with its status and output.
check() {
    _vufs_n=$1
    shift
    if _vufs_out=$("$@" 2>&1); then
        ok "$_vufs_n"
    else
        fail "$_vufs_n" "exit=$? cmd=[$*] out=[$(echo "$_vufs_out" | tail -n 5 | tr '\n' '|')]"
    fi
}

# check_fails NAME CMD...: OK if CMD exits non-zero (an expected error).
check_fails() {
    _vufs_n=$1
    shift
    if _vufs_out=$("$@" 2>&1); then
        fail "$_vufs_n" "expected failure but succeeded: cmd=[$*] out=[$(echo "$_vufs_out" | tail -n 5 | tr '\n' '|')]"
    else
        ok "$_vufs_n"
    fi
}

# expect_eq NAME ACTUAL EXPECTED
expect_eq() {
    if [ "$2" = "$3" ]; then
        ok "$1"
    else
        fail "$1" "got=[$2] want=[$3]"
    fi
}

# hostrun CMD... (a command, /bin/hostrun): run a host tool chrooted into /host.

# share_mount [OPTS]: mount the virtio-fs share at /mnt (OPTS default to the
# test's mount options); share_umount; share_is_mounted.
share_mount() {
    _vufs_o=${1-$VUFS_MNTOPTS}
    if [ -n "$_vufs_o" ]; then
        mount -t virtiofs -o "$_vufs_o" "$VUFS_TAG" /mnt
    else
        mount -t virtiofs "$VUFS_TAG" /mnt
    fi
}
share_umount() { umount /mnt; }
share_is_mounted() { grep -q "^[^ ]* /mnt virtiofs " /proc/mounts; }

# host_do N: ask the host for action N of the test (VmConfig::on_host_do) and wait
# until it is done (60 s at most); prints `HOST-DONE N <ok|why not>`.
host_do() {
    echo "HOST-DO $1"
    _vufs_i=0
    while [ ! -e "/test/ack.$1" ] && [ $_vufs_i -lt 600 ]; do
        sleep 0.1
        _vufs_i=$((_vufs_i + 1))
    done
    echo "HOST-DONE $1 $(cat "/test/ack.$1" 2>/dev/null || echo timeout)"
}

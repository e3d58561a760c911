/*
 * migcheck: the guest side of the migration tests (tests/vm_migration.rs).
 *
 * Built statically by the test harness (gcc -static) and put into the guest's
 * initramfs: a VM that migrates has no 9p view of the host, so its tools must
 * live in RAM. It holds what a guest holds across a migration -- an open file
 * with a file offset, a half-read directory handle, its cwd inside the share,
 * an O_NOATIME handle, thousands of looked-up inodes -- prints READY, waits
 * for the host to create SHARE/.go (after the switch), and then uses every
 * one of them again, printing one line per result:
 *
 *   OK <name>              a check passed
 *   FAIL <name> <detail>   a check failed
 *   VICTIM <text|errno>    what reading victim.txt's old handle gives
 *   WALK found=N missing=LIST
 *
 * Usage: migcheck SHARE [FILES-PER-DIR [OPTION...]]   (the host prepared
 * SHARE/work, see the test). Options: `lock` takes a flock(2) lock on data.bin
 * before READY; `unlinked` also holds a file it created and unlinked, and
 * reads it back after the switch (OK unlinked-fd).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DATA_LEN 65536
#define LIST_N 300
#define TREE_DIRS 20

static int failures;

static void ok(const char *name) { printf("OK %s\n", name); fflush(stdout); }

static void fail(const char *name, const char *fmt, const char *detail, int err)
{
	printf("FAIL %s ", name);
	printf(fmt, detail);
	if (err)
		printf(": %s", strerror(err));
	printf("\n");
	fflush(stdout);
	failures++;
}

/* The byte at offset i of data.bin, as the host wrote it. */
static unsigned char pattern(long i) { return (unsigned char)(i * 7 + 3); }

static int check_pattern(const unsigned char *buf, long off, long n)
{
	for (long i = 0; i < n; i++)
		if (buf[i] != pattern(off + i))
			return 0;
	return 1;
}

struct linux_dirent64 {
	unsigned long long d_ino;
	long long d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

static char seen[LIST_N];

/* getdents64 on fd with a buffer of len bytes; marks e<N> names seen. Returns
 * entries read, 0 at the end, -1 on error (errno set), -2 on a duplicate. */
static int read_dir(int fd, size_t len)
{
	char buf[32768];
	long n = syscall(SYS_getdents64, fd, buf, len);
	if (n < 0)
		return -1;
	int count = 0;
	for (long pos = 0; pos < n;) {
		struct linux_dirent64 *d = (void *)(buf + pos);
		pos += d->d_reclen;
		if (d->d_name[0] != 'e')
			continue;
		int i = atoi(d->d_name + 1);
		if (i < 0 || i >= LIST_N)
			continue;
		if (seen[i])
			return -2;
		seen[i] = 1;
		count++;
	}
	return n == 0 ? 0 : (count ? count : 1);
}

/* lstat every tree/dD/fF; returns how many exist, and lists missing ones. */
static int walk(int files_per_dir, char *missing, size_t cap)
{
	int found = 0;
	char path[64];
	missing[0] = 0;
	for (int d = 0; d < TREE_DIRS; d++)
		for (int f = 0; f < files_per_dir; f++) {
			struct stat st;
			snprintf(path, sizeof path, "tree/d%d/f%d", d, f);
			if (lstat(path, &st) == 0)
				found++;
			else if (strlen(missing) + strlen(path) + 2 < cap) {
				if (missing[0])
					strcat(missing, ",");
				strcat(missing, path);
			}
		}
	return found;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: migcheck SHARE [files-per-dir]\n");
		return 2;
	}
	const char *share = argv[1];
	int per_dir = argc > 2 ? atoi(argv[2]) : 100;
	char work[256], go[256], cwd[256], missing[4096];
	unsigned char buf[4096];
	snprintf(work, sizeof work, "%s/work", share);
	snprintf(go, sizeof go, "%s/.go", share);

	/* --- before the switch --- */
	if (chdir(work) != 0) {
		fail("setup", "chdir %s", work, errno);
		return 1;
	}
	int data = open("data.bin", O_RDWR);
	if (data < 0 || pread(data, buf, 4096, 0) != 4096 || !check_pattern(buf, 0, 4096)) {
		fail("setup", "%s", "data.bin", errno);
		return 1;
	}
	lseek(data, 4096, SEEK_SET);
	int dir = open("listdir", O_RDONLY | O_DIRECTORY);
	/* A small buffer: a few entries now, the rest after the switch. */
	int first = dir < 0 ? -1 : read_dir(dir, 256);
	if (first <= 0) {
		fail("setup", "%s", "listdir", errno);
		return 1;
	}
	int ro = open("ro.txt", O_RDONLY | O_NOATIME);
	int victim = open("victim.txt", O_RDONLY);
	if (ro < 0 || victim < 0) {
		fail("setup", "%s", "ro.txt/victim.txt", errno);
		return 1;
	}
	int lock = 0, unlinked = -1;
	for (int i = 3; i < argc; i++) {
		if (strcmp(argv[i], "lock") == 0)
			lock = 1;
		else if (strcmp(argv[i], "unlinked") == 0)
			unlinked = 0;
	}
	if (lock && flock(data, LOCK_EX) != 0) {
		fail("setup", "%s", "flock", errno);
		return 1;
	}
	if (unlinked == 0) {
		unlinked = open("scratch.tmp", O_RDWR | O_CREAT | O_EXCL, 0600);
		if (unlinked < 0 || write(unlinked, "scratch\n", 8) != 8 || unlink("scratch.tmp") != 0) {
			fail("setup", "%s", "scratch.tmp", errno);
			return 1;
		}
	}
	int before = walk(per_dir, missing, sizeof missing);
	printf("LOOKED-UP %d\n", before);
	printf("READY\n");
	fflush(stdout);

	/* --- the host migrates the VM, then creates .go --- */
	for (int i = 0; i < 6000; i++) {
		struct stat st;
		if (stat(go, &st) == 0)
			break;
		usleep(100000);
	}
	printf("RESUMED\n");
	fflush(stdout);

	/* The open file: its offset, its data, writes through it. */
	ssize_t n = read(data, buf, 4096);
	if (n == 4096 && check_pattern(buf, 4096, 4096))
		ok("data-fd-read-at-offset");
	else
		fail("data-fd-read-at-offset", "read %s", n < 0 ? "failed" : "wrong bytes", n < 0 ? errno : 0);
	if (write(data, "MIGRATED", 8) == 8 && fsync(data) == 0)
		ok("data-fd-write");
	else
		fail("data-fd-write", "%s", "write+fsync", errno);
	struct stat st;
	if (fstat(data, &st) == 0 && st.st_size == DATA_LEN)
		ok("data-fd-fstat");
	else
		fail("data-fd-fstat", "%s", "size", errno);

	/* The directory handle: the rest of the listing, no entry twice or lost. */
	int r, rest = 0;
	while ((r = read_dir(dir, sizeof buf)) > 0)
		rest += r;
	int all = 1;
	for (int i = 0; i < LIST_N; i++)
		all &= seen[i];
	if (r == 0 && all)
		ok("dir-fd-continues");
	else
		fail("dir-fd-continues", "%s", r == -2 ? "an entry came twice" : r < 0 ? "getdents" : "entries missing", r == -1 ? errno : 0);

	/* The cwd: relative names, and a new file. */
	if (getcwd(cwd, sizeof cwd) && strcmp(cwd, work) == 0)
		ok("cwd");
	else
		fail("cwd", "getcwd gave %s", cwd, errno);
	int out = open("after.txt", O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (out >= 0 && write(out, "written after the switch\n", 25) == 25 && close(out) == 0)
		ok("create-in-cwd");
	else
		fail("create-in-cwd", "%s", "after.txt", errno);

	/* The O_NOATIME handle. */
	memset(buf, 0, sizeof buf);
	n = pread(ro, buf, sizeof buf - 1, 0);
	if (n > 0 && strncmp((char *)buf, "read-only\n", 10) == 0)
		ok("noatime-fd");
	else
		fail("noatime-fd", "%s", "read", n < 0 ? errno : 0);

	/* The victim: whatever the host did to it, its old handle gives its old
	 * bytes or an error, never someone else's. */
	memset(buf, 0, sizeof buf);
	n = pread(victim, buf, 64, 0);
	if (n >= 0) {
		buf[strcspn((char *)buf, "\n")] = 0;
		printf("VICTIM %s\n", buf);
	} else {
		printf("VICTIM errno=%d\n", errno);
	}

	/* The file that has no name any more. */
	if (unlinked >= 0) {
		memset(buf, 0, sizeof buf);
		n = pread(unlinked, buf, 64, 0);
		if (n == 8 && memcmp(buf, "scratch\n", 8) == 0)
			ok("unlinked-fd");
		else
			fail("unlinked-fd", "%s", "pread", n < 0 ? errno : 0);
	}

	/* Every looked-up inode again. */
	int after = walk(per_dir, missing, sizeof missing);
	printf("WALK found=%d missing=%s\n", after, missing[0] ? missing : "-");
	fflush(stdout);
	return failures ? 1 : 0;
}

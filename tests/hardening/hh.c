/*
 * hh: escape attempts, a latency probe and noise, run as root inside a
 * container.
 *
 * Built static by tests/hardening/images.py and put in a busybox image as
 * /hh. Each attempt prints one line
 *
 *     ATTEMPT <name> REFUSED <errno name>   the kernel said no
 *     ATTEMPT <name> ALLOWED <detail>       an escape: the test fails
 *     ATTEMPT <name> SKIPPED <why>          nothing to try here
 *
 * Attempts never change the host when they are allowed: a file is written
 * back with the value just read from it, a module or kexec image is
 * garbage, a device node is removed at once, an executable opened for
 * writing is closed unwritten.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case EROFS: return "EROFS";
	case ENOENT: return "ENOENT";
	case EINVAL: return "EINVAL";
	case ENODEV: return "ENODEV";
	case ENXIO: return "ENXIO";
	case EBUSY: return "EBUSY";
	case ETXTBSY: return "ETXTBSY";
	case ENOSYS: return "ENOSYS";
	case EBADF: return "EBADF";
	case ENOEXEC: return "ENOEXEC";
	case ENOTDIR: return "ENOTDIR";
	case EEXIST: return "EEXIST";
	case ESTALE: return "ESTALE";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: return strerror(e);
	}
}

static void refused(const char *name, int e)
{
	printf("ATTEMPT %s REFUSED %s\n", name, errname(e));
}

static void allowed(const char *name, const char *detail)
{
	printf("ATTEMPT %s ALLOWED %s\n", name, detail);
}

static void skipped(const char *name, const char *why)
{
	printf("ATTEMPT %s SKIPPED %s\n", name, why);
}

/* mknod of a block (or char) device; removed at once if it worked. */
static int do_mknod(const char *kind, unsigned maj, unsigned min)
{
	char name[64];
	const char *path = "/tmp/hh-node";
	mode_t type = strcmp(kind, "b") == 0 ? S_IFBLK : S_IFCHR;

	snprintf(name, sizeof(name), "mknod-%s-%u:%u", kind, maj, min);
	unlink(path);
	if (mknod(path, type | 0600, makedev(maj, min)) == 0) {
		unlink(path);
		allowed(name, "node created");
	} else {
		refused(name, errno);
	}
	return 0;
}

/* Mount the device at path (the host's root disk, if it were reachable). */
static void try_mount_dev(const char *path)
{
	char name[300];
	const char *types[] = {"ext4", "xfs", "btrfs", NULL};
	int i, e = 0;

	mkdir("/tmp/hh-mnt", 0700);
	for (i = 0; types[i]; i++) {
		snprintf(name, sizeof(name), "mount-%s-%s", types[i], path);
		if (mount(path, "/tmp/hh-mnt", types[i], MS_RDONLY, NULL) == 0) {
			umount("/tmp/hh-mnt");
			allowed(name, "mounted");
			continue;
		}
		e = errno;
		refused(name, e);
	}
}

static int do_blockdev(unsigned maj, unsigned min, const char *host_path)
{
	DIR *d;
	struct dirent *ent;
	struct stat st;
	char path[512];
	int found = 0;

	/* The host's root disk: as a node made here, and by its host name. */
	unlink("/tmp/hh-disk");
	if (mknod("/tmp/hh-disk", S_IFBLK | 0600, makedev(maj, min)) == 0) {
		allowed("mknod-host-disk", "node created");
		try_mount_dev("/tmp/hh-disk");
		unlink("/tmp/hh-disk");
	} else {
		refused("mknod-host-disk", errno);
	}
	try_mount_dev(host_path);
	/* Any block device LXC might have left in /dev. */
	d = opendir("/dev");
	while (d && (ent = readdir(d))) {
		snprintf(path, sizeof(path), "/dev/%s", ent->d_name);
		if (lstat(path, &st) == 0 && S_ISBLK(st.st_mode)) {
			found++;
			try_mount_dev(path);
		}
	}
	if (d)
		closedir(d);
	printf("BLOCKDEVS %d\n", found);
	return 0;
}

static int do_module(void)
{
	char garbage[64];
	int fd;

	memset(garbage, 0x7f, sizeof(garbage));
	if (syscall(SYS_init_module, garbage, sizeof(garbage), "") == 0)
		allowed("init_module", "loaded");
	else if (errno == EPERM)
		refused("init_module", errno);
	else if (errno == ENOSYS)
		skipped("init_module", "not in this kernel");
	else
		/* Past the permission check: the loader read our bytes. */
		allowed("init_module", errname(errno));

	fd = open("/bin/busybox", O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		skipped("finit_module", "no /bin/busybox");
	} else {
		if (syscall(SYS_finit_module, fd, "", 0) == 0)
			allowed("finit_module", "loaded");
		else if (errno == EPERM)
			refused("finit_module", errno);
		else if (errno == ENOSYS)
			skipped("finit_module", "not in this kernel");
		else
			allowed("finit_module", errname(errno));
		close(fd);
	}
	if (syscall(SYS_delete_module, "hh_no_such_module", O_NONBLOCK) == 0)
		allowed("delete_module", "removed");
	else if (errno == EPERM)
		refused("delete_module", errno);
	else if (errno == ENOSYS)
		skipped("delete_module", "not in this kernel");
	else
		allowed("delete_module", errname(errno));
	return 0;
}

static int do_kexec(void)
{
	/* No segments: at most unloads a kexec kernel nobody loaded. */
	if (syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL) == 0)
		allowed("kexec_load", "accepted");
	else if (errno == EPERM)
		refused("kexec_load", errno);
	else if (errno == ENOSYS)
		skipped("kexec_load", "not in this kernel");
	else
		allowed("kexec_load", errname(errno));
	if (syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0UL) == 0)
		allowed("kexec_file_load", "accepted");
	else if (errno == EPERM)
		refused("kexec_file_load", errno);
	else if (errno == ENOSYS)
		skipped("kexec_file_load", "not in this kernel");
	else
		allowed("kexec_file_load", errname(errno));
	return 0;
}

/* Write back exactly what the file holds: a permission test, no change. */
static void write_same(const char *name, const char *path)
{
	char buf[4096];
	ssize_t n = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf));
		close(fd);
		if (n < 0)
			n = 0;
	}
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			skipped(name, path);
		else
			refused(name, errno);
		return;
	}
	if (n == 0) {
		buf[0] = '\n';
		n = 1;
	}
	if (write(fd, buf, n) < 0) {
		refused(name, errno);
	} else {
		char detail[600];

		snprintf(detail, sizeof(detail), "wrote %s", path);
		allowed(name, detail);
	}
	close(fd);
}

/* Open for writing only, never write (sysrq-trigger, devices.allow). */
static void open_only(const char *name, const char *path)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd >= 0) {
		char detail[600];

		close(fd);
		snprintf(detail, sizeof(detail), "opened %s", path);
		allowed(name, detail);
	} else if (errno == ENOENT) {
		skipped(name, path);
	} else {
		refused(name, errno);
	}
}

static const char *controllers[] = {"memory", "pids", "cpuset", "cpu",
	"cpuacct", "blkio", "devices", "freezer", "rdma", "net_cls",
	"perf_event", "hugetlb", "misc", NULL};

/* The container's own cgroup limits and the host's kernel knobs. */
static int do_hostfiles(void)
{
	char path[512], name[300];
	const char *own[][2] = {
		{"memory", "memory.limit_in_bytes"},
		{"memory", "memory.memsw.limit_in_bytes"},
		{"pids", "pids.max"},
		{"cpuset", "cpuset.cpus"},
		{"cpu", "cpu.cfs_quota_us"},
		{"cpu", "cpu.shares"},
		{"blkio", "blkio.weight"},
		{"devices", "devices.list"},
		{"memory", "notify_on_release"},
		{"unified", "memory.max"},
		{"unified", "pids.max"},
		{NULL, NULL}};
	int i;

	for (i = 0; own[i][0]; i++) {
		char dir[256];

		/* LXC mounts no cgroupfs in these containers: mount the
		 * hierarchy (allowed in a cgroup namespace) to reach the
		 * container's own cgroup and its limits. */
		snprintf(dir, sizeof(dir), "/sys/fs/cgroup/%s", own[i][0]);
		if (access(dir, F_OK) != 0) {
			snprintf(dir, sizeof(dir), "/tmp/hh-own-%s", own[i][0]);
			mkdir(dir, 0700);
			if (strcmp(own[i][0], "unified") == 0)
				mount("cgroup2", dir, "cgroup2", 0, NULL);
			else
				mount("cgroup", dir, "cgroup", 0, own[i][0]);
		}
		snprintf(path, sizeof(path), "%s/%s", dir, own[i][1]);
		snprintf(name, sizeof(name), "cgroup-write-%s/%s", own[i][0],
			 own[i][1]);
		write_same(name, path);
	}
	/* The root cgroup files, were the cgroup namespace not there. */
	for (i = 0; controllers[i]; i++) {
		snprintf(path, sizeof(path), "/sys/fs/cgroup/%s/release_agent",
			 controllers[i]);
		snprintf(name, sizeof(name), "release_agent-write-%s",
			 controllers[i]);
		write_same(name, path);
	}
	open_only("cgroup-devices.allow", access("/sys/fs/cgroup/devices",
		  F_OK) == 0 ? "/sys/fs/cgroup/devices/devices.allow" :
		  "/tmp/hh-own-devices/devices.allow");
	write_same("proc-core_pattern", "/proc/sys/kernel/core_pattern");
	write_same("proc-modprobe", "/proc/sys/kernel/modprobe");
	write_same("proc-min_free_kbytes", "/proc/sys/vm/min_free_kbytes");
	open_only("proc-sysrq-trigger", "/proc/sysrq-trigger");
	write_same("sys-uevent_helper", "/sys/kernel/uevent_helper");
	open_only("sys-power-state", "/sys/power/state");
	return 0;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok ? 0 : -1;
}

/*
 * Mount cgroup v1 hierarchies here and write their release_agent: one
 * attempt per hierarchy, refused at the mount or at the write (the file
 * exists only at a hierarchy's root, out of a cgroup namespace's view).
 */
static void mount_cgroups(const char *where)
{
	char dir[256], name[300], path[512];
	const char *opts[] = {"rdma", "memory", "pids", "cpuset", "freezer",
		"devices", "blkio", "net_cls", "none,name=hh", NULL};
	int i;

	for (i = 0; opts[i]; i++) {
		snprintf(dir, sizeof(dir), "/tmp/hh-cg-%s-%d", where, i);
		mkdir(dir, 0700);
		snprintf(name, sizeof(name), "cgroup-release_agent-%s-%s",
			 where, opts[i]);
		if (mount("cgroup", dir, "cgroup", 0, opts[i]) != 0) {
			refused(name, errno);
			continue;
		}
		printf("MOUNTED cgroup %s in %s\n", opts[i], where);
		snprintf(path, sizeof(path), "%s/release_agent", dir);
		if (access(path, F_OK) != 0)
			refused(name, errno);
		else
			write_same(name, path);
		snprintf(path, sizeof(path), "%s/notify_on_release", dir);
		snprintf(name, sizeof(name), "cgroup-notify_on_release-%s-%s",
			 where, opts[i]);
		write_same(name, path);
		umount2(dir, MNT_DETACH);
	}
}

/* CVE-2022-0492: unshare -UrmC, mount cgroup v1, write release_agent. */
static int do_cgroup(void)
{
	pid_t pid;
	int status;
	char map[64];

	fflush(stdout);
	mount_cgroups("root");
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		uid_t uid = getuid();
		gid_t gid = getgid();

		if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP)) {
			refused("cgroup-unshare-UrmC", errno);
			fflush(stdout);
			_exit(0);
		}
		snprintf(map, sizeof(map), "0 %u 1", uid);
		write_file("/proc/self/uid_map", map);
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof(map), "0 %u 1", gid);
		write_file("/proc/self/gid_map", map);
		mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
		mount_cgroups("userns");
		fflush(stdout);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	return 0;
}

/*
 * Shocker: open_by_handle_at needs CAP_DAC_READ_SEARCH on the host. The
 * handle comes from a filesystem that has them (overlay may not).
 */
static int do_handle(void)
{
	struct {
		struct file_handle fh;
		unsigned char data[MAX_HANDLE_SZ];
	} h;
	const char *paths[] = {"/", "/dev", "/tmp", "/proc", NULL};
	int mount_id, fd, mfd, i;

	for (i = 0; paths[i]; i++) {
		h.fh.handle_bytes = MAX_HANDLE_SZ;
		if (name_to_handle_at(AT_FDCWD, paths[i], &h.fh, &mount_id,
				      0) == 0)
			break;
	}
	if (!paths[i]) {
		skipped("open_by_handle_at", "no filesystem gives handles");
		return 0;
	}
	mfd = open(paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = syscall(SYS_open_by_handle_at, mfd, &h.fh, O_RDONLY);
	if (fd >= 0) {
		close(fd);
		allowed("open_by_handle_at", paths[i]);
	} else if (errno == EPERM) {
		refused("open_by_handle_at", errno);
	} else {
		allowed("open_by_handle_at", errname(errno));
	}
	close(mfd);
	return 0;
}

struct held {
	int fd;
	char target[256];
};

struct tally {
	int refused, memfd_sealed, memfd_unsealed, last_errno;
};

/*
 * Open a runtime's executable for writing, never writing to it. A real
 * file (the host's lxc-attach) opened is an escape; a memfd copy of the
 * runtime (LXC's fix) is no way to the host's binary: report whether it
 * is sealed against writes too.
 */
static void try_exe(const char *kind, const char *path, const char *target,
		    struct tally *t)
{
	char name[64];
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0) {
		t->refused++;
		t->last_errno = errno;
		return;
	}
	close(fd);
	if (strncmp(target, "/memfd:", 7) != 0) {
		snprintf(name, sizeof(name), "%s", kind);
		allowed(name, target);
		return;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && (fcntl(fd, F_GET_SEALS) & F_SEAL_WRITE))
		t->memfd_sealed++;
	else
		t->memfd_unsealed++;
	if (fd >= 0)
		close(fd);
}

static void report(const char *kind, struct tally *t)
{
	char name[64];

	snprintf(name, sizeof(name), "%s", kind);
	if (t->refused)
		printf("ATTEMPT %s REFUSED %s x%d\n", name,
		       errname(t->last_errno), t->refused);
	if (t->memfd_sealed)
		printf("ATTEMPT %s-memfd REFUSED sealed-copy x%d\n", name,
		       t->memfd_sealed);
	if (t->memfd_unsealed)
		printf("ATTEMPT %s-memfd SKIPPED private-unsealed-copy x%d\n",
		       name, t->memfd_unsealed);
}

/*
 * CVE-2019-5736: catch the runtime (lxc-attach) while it enters the
 * container and open its /proc/PID/exe for writing, at once and, as the
 * published exploit does, later through an O_PATH descriptor.
 */
static int do_exe_watch(int seconds)
{
	struct held held[256];
	struct tally now = {0}, later = {0};
	int nheld = 0, seen = 0, i;
	time_t end = time(NULL) + seconds;
	pid_t self = getpid(), parent = getppid();
	char path[64], target[256];

	while (time(NULL) < end) {
		DIR *d = opendir("/proc");
		struct dirent *ent;

		while (d && (ent = readdir(d))) {
			int pid = atoi(ent->d_name);
			ssize_t n;
			int fd;

			if (pid <= 1 || pid == self || pid == parent)
				continue;
			snprintf(path, sizeof(path), "/proc/%d/exe", pid);
			n = readlink(path, target, sizeof(target) - 1);
			if (n <= 0)
				continue;
			target[n] = 0;
			/* The container's own programs are its own to write. */
			if (strcmp(target, "/bin/busybox") == 0 ||
			    strcmp(target, "/hh") == 0)
				continue;
			seen++;
			if (nheld < 256) {
				fd = open(path, O_PATH | O_CLOEXEC);
				if (fd >= 0) {
					held[nheld].fd = fd;
					snprintf(held[nheld].target, 256, "%s",
						 target);
					nheld++;
				}
			}
			try_exe("exe-open-write", path, target, &now);
		}
		if (d)
			closedir(d);
	}
	/* The runtime has exited by now: reopen what we held for writing. */
	for (i = 0; i < nheld; i++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", held[i].fd);
		try_exe("exe-reopen-write", path, held[i].target, &later);
		close(held[i].fd);
	}
	printf("EXE_SEEN %d HELD %d\n", seen, nheld);
	for (i = 0; i < nheld && i < 3; i++)
		printf("EXE target %s\n", held[i].target);
	if (!seen)
		skipped("exe-overwrite", "no runtime process seen");
	report("exe-open-write", &now);
	report("exe-reopen-write", &later);
	return 0;
}

/* Memory hog: a child touches mb MiB (past the limit: OOM), again and
 * again. */
static int do_hog(int mb)
{
	for (;;) {
		pid_t pid = fork();

		if (pid == 0) {
			size_t size = (size_t)mb << 20, i;
			/* volatile: the compiler must not drop the stores. */
			volatile char *p = malloc(size);

			for (;;)
				for (i = 0; p && i < size; i += 4096)
					p[i] = (char)i;
		}
		if (pid > 0)
			waitpid(pid, NULL, 0);
		usleep(20000);
	}
	return 0;
}

/* Fork bomb: every process forks for ever, also once the pids cgroup
 * says no. */
static int do_bomb(void)
{
	for (;;)
		fork();
	return 0;
}

/* Disk filler: write path until the disk is full, remove it, again. */
static int do_fill(const char *path)
{
	static char buf[1 << 20];

	memset(buf, 0x5a, sizeof(buf));
	for (;;) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0) {
			usleep(100000);
			continue;
		}
		while (write(fd, buf, sizeof(buf)) > 0)
			;
		fsync(fd);
		close(fd);
		unlink(path);
	}
	return 0;
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;

	return (x > y) - (x < y);
}

/* fork + exec /bin/true n times; microseconds each, sorted. */
static int do_lat(int n)
{
	long *us = calloc(n, sizeof(long));
	struct timespec a, b;
	int i, status;

	for (i = 0; i < n; i++) {
		pid_t pid;

		clock_gettime(CLOCK_MONOTONIC, &a);
		pid = fork();
		if (pid == 0) {
			execl("/bin/true", "true", (char *)NULL);
			_exit(127);
		}
		if (pid < 0) {
			us[i] = 10000000;
			continue;
		}
		waitpid(pid, &status, 0);
		clock_gettime(CLOCK_MONOTONIC, &b);
		us[i] = (b.tv_sec - a.tv_sec) * 1000000L +
			(b.tv_nsec - a.tv_nsec) / 1000;
	}
	qsort(us, n, sizeof(long), cmp_long);
	printf("LAT n=%d median=%ld p90=%ld max=%ld\n", n, us[n / 2],
	       us[n * 9 / 10], us[n - 1]);
	free(us);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		goto usage;
	if (!strcmp(argv[1], "mknod") && argc == 5)
		return do_mknod(argv[2], atoi(argv[3]), atoi(argv[4]));
	if (!strcmp(argv[1], "blockdev") && argc == 5)
		return do_blockdev(atoi(argv[2]), atoi(argv[3]), argv[4]);
	if (!strcmp(argv[1], "module"))
		return do_module();
	if (!strcmp(argv[1], "kexec"))
		return do_kexec();
	if (!strcmp(argv[1], "hostfiles"))
		return do_hostfiles();
	if (!strcmp(argv[1], "cgroup"))
		return do_cgroup();
	if (!strcmp(argv[1], "handle"))
		return do_handle();
	if (!strcmp(argv[1], "exe-watch") && argc == 3)
		return do_exe_watch(atoi(argv[2]));
	if (!strcmp(argv[1], "lat") && argc == 3)
		return do_lat(atoi(argv[2]));
	if (!strcmp(argv[1], "bomb"))
		return do_bomb();
	if (!strcmp(argv[1], "hog") && argc == 3)
		return do_hog(atoi(argv[2]));
	if (!strcmp(argv[1], "fill") && argc == 3)
		return do_fill(argv[2]);
usage:
	fprintf(stderr, "usage: hh mknod b|c MAJ MIN | blockdev MAJ MIN PATH | "
		"module | kexec | hostfiles | cgroup | handle | "
		"exe-watch SECONDS | lat N | hog MIB | fill PATH | bomb\n");
	return 2;
}

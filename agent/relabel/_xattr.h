/*
 * The security.selinux get/set/compare primitives of one entry named in an open directory, shared by the
 * relabel walker (agent/relabel/_walker.c) and the benchmark's syscall floor (bench/_floor.c), so that the floor
 * measures exactly the calls the walker makes. Header-only (static functions): each extension gets its own copy.
 */
#ifndef RELABEL_XATTR_H
#define RELABEL_XATTR_H

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

/* Syscall numbers shared by x86_64 and the asm-generic table (aarch64, riscv64). */
#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif

/* include/uapi/linux/xattr.h, Linux 6.13 */
struct rl_xattr_args {
    uint64_t value;
    uint32_t size;
    uint32_t flags;
};

#define XATTR_NAME "security.selinux"
#define PROC_PATH_MAX (32 + 256)

/* The label to write or compare with (label_len without the NUL), and which calls reach an entry. */
struct xlabel {
    const char *label;
    size_t label_len;
    int use_xattrat;
};

static atomic_int xattrat_state = -1; /* -1 unknown, 0 absent, 1 present */

static int probe_xattrat(void)
{
    int state = atomic_load(&xattrat_state);
    if (state >= 0)
        return state;
    char buf[8];
    struct rl_xattr_args args = {.value = (uintptr_t)buf, .size = sizeof buf, .flags = 0};
    long r = syscall(__NR_getxattrat, AT_FDCWD, "/", AT_SYMLINK_NOFOLLOW, XATTR_NAME, &args, sizeof args);
    /* ENOSYS: kernel before 6.13. EPERM: a seccomp filter that refuses syscalls it does not know. */
    state = !(r < 0 && (errno == ENOSYS || errno == EPERM));
    atomic_store(&xattrat_state, state);
    return state;
}

/* "/proc/self/fd/<dirfd>/<name>", built by hand: it is made twice per entry on kernels without *xattrat,
 * where snprintf was a few percent of the walk. */
static int proc_path(char *out, int dirfd, const char *name)
{
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    int ndigits = 0;
    unsigned v = (unsigned)dirfd;
    do {
        digits[ndigits++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t namelen = strlen(name);
    if (sizeof prefix - 1 + (size_t)ndigits + 1 + namelen >= PROC_PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    char *p = out;
    memcpy(p, prefix, sizeof prefix - 1);
    p += sizeof prefix - 1;
    while (ndigits)
        *p++ = digits[--ndigits];
    *p++ = '/';
    memcpy(p, name, namelen + 1);
    return 0;
}


/* Read the label of `name` in `dirfd` (never following a symlink). dirfd AT_FDCWD: name is a path. */
static ssize_t xget_at(const struct xlabel *x, int dirfd, const char *name, char *buf, size_t size)
{
    ssize_t r;
    if (x->use_xattrat) {
        struct rl_xattr_args args = {.value = (uintptr_t)buf, .size = (uint32_t)size, .flags = 0};
        do
            r = syscall(__NR_getxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, XATTR_NAME, &args, sizeof args);
        while (r < 0 && errno == EINTR);
        return r;
    }
    if (dirfd == AT_FDCWD) {
        do
            r = lgetxattr(name, XATTR_NAME, buf, size);
        while (r < 0 && errno == EINTR);
        return r;
    }
    char path[PROC_PATH_MAX];
    if (proc_path(path, dirfd, name) < 0)
        return -1;
    do
        r = lgetxattr(path, XATTR_NAME, buf, size);
    while (r < 0 && errno == EINTR);
    return r;
}

static int xset_at(const struct xlabel *x, int dirfd, const char *name)
{
    long r;
    if (x->use_xattrat) {
        struct rl_xattr_args args = {.value = (uintptr_t)x->label, .size = (uint32_t)(x->label_len + 1), .flags = 0};
        do
            r = syscall(__NR_setxattrat, dirfd, name, AT_SYMLINK_NOFOLLOW, XATTR_NAME, &args, sizeof args);
        while (r < 0 && errno == EINTR);
        return (int)r;
    }
    if (dirfd == AT_FDCWD) {
        do
            r = lsetxattr(name, XATTR_NAME, x->label, x->label_len + 1, 0);
        while (r < 0 && errno == EINTR);
        return (int)r;
    }
    char path[PROC_PATH_MAX];
    if (proc_path(path, dirfd, name) < 0)
        return -1;
    do
        r = lsetxattr(path, XATTR_NAME, x->label, x->label_len + 1, 0);
    while (r < 0 && errno == EINTR);
    return (int)r;
}

/* The kernel returns the label with its trailing NUL when it was written the libselinux way (and always
 * when SELinux is on); go-selinux writes it without. Both spellings of the same text are "correct". A
 * longer value does not fit the buffer and comes back as ERANGE, which also means "different". */
static int label_matches(const struct xlabel *x, const char *buf, ssize_t len)
{
    if (len == (ssize_t)x->label_len + 1)
        return buf[x->label_len] == '\0' && memcmp(buf, x->label, x->label_len) == 0;
    if (len == (ssize_t)x->label_len)
        return memcmp(buf, x->label, x->label_len) == 0;
    return 0;
}

#endif

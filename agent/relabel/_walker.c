/*
 * agent.relabel._walker: the parallel tree walker behind agent.relabel.volume.
 *
 * Thin on purpose (psutil style): this file walks, compares, sets, counts and reports errors per path.
 * It does not parse labels, pick roots, pick ownership bits or decide what an error means: agent/relabel/volume.py
 * does that (with agent/relabel/ownership.py for kubelet's fsGroup rule) and passes the results in: the label,
 * the group and mode bits to apply, and the errnos that stop a walk (fatal_errnos).
 *
 * Safety rules, all enforced here:
 *   - every lookup is relative to an open directory fd, and every directory is opened with O_NOFOLLOW, so a
 *     symlink swapped in during the walk is never followed (the link itself gets the label); directories are
 *     opened with O_NOATIME where allowed, so reading them does not write their atime;
 *   - xattrs of non-directories are read and written with getxattrat/setxattrat(dirfd, name,
 *     AT_SYMLINK_NOFOLLOW) (Linux 6.13+); before that, each walker thread has its own working directory
 *     (unshare(CLONE_FS)), enters a directory once per chunk of its entries (fchdir(dirfd), the fd held open
 *     meanwhile) and uses l{get,set}xattr(name), and where it cannot, l{get,set}xattr("/proc/self/fd/<dirfd>/<name>");
 *     directories are labelled through their own (non-O_PATH) fd;
 *   - subdirectories are opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, and
 *     with one_file_system RESOLVE_NO_XDEV), so a directory that is a mount point, of the same filesystem (a
 *     bind mount) or not, is neither labelled nor entered; where openat2 is missing (ENOSYS) the mount id of
 *     what was opened (statx STATX_MNT_ID) is compared with the root's; with F_STAT_FILES non-directories are
 *     statx-ed too, and a file whose mount id differs (a bind-mounted file) is skipped the same way;
 *   - the root is opened by the caller (agent/relabel/volume.py resolves and checks it) and handed over as a fd, or
 *     given as a path for a single non-directory entry;
 *   - F_NO_LABEL walks for ownership only (kubelet's fsGroup): no label is read or written. The mode bits to
 *     add are plain numbers from the caller (dir_mode, file_mode); the rule that picks them is
 *     agent/relabel/ownership.py;
 *   - the root is labelled last, so "root carries the label" means "the walk finished".
 *
 * Work distribution: one shared LIFO stack of work items (a directory to open, or a chunk of entries of an
 * already open directory) under one mutex. Items are directories or chunks of up to CHUNK_ENTRIES entries,
 * so the lock is taken per directory or per chunk, never per file. The subdirectories found in a chunk are
 * queued together before its files are labelled, so idle threads can start on them at once. A huge
 * directory is split: its reader reads up to 1Mi entries ahead (12 bytes each plus the names, only for
 * directories that large), sorts them by inode number when there are 4Ki or more (ext4 lists names in hash
 * order; labelling in that order scatters inode-table writes over the journal: 1M files took 4-8x longer),
 * hands full chunks to the stack while fewer than 2 per thread wait there, and labels the rest itself.
 * Memory stays at one read-ahead batch and a few chunks per thread however large the directory is.
 *
 * Memory and fds: no path list is kept. Each open directory is a node {parent, name, fd}; a node lives while
 * work items or child nodes refer to it, so memory follows the depth of the walk and the number of pending
 * subdirectories, and there is no recursion, so depth is unlimited. A directory fd is closed as soon as no
 * pending item needs it. When more fds than the budget are open, idle ones are closed and reopened on
 * demand from the nearest open ancestor, one component at a time as above, checking st_dev/st_ino.
 * Node state is guarded by a second mutex, taken about three times per directory (the parent's fd, linking
 * the new node, done with it); fds are closed after it is released, not under it (only reopening, over the
 * fd budget, opens and closes under it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "_xattr.h"

/* Syscall numbers shared by x86_64 and the asm-generic table (aarch64, riscv64). */
#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef __NR_openat2
#define __NR_openat2 437
#endif

/* include/uapi/linux/openat2.h, Linux 5.6 */
struct rl_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define RL_RESOLVE_NO_XDEV 0x01
#define RL_RESOLVE_NO_MAGICLINKS 0x02
#define RL_RESOLVE_NO_SYMLINKS 0x04
#define RL_RESOLVE_BENEATH 0x08

/* include/uapi/linux/stat.h: struct statx up to stx_mnt_id (Linux 5.8), padded to the kernel's 256 bytes. glibc's
 * own struct statx has no stx_mnt_id before 2.38. */
struct rl_statx {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint16_t mode;
    uint16_t spare0;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t attributes_mask;
    unsigned char timestamps[64];
    uint32_t rdev_major, rdev_minor, dev_major, dev_minor;
    uint64_t mnt_id;
    unsigned char spare[104];
};
#define RL_STATX_BASIC_STATS 0x07ffU
#define RL_STATX_MNT_ID 0x1000U

#define F_ONE_FS 0x01      /* do not label or enter directories on another filesystem */
#define F_DRY_RUN 0x02     /* count what would change, write nothing */
#define F_FORCE_PROC 0x04  /* use the /proc/self/fd fallback even where *xattrat exists */
#define F_NO_COMPARE 0x20  /* write without reading first (relabel(compare=False), like chcon -R) */
#define F_STAT_FILES 0x40  /* stat non-directories too: a mount point below the root may be a file */
#define F_NO_LABEL 0x80    /* ownership only: no label is read or written */
#define F_NO_OPENAT2 0x100 /* use the openat + mount id fallback even where openat2 exists (tests) */
#define F_NO_XATTRAT 0x200 /* reach entries as kernels before 6.13 do, even where *xattrat exists (tests) */

#define CHUNK_ENTRIES 512
#define CHUNK_BYTES (CHUNK_ENTRIES * 48)
#define BATCH_ENTRIES (1 << 20)
#define BATCH_BYTES (32 << 20)
#define SORT_MIN_ENTRIES 4096
#define DENTS_BYTES (64 * 1024)
#define MAX_SAMPLES 8        /* error paths kept; the first of each errno is kept beyond that */
#define MAX_EXTRA_SAMPLES 56
#define MAX_FATAL 8          /* errnos the caller may name as stopping the walk */
#define ERRNO_SLOTS 4096     /* MAX_ERRNO + 1: every errno the kernel can return has its own count */

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

struct node {
    struct node *parent;
    int fd;       /* -1 when closed */
    int items;    /* queued or running work items that refer to this node */
    int users;    /* threads using fd right now */
    int children; /* child nodes alive */
    int dead;     /* reopen found another directory at this name */
    dev_t dev;
    ino_t ino;
    unsigned short namelen;
    char name[];
};

enum { IT_READ, IT_DIR, IT_CHUNK };

struct item {
    int kind;
    struct node *node; /* IT_DIR: the parent; IT_READ, IT_CHUNK: the directory itself */
    uint32_t count;    /* IT_CHUNK: entries */
    uint32_t used;     /* IT_CHUNK: bytes of data used */
    unsigned short namelen;
    char data[]; /* IT_DIR: name; IT_CHUNK: entries packed as {d_type, name, NUL} */
};

struct sample {
    int err;
    const char *op;
    char *path;
    size_t pathlen;
};

struct walk {
    /* constant during the walk */
    struct xlabel x; /* the label and the xattr calls */
    int flags;
    int fatal[MAX_FATAL]; /* errnos that stop the walk when they happen on the root's filesystem (caller's choice) */
    int nfatal;
    long gid; /* -1: no fs_group */
    int unread_after; /* after this many entries in a row of a chunk had another label, write the rest of the
                       * chunk without reading first; 0: always read first (the caller's choice, per filesystem) */
    mode_t dir_mode, file_mode; /* fs_group: bits added to directories / to everything else but symlinks */
    dev_t root_dev;
    uint64_t root_mnt; /* the root's mount id; 0: unknown (no STATX_MNT_ID) */
    struct node *root;
    int nthreads;
    int fd_budget;

    /* the work stack */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_cond_t cdone;
    struct item **stack;
    size_t n, cap;
    size_t queued_chunks;
    int active;
    int exited;
    int oom;
    int threads_active; /* worker threads that labelled anything */
    int root_deferred; /* the root was left as it was: something below it failed or the walk stopped */
    atomic_int cancel;
    atomic_int noatime; /* O_NOATIME is allowed (cleared at the first EPERM) */

    /* node and fd state */
    pthread_mutex_t fdlock;
    int open_fds;

    /* counters */
    atomic_ullong seen, changed, correct, other_fs, vanished, owner_changed, mode_changed, errors, reopened, unread;
    atomic_ullong by_errno[ERRNO_SLOTS];

    pthread_mutex_t errlock;
    struct sample samples[MAX_SAMPLES + MAX_EXTRA_SAMPLES];
    int nsamples;
    int fatal_errno;
};

/* Per-thread counters, flushed once per work item. */
struct tally {
    unsigned long long seen, changed, correct, other_fs, vanished, owner_changed, mode_changed, unread;
    int worked; /* this thread labelled at least one entry (threads_active: large directories get shared) */
    int streak; /* entries in a row of the current chunk whose label differed (unread_after) */
};

static void tally_flush(struct walk *w, struct tally *t)
{
    if (t->seen)
        t->worked = 1;
#define FLUSH(f)                                                      \
    if (t->f) {                                                       \
        atomic_fetch_add_explicit(&w->f, t->f, memory_order_relaxed); \
        t->f = 0;                                                     \
    }
    FLUSH(seen)
    FLUSH(changed)
    FLUSH(correct)
    FLUSH(other_fs)
    FLUSH(vanished)
    FLUSH(owner_changed)
    FLUSH(mode_changed)
    FLUSH(unread)
#undef FLUSH
}

/* Set in each walker thread that has its own working directory (unshare(CLONE_FS)): such a thread reaches an
 * entry by fchdir(dirfd) and the bare name, one component looked up from the directory it holds, instead of
 * "/proc/self/fd/<dirfd>/<name>", whose four extra lookups per call cost about 40% of a get+set on ext4. */
static __thread int own_cwd;

/* The dirfd to give the xattr calls for entries of directory `dirfd`: AT_FDCWD once this thread's working directory
 * is that directory, else dirfd itself (*xattrat, or /proc paths). One fchdir serves every entry the caller
 * labels until it lets go of dirfd: the fd stays open meanwhile, so its number cannot be reused for another
 * directory, and the working directory holds the directory itself, whatever its name comes to point at. */
static int xattr_dirfd(const struct walk *w, int dirfd)
{
    if (own_cwd && !w->x.use_xattrat && !(w->flags & F_NO_LABEL) && fchdir(dirfd) == 0)
        return AT_FDCWD;
    return dirfd;
}

/* ------------------------------------------------------------------------------------------------------ */
/* errors                                                                                                 */

static char *node_path(struct node *node, const char *name, size_t *outlen)
{
    /* Components from the root down: every node below the root, then `name` if given. */
    size_t total = 0, parts = 0;
    size_t namelen = name ? strlen(name) : 0;
    for (struct node *n = node; n && n->parent; n = n->parent) {
        total += n->namelen;
        parts++;
    }
    if (namelen) {
        total += namelen;
        parts++;
    }
    if (parts > 1)
        total += parts - 1;
    char *out = malloc(total + 1);
    if (!out)
        return NULL;
    size_t pos = total;
    out[pos] = '\0';
    if (namelen) {
        pos -= namelen;
        memcpy(out + pos, name, namelen);
    }
    for (struct node *n = node; n && n->parent; n = n->parent) {
        if (pos != total)
            out[--pos] = '/';
        pos -= n->namelen;
        memcpy(out + pos, n->name, n->namelen);
    }
    *outlen = total;
    return out;
}

static int is_fatal(const struct walk *w, int err)
{
    for (int i = 0; i < w->nfatal; i++)
        if (w->fatal[i] == err)
            return 1;
    return 0;
}

/* Whether another error path may be kept: any among the first MAX_SAMPLES, beyond them only `beyond_first`
 * ones (the first of an errno, or the fatal error's). */
static int sample_room(const struct walk *w, int beyond_first)
{
    return w->nsamples < MAX_SAMPLES || (beyond_first && w->nsamples < MAX_SAMPLES + MAX_EXTRA_SAMPLES);
}

/* An error on `name` in directory `node` (name NULL: on node itself); `dev` is the filesystem it happened
 * on: an errno the caller named fatal stops the walk only on the volume's own filesystem, not on a mount
 * below it (entered because one_file_system is off). */
static void record_error_on(struct walk *w, int err, const char *op, struct node *node, const char *name,
                            dev_t dev)
{
    atomic_fetch_add_explicit(&w->errors, 1, memory_order_relaxed);
    unsigned long long before =
        atomic_fetch_add_explicit(&w->by_errno[err > 0 && err < ERRNO_SLOTS ? err : 0], 1, memory_order_relaxed);
    int fatal = is_fatal(w, err) && dev == w->root_dev;
    /* Past MAX_SAMPLES only the first path of an errno not seen before is kept, so every count has a path. */
    if (!fatal && !sample_room(w, before == 0))
        return;
    pthread_mutex_lock(&w->errlock);
    if (fatal && !w->fatal_errno) {
        w->fatal_errno = err;
        atomic_store(&w->cancel, 1);
    }
    if (sample_room(w, before == 0 || fatal)) {
        struct sample *s = &w->samples[w->nsamples];
        s->path = node ? node_path(node, name, &s->pathlen) : NULL;
        if (!node && name) {
            s->pathlen = strlen(name);
            s->path = strdup(name);
        }
        s->err = err;
        s->op = op;
        w->nsamples++;
    }
    pthread_mutex_unlock(&w->errlock);
}

static void record_error(struct walk *w, int err, const char *op, struct node *node, const char *name)
{
    record_error_on(w, err, op, node, name, node ? node->dev : w->root_dev);
}

/* ------------------------------------------------------------------------------------------------------ */
/* nodes and fds (all state below is guarded by w->fdlock)                                                */

static struct node *node_new(struct walk *w, struct node *parent, const char *name, size_t namelen, int fd,
                             const struct stat *st)
{
    struct node *n = malloc(sizeof *n + namelen + 1);
    if (!n)
        return NULL;
    n->parent = parent;
    n->fd = fd;
    n->items = 1; /* the reader */
    n->users = 1;
    n->children = 0;
    n->dead = 0;
    n->dev = st->st_dev;
    n->ino = st->st_ino;
    n->namelen = (unsigned short)namelen;
    memcpy(n->name, name, namelen);
    n->name[namelen] = '\0';
    return n;
}

/* Fds taken off nodes under fdlock are closed after it is released: a thread preempted in close() (a
 * syscall exit is where preemption happens) while holding the lock would stall every other worker. */
struct closing {
    int fds[4];
    int n;
};

static void detach_fd_locked(struct walk *w, struct node *n, struct closing *c)
{
    if (n->fd >= 0 && n != w->root) {
        if (c->n < (int)(sizeof c->fds / sizeof c->fds[0]))
            c->fds[c->n++] = n->fd;
        else
            close(n->fd);
        n->fd = -1;
        w->open_fds--;
    }
}

static void close_detached(struct closing *c)
{
    for (int i = 0; i < c->n; i++)
        close(c->fds[i]);
    c->n = 0;
}

/* statx of `name` in dirfd (AT_SYMLINK_NOFOLLOW; "" with AT_EMPTY_PATH: dirfd itself) into a struct stat, and
 * its mount id (0 when the kernel does not report one). */
static int statx_at(int dirfd, const char *name, int flags, struct stat *st, uint64_t *mnt)
{
    struct rl_statx sx;
    long r;
    do
        r = syscall(SYS_statx, dirfd, name, flags | AT_SYMLINK_NOFOLLOW, RL_STATX_BASIC_STATS | RL_STATX_MNT_ID, &sx);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    memset(st, 0, sizeof *st);
    st->st_mode = sx.mode;
    st->st_uid = sx.uid;
    st->st_gid = sx.gid;
    st->st_ino = sx.ino;
    st->st_dev = makedev(sx.dev_major, sx.dev_minor);
    *mnt = (sx.mask & RL_STATX_MNT_ID) ? sx.mnt_id : 0;
    return 0;
}

static atomic_int have_openat2 = 1;

/* Open `name`, one component below dirfd, never following a symlink or a magic link and never leaving dirfd;
 * with one_file_system never crossing into another mount either (EXDEV), bind mounts of the same filesystem
 * included. Before Linux 5.6 (openat2 ENOSYS): openat O_NOFOLLOW, then the mount id of what was opened must be
 * the root's. */
static int open_beneath(struct walk *w, int dirfd, const char *name, int flags)
{
    if (!(w->flags & F_NO_OPENAT2) && atomic_load_explicit(&have_openat2, memory_order_relaxed)) {
        struct rl_open_how how = {
            .flags = (uint64_t)flags,
            .resolve = RL_RESOLVE_BENEATH | RL_RESOLVE_NO_SYMLINKS | RL_RESOLVE_NO_MAGICLINKS |
                       ((w->flags & F_ONE_FS) ? RL_RESOLVE_NO_XDEV : 0),
        };
        long r;
        int tries = 0;
        /* EAGAIN: a rename elsewhere raced the lookup (only possible with ".." components; retried anyway). */
        do
            r = syscall(__NR_openat2, dirfd, name, &how, sizeof how);
        while (r < 0 && (errno == EINTR || (errno == EAGAIN && ++tries < 16)));
        /* ENOSYS: before Linux 5.6. EPERM without O_NOATIME: a seccomp filter refusing a syscall it does not
         * know; only if openat then succeeds was it the filter. */
        if (r >= 0 || (errno != ENOSYS && (errno != EPERM || (flags & O_NOATIME))))
            return (int)r;
        if (errno == EPERM) {
            int fd = openat(dirfd, name, flags | O_NOFOLLOW);
            if (fd < 0) {
                errno = EPERM;
                return -1;
            }
            close(fd);
        }
        atomic_store(&have_openat2, 0);
    }
    int fd = openat(dirfd, name, flags | O_NOFOLLOW);
    if (fd >= 0 && (w->flags & F_ONE_FS) && w->root_mnt) {
        struct stat st;
        uint64_t mnt = 0;
        if (statx_at(fd, "", AT_EMPTY_PATH, &st, &mnt) < 0 || (mnt && mnt != w->root_mnt)) {
            int err = mnt ? EXDEV : errno;
            close(fd);
            errno = err;
            return -1;
        }
    }
    return fd;
}

/* Open a directory below dirfd (see open_beneath). O_NOATIME: reading a directory would otherwise update its
 * atime (relatime does, once the label write has moved ctime past it), one more journalled inode write per
 * directory. Only the owner or CAP_FOWNER may ask for it; after an EPERM, stop asking. */
static int open_dir_at(struct walk *w, int dirfd, const char *name)
{
    int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    if (atomic_load_explicit(&w->noatime, memory_order_relaxed)) {
        int fd = open_beneath(w, dirfd, name, flags | O_NOATIME);
        if (fd >= 0 || errno != EPERM)
            return fd;
        atomic_store_explicit(&w->noatime, 0, memory_order_relaxed);
    }
    return open_beneath(w, dirfd, name, flags);
}

/* Drop one item reference; frees nodes that nothing refers to any more, up the chain. */
static void node_release_locked(struct walk *w, struct node *n, struct closing *c)
{
    n->items--;
    while (n && n != w->root && n->items == 0) {
        if (n->users == 0)
            detach_fd_locked(w, n, c);
        if (n->children > 0)
            break;
        struct node *parent = n->parent;
        free(n);
        n = parent;
        if (n)
            n->children--;
    }
}

static void node_release(struct walk *w, struct node *n)
{
    struct closing c = {.n = 0};
    pthread_mutex_lock(&w->fdlock);
    node_release_locked(w, n, &c);
    pthread_mutex_unlock(&w->fdlock);
    close_detached(&c);
}

static void node_hold(struct walk *w, struct node *n, int count)
{
    pthread_mutex_lock(&w->fdlock);
    n->items += count;
    pthread_mutex_unlock(&w->fdlock);
}

/* Reopen a closed directory from its nearest open ancestor, one O_NOFOLLOW component at a time, and
 * check that each one is still the directory first seen there. Called with fdlock held. */
static int node_reopen_locked(struct walk *w, struct node *target)
{
    size_t depth = 0;
    for (struct node *n = target; n->fd < 0; n = n->parent)
        depth++;
    struct node **chain = malloc(depth * sizeof *chain);
    if (!chain)
        return -ENOMEM;
    size_t i = depth;
    for (struct node *n = target; n->fd < 0; n = n->parent)
        chain[--i] = n;
    int fd = chain[0]->parent->fd;
    int owned = 0; /* fd was opened here (not an ancestor's cached fd) */
    int result = 0;
    for (i = 0; i < depth; i++) {
        struct node *n = chain[i];
        int next = open_dir_at(w, fd, n->name);
        int saved = errno;
        if (owned)
            close(fd);
        if (next < 0) {
            result = -saved;
            break;
        }
        struct stat st;
        if (fstat(next, &st) < 0 || st.st_dev != n->dev || st.st_ino != n->ino) {
            close(next);
            n->dead = 1;
            result = -ESTALE;
            break;
        }
        atomic_fetch_add_explicit(&w->reopened, 1, memory_order_relaxed);
        if (n == target) {
            n->fd = next;
            w->open_fds++;
            break;
        }
        fd = next;
        owned = 1;
    }
    free(chain);
    return result;
}

/* The fd of a node, reopened if it was closed; -errno on failure. Pair with node_done. */
static int node_fd_get(struct walk *w, struct node *n)
{
    pthread_mutex_lock(&w->fdlock);
    int r = 0;
    if (n->dead)
        r = -ESTALE;
    else if (n->fd < 0)
        r = node_reopen_locked(w, n);
    if (r == 0) {
        n->users++;
        r = n->fd;
    }
    pthread_mutex_unlock(&w->fdlock);
    return r;
}

static void node_fd_put_locked(struct walk *w, struct node *n, struct closing *c)
{
    n->users--;
    /* Over budget: close now rather than keep an idle fd for pending items; they will reopen it. */
    if (n->users == 0 && (n->items == 0 || w->open_fds > w->fd_budget))
        detach_fd_locked(w, n, c);
}

/* Drop a fd use (node_fd_get) and an item reference in one round of the lock. */
static void node_done(struct walk *w, struct node *n)
{
    struct closing c = {.n = 0};
    pthread_mutex_lock(&w->fdlock);
    node_fd_put_locked(w, n, &c);
    node_release_locked(w, n, &c);
    pthread_mutex_unlock(&w->fdlock);
    close_detached(&c);
}

/* A subdirectory of `parent` was opened and given a node: count its fd, link it under the parent, and drop
 * the parent's fd use and the reference its IT_DIR item held (the child keeps the parent alive through
 * `children` from here on). One round of the lock. */
static void node_adopt(struct walk *w, struct node *parent)
{
    struct closing c = {.n = 0};
    pthread_mutex_lock(&w->fdlock);
    w->open_fds++;
    parent->children++;
    node_fd_put_locked(w, parent, &c);
    node_release_locked(w, parent, &c);
    pthread_mutex_unlock(&w->fdlock);
    close_detached(&c);
}

/* ------------------------------------------------------------------------------------------------------ */
/* the work stack                                                                                         */

/* Queue `count` items (each holding a reference on its node) in one round of the lock; its[0] ends on
 * top of the stack, so it is taken first. */
static void push_items(struct walk *w, struct item **its, int count)
{
    pthread_mutex_lock(&w->lock);
    if (w->n + (size_t)count > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->n + (size_t)count)
            cap *= 2;
        struct item **grown = realloc(w->stack, cap * sizeof *grown);
        if (!grown) {
            /* Cannot queue: record and drop (the directory stays unlabelled and counts as an error). */
            w->oom = 1;
            pthread_mutex_unlock(&w->lock);
            for (int i = 0; i < count; i++) {
                record_error(w, ENOMEM, "queue", its[i]->node, its[i]->kind == IT_DIR ? its[i]->data : NULL);
                node_release(w, its[i]->node);
                free(its[i]);
            }
            return;
        }
        w->stack = grown;
        w->cap = cap;
    }
    for (int i = count; i-- > 0;) {
        w->stack[w->n++] = its[i];
        if (its[i]->kind == IT_CHUNK)
            w->queued_chunks++;
    }
    if (count > 1)
        pthread_cond_broadcast(&w->cond);
    else
        pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void push(struct walk *w, struct item *it)
{
    push_items(w, &it, 1);
}

/* Queue the subdirectories `names` of `parent`, the first on top. */
static void push_dirs(struct walk *w, struct node *parent, const char *const *names, const unsigned short *lens,
                      int count)
{
    struct item *its[CHUNK_ENTRIES];
    int queued = 0;
    for (int i = 0; i < count; i++) {
        struct item *it = malloc(sizeof *it + lens[i] + 1);
        if (!it) {
            record_error(w, ENOMEM, "queue", parent, names[i]);
            continue;
        }
        it->kind = IT_DIR;
        it->node = parent;
        it->namelen = lens[i];
        memcpy(it->data, names[i], (size_t)lens[i] + 1);
        its[queued++] = it;
    }
    if (queued) {
        node_hold(w, parent, queued);
        push_items(w, its, queued);
    }
}

static struct item *new_chunk(struct node *dir)
{
    struct item *it = malloc(sizeof *it + CHUNK_BYTES);
    if (it) {
        it->kind = IT_CHUNK;
        it->node = dir;
        it->count = 0;
        it->used = 0;
    }
    return it;
}

/* ------------------------------------------------------------------------------------------------------ */
/* per entry                                                                                              */

static unsigned char type_of(mode_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFDIR: return DT_DIR;
    case S_IFLNK: return DT_LNK;
    case S_IFREG: return DT_REG;
    case S_IFIFO: return DT_FIFO;
    case S_IFSOCK: return DT_SOCK;
    case S_IFCHR: return DT_CHR;
    case S_IFBLK: return DT_BLK;
    default: return DT_UNKNOWN;
    }
}

/* Label one non-directory entry on filesystem `dev`, `name` in directory `xfd` (from xattr_dirfd: AT_FDCWD is
 * this thread's working directory; for the root given as a single entry, name is that path). Returns 0, or -1
 * when it vanished. `name` is one directory entry (no '/') and never followed (l*xattr, AT_SYMLINK_NOFOLLOW). */
static int label_entry_on(struct walk *w, struct tally *t, int xfd, struct node *node, const char *name,
                          dev_t dev)
{
    if (w->flags & F_NO_LABEL)
        return 0;
    /* Only on the root's filesystem: that is the one the caller chose unread_after for (a mount below the root,
     * entered with one_file_system off, may be one that rewrites an identical value). */
    if (w->unread_after && t->streak >= w->unread_after && dev == w->root_dev) {
        t->unread++;
    } else if (!(w->flags & F_NO_COMPARE)) {
        char buf[w->x.label_len + 1];
        ssize_t len = xget_at(&w->x, xfd, name, buf, sizeof buf);
        if (len >= 0 && label_matches(&w->x, buf, len)) {
            t->correct++;
            t->streak = 0;
            return 0;
        }
        if (len < 0 && errno != ENODATA && errno != ERANGE) {
            if (errno == ENOENT) {
                t->vanished++;
                return -1;
            }
            record_error_on(w, errno, "getxattr", node, name, dev);
            return 0;
        }
        t->streak++;
    }
    if (w->flags & F_DRY_RUN) {
        t->changed++;
        return 0;
    }
    if (xset_at(&w->x, xfd, name) < 0) {
        if (errno == ENOENT) {
            t->vanished++;
            return -1;
        }
        record_error_on(w, errno, "setxattr", node, name, dev);
        return 0;
    }
    t->changed++;
    return 0;
}

static int label_entry(struct walk *w, struct tally *t, int xfd, struct node *node, const char *name)
{
    return label_entry_on(w, t, xfd, node, name, node ? node->dev : w->root_dev);
}

/* Label a directory through its own fd. */
static void label_dirfd(struct walk *w, struct tally *t, int fd, struct node *parent, const char *name, dev_t dev)
{
    if (w->flags & F_NO_LABEL)
        return;
    if (!(w->flags & F_NO_COMPARE)) {
        char buf[w->x.label_len + 1];
        ssize_t len;
        do
            len = fgetxattr(fd, XATTR_NAME, buf, sizeof buf);
        while (len < 0 && errno == EINTR);
        if (len >= 0 && label_matches(&w->x, buf, len)) {
            t->correct++;
            return;
        }
        if (len < 0 && errno != ENODATA && errno != ERANGE) {
            record_error_on(w, errno, "getxattr", parent, name, dev);
            return;
        }
    }
    if (w->flags & F_DRY_RUN) {
        t->changed++;
        return;
    }
    int r;
    do
        r = fsetxattr(fd, XATTR_NAME, w->x.label, w->x.label_len + 1, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        record_error_on(w, errno, "setxattr", parent, name, dev);
    else
        t->changed++;
}

/* fsGroup ownership: lchown to the group, then chmod to the existing mode | the caller's bits
 * (agent/relabel/ownership.py picks them by kubelet's rule); symlinks are not chmod-ed. Nothing is written when
 * it already holds. */
static mode_t wanted_mode(struct walk *w, mode_t mode)
{
    return (mode & 07777) | (S_ISDIR(mode) ? w->dir_mode : w->file_mode);
}

static int chmod_nofollow(int dirfd, const char *name, mode_t mode)
{
    static atomic_int have_fchmodat2 = 1;
    int eperm = 0;
    if (atomic_load_explicit(&have_fchmodat2, memory_order_relaxed)) {
        long r = syscall(__NR_fchmodat2, dirfd, name, mode, AT_SYMLINK_NOFOLLOW);
        if (r == 0 || (errno != ENOSYS && errno != EPERM))
            return (int)r;
        /* ENOSYS: no such syscall. EPERM: a seccomp filter refusing syscalls it does not know, or a real
         * permission error; only if the fallback then succeeds was it the filter. */
        if (errno == ENOSYS)
            atomic_store(&have_fchmodat2, 0);
        else
            eperm = 1;
    }
    /* Before Linux 6.6: pin the inode with O_PATH, check it is not a symlink, chmod through /proc. */
    int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    int r = fstat(fd, &st);
    if (r == 0 && S_ISLNK(st.st_mode)) {
        errno = EOPNOTSUPP;
        r = -1;
    } else if (r == 0) {
        char path[PROC_PATH_MAX];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        r = chmod(path, mode);
    }
    int saved = errno;
    close(fd);
    if (eperm && r == 0)
        atomic_store(&have_fchmodat2, 0);
    errno = saved;
    return r;
}

static void own_entry(struct walk *w, struct tally *t, int dirfd, struct node *node, const char *name,
                      const struct stat *st)
{
    int chowned = 0;
    if ((long)st->st_gid != w->gid) {
        if (!(w->flags & F_DRY_RUN) && fchownat(dirfd, name, (uid_t)-1, (gid_t)w->gid, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT)
                t->vanished++;
            else
                record_error(w, errno, "lchown", node, name);
            return;
        }
        t->owner_changed++;
        chowned = 1;
    }
    if (S_ISLNK(st->st_mode))
        return;
    mode_t want = wanted_mode(w, st->st_mode);
    /* chown of a non-directory clears setuid/setgid; kubelet's chmod with the old mode puts them back. */
    int killed = chowned && !S_ISDIR(st->st_mode) && (st->st_mode & 06000);
    if (want == (st->st_mode & 07777) && !killed)
        return;
    if (!(w->flags & F_DRY_RUN) && chmod_nofollow(dirfd, name, want) < 0) {
        if (errno == ENOENT || errno == EOPNOTSUPP)
            t->vanished++; /* gone, or replaced by a symlink since the stat: not ours to chmod */
        else
            record_error(w, errno, "chmod", node, name);
        return;
    }
    t->mode_changed++;
}

static void own_dirfd(struct walk *w, struct tally *t, int fd, struct node *parent, const char *name,
                      const struct stat *st)
{
    if ((long)st->st_gid != w->gid) {
        if (!(w->flags & F_DRY_RUN) && fchown(fd, (uid_t)-1, (gid_t)w->gid) < 0) {
            record_error(w, errno, "lchown", parent, name);
            return;
        }
        t->owner_changed++;
    }
    mode_t want = wanted_mode(w, st->st_mode);
    if (want == (st->st_mode & 07777))
        return;
    if (!(w->flags & F_DRY_RUN) && fchmod(fd, want) < 0) {
        record_error(w, errno, "chmod", parent, name);
        return;
    }
    t->mode_changed++;
}

/* Label a non-directory entry; returns 1 (and labels nothing) when it is a directory to queue. */
static int process_entry(struct walk *w, struct tally *t, struct node *node, int dirfd, int xfd, const char *name,
                         unsigned char type)
{
    struct stat st;
    int have_st = 0;
    uint64_t mnt = 0;
    if (type == DT_UNKNOWN || (type != DT_DIR && (w->gid >= 0 || (w->flags & F_STAT_FILES)))) {
        /* statx only where a mount id is wanted: fstatat is a little cheaper. */
        int r = (w->flags & F_STAT_FILES) ? statx_at(dirfd, name, 0, &st, &mnt)
                                          : fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW);
        if (r < 0) {
            if (errno == ENOENT)
                t->vanished++;
            else
                record_error(w, errno, "stat", node, name);
            return 0;
        }
        have_st = 1;
        type = type_of(st.st_mode);
    }
    if (type == DT_DIR)
        return 1;
    /* A file on another filesystem or mount than its directory is a file mount point (a bind-mounted file). In
     * one_file_system walks every directory is on the root's mount. */
    dev_t dev = have_st ? st.st_dev : node->dev;
    if ((w->flags & F_ONE_FS) && (dev != node->dev || (mnt && w->root_mnt && mnt != w->root_mnt))) {
        t->other_fs++;
        return 0;
    }
    t->seen++;
    if (label_entry_on(w, t, xfd, node, name, dev) < 0)
        return 0;
    if (w->gid >= 0 && have_st)
        own_entry(w, t, dirfd, node, name, &st);
    return 0;
}

/* Subdirectories are queued first, so idle threads can start on them while this one labels the rest. */
static void process_chunk(struct walk *w, struct tally *t, struct node *node, int dirfd, struct item *chunk)
{
    const char *dirs[CHUNK_ENTRIES];
    unsigned short lens[CHUNK_ENTRIES];
    int ndirs = 0;
    const char *p = chunk->data;
    for (uint32_t i = 0; i < chunk->count; i++) {
        size_t len = strlen(p + 1);
        if ((unsigned char)*p == DT_DIR) {
            dirs[ndirs] = p + 1;
            lens[ndirs++] = (unsigned short)len;
        }
        p += len + 2;
    }
    if (ndirs)
        push_dirs(w, node, dirs, lens, ndirs);
    if ((uint32_t)ndirs == chunk->count)
        return;
    int xfd = xattr_dirfd(w, dirfd); /* one fchdir for the chunk (kernels without *xattrat), not one per entry */
    t->streak = 0;
    ndirs = 0;
    p = chunk->data;
    for (uint32_t i = 0; i < chunk->count; i++) {
        unsigned char type = (unsigned char)*p++;
        size_t len = strlen(p);
        if (atomic_load_explicit(&w->cancel, memory_order_relaxed))
            return;
        if (type != DT_DIR && process_entry(w, t, node, dirfd, xfd, p, type)) {
            dirs[ndirs] = p; /* DT_UNKNOWN that turned out to be a directory */
            lens[ndirs++] = (unsigned short)len;
        }
        p += len + 1;
    }
    if (ndirs)
        push_dirs(w, node, dirs, lens, ndirs);
}

/* ------------------------------------------------------------------------------------------------------ */
/* per directory                                                                                          */

/* Entries of one directory read ahead of labelling, so a large directory can be labelled in inode order:
 * getdents on ext4 returns names in hash order, which spreads consecutive writes over the whole inode table,
 * one journalled block per inode (gnulib fts sorts batches of 10,000+ entries by inode for the same
 * reason). Smaller directories keep listing order: their inodes sit in a few inode-table blocks, which one
 * journal transaction (thousands of blocks) covers in any order; sorting 48-entry directories of a 1M-entry
 * ext4 tree changed neither the blocks logged nor the time. One per worker thread; untouched pages of it
 * never become resident. */
struct batch {
    struct __attribute__((packed)) bent {
        uint64_t ino;
        uint32_t off; /* into names: the d_type byte, then the name and its NUL */
    } *ents;
    char *names;
    size_t n, used;
};

static int bent_cmp(const void *a, const void *b)
{
    uint64_t x = ((const struct bent *)a)->ino, y = ((const struct bent *)b)->ino;
    return x < y ? -1 : x > y;
}

/* Move a batch into chunks: full chunks go to other threads while fewer than two per thread wait, the rest
 * are labelled here. */
static void dispense(struct walk *w, struct tally *t, struct node *node, int fd, struct batch *b,
                     struct item **chunkp)
{
    if (b->n >= SORT_MIN_ENTRIES)
        qsort(b->ents, b->n, sizeof *b->ents, bent_cmp);
    for (size_t i = 0; i < b->n; i++) {
        struct item *chunk = *chunkp;
        unsigned char type = (unsigned char)b->names[b->ents[i].off];
        const char *name = b->names + b->ents[i].off + 1;
        size_t len = strlen(name);
        if (chunk->count == CHUNK_ENTRIES || chunk->used + len + 2 > CHUNK_BYTES) {
            int handed = 0;
            if (w->nthreads > 1) {
                pthread_mutex_lock(&w->lock);
                int room = w->queued_chunks < (size_t)(2 * w->nthreads);
                pthread_mutex_unlock(&w->lock);
                struct item *fresh = room ? new_chunk(node) : NULL;
                if (fresh) {
                    node_hold(w, node, 1);
                    push(w, chunk);
                    *chunkp = chunk = fresh;
                    handed = 1;
                }
            }
            if (!handed) {
                process_chunk(w, t, node, fd, chunk);
                chunk->count = 0;
                chunk->used = 0;
            }
            tally_flush(w, t);
        }
        chunk->data[chunk->used++] = (char)type;
        memcpy(chunk->data + chunk->used, name, len + 1);
        chunk->used += (uint32_t)(len + 1);
        chunk->count++;
    }
    b->n = 0;
    b->used = 0;
}

/* Read an open directory (the caller holds one item reference and one fd use on it, both dropped here). */
static void read_dir(struct walk *w, struct tally *t, struct node *node, char *dents, struct batch *b)
{
    int fd = node->fd;
    struct item *chunk = new_chunk(node);
    if (!chunk) {
        record_error(w, ENOMEM, "readdir", node, NULL);
        goto out;
    }
    b->n = 0;
    b->used = 0;
    for (;;) {
        if (atomic_load_explicit(&w->cancel, memory_order_relaxed))
            break;
        long n = syscall(SYS_getdents64, fd, dents, DENTS_BYTES);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* ENOENT: the directory was removed while being read. */
            if (errno == ENOENT)
                t->vanished++;
            else
                record_error(w, errno, "getdents", node, NULL);
            break;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0')))
                continue;
            size_t len = strlen(name);
            if (b->n == BATCH_ENTRIES || b->used + len + 2 > BATCH_BYTES)
                dispense(w, t, node, fd, b, &chunk);
            b->ents[b->n].ino = d->d_ino;
            b->ents[b->n].off = (uint32_t)b->used;
            b->n++;
            b->names[b->used++] = (char)d->d_type;
            memcpy(b->names + b->used, name, len + 1);
            b->used += len + 1;
        }
    }
    dispense(w, t, node, fd, b, &chunk);
    process_chunk(w, t, node, fd, chunk);
    free(chunk);
out:
    node_done(w, node);
}

/* Open a subdirectory named in its parent, label it, and read it. */
static void open_dir(struct walk *w, struct tally *t, struct node *parent, const char *name, size_t namelen,
                     char *dents, struct batch *b)
{
    int pfd = node_fd_get(w, parent);
    if (pfd < 0) {
        if (pfd == -ESTALE || pfd == -ENOENT)
            t->vanished++;
        else
            record_error(w, -pfd, "open", parent, NULL);
        node_release(w, parent);
        return;
    }
    int fd = open_dir_at(w, pfd, name);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT) {
            t->vanished++;
        } else if (err == EXDEV) {
            /* A mount point (one_file_system): what is seen at this name is another mount's root, not ours. */
            t->other_fs++;
        } else {
            /* ELOOP/ENOTDIR: replaced by a symlink or a file since it was listed, so label what is there now,
             * never following it. Anything else (EACCES...): it cannot be entered, but the directory itself is
             * still labelled (and owned) by name. */
            if (err != ELOOP && err != ENOTDIR)
                record_error(w, err, "open", parent, name);
            t->seen++;
            struct stat est;
            if (label_entry(w, t, xattr_dirfd(w, pfd), parent, name) == 0 && w->gid >= 0 &&
                fstatat(pfd, name, &est, AT_SYMLINK_NOFOLLOW) == 0)
                own_entry(w, t, pfd, parent, name, &est);
        }
        node_done(w, parent);
        return;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        record_error(w, errno, "stat", parent, name);
        close(fd);
        node_done(w, parent);
        return;
    }
    if ((w->flags & F_ONE_FS) && st.st_dev != w->root_dev) {
        close(fd);
        t->other_fs++;
        node_done(w, parent);
        return;
    }
    struct node *node = node_new(w, parent, name, namelen, fd, &st);
    if (!node) {
        record_error(w, ENOMEM, "open", parent, name);
        close(fd);
        node_done(w, parent);
        return;
    }
    node_adopt(w, parent);
    t->seen++;
    label_dirfd(w, t, fd, parent, name, st.st_dev);
    if (w->gid >= 0)
        own_dirfd(w, t, fd, parent, name, &st);
    read_dir(w, t, node, dents, b);
}

static void run_item(struct walk *w, struct tally *t, struct item *it, char *dents, struct batch *b)
{
    switch (it->kind) {
    case IT_READ:
        read_dir(w, t, it->node, dents, b);
        break;
    case IT_DIR:
        if (atomic_load_explicit(&w->cancel, memory_order_relaxed))
            node_release(w, it->node);
        else
            open_dir(w, t, it->node, it->data, it->namelen, dents, b);
        break;
    case IT_CHUNK: {
        int fd = node_fd_get(w, it->node);
        if (fd >= 0) {
            process_chunk(w, t, it->node, fd, it);
            node_done(w, it->node);
            break;
        }
        if (fd == -ESTALE || fd == -ENOENT)
            t->vanished += it->count;
        else
            record_error(w, -fd, "open", it->node, NULL);
        node_release(w, it->node);
        break;
    }
    }
    free(it);
}

static void *worker(void *arg)
{
    struct walk *w = arg;
    struct tally t = {0};
    /* This thread's cwd becomes its own (the process's stays as it is); where that is refused, /proc paths. */
    own_cwd = !(w->flags & F_FORCE_PROC) && unshare(CLONE_FS) == 0;
    char *dents = malloc(DENTS_BYTES);
    /* Only the pages a large directory touches become resident. */
    struct batch b = {.ents = malloc(BATCH_ENTRIES * sizeof *b.ents), .names = malloc(BATCH_BYTES)};
    pthread_mutex_lock(&w->lock);
    if (!dents || !b.ents || !b.names) {
        w->oom = 1;
        goto leave;
    }
    for (;;) {
        while (w->n == 0 && w->active > 0 && !atomic_load(&w->cancel))
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->n == 0 || atomic_load(&w->cancel))
            break;
        struct item *it = w->stack[--w->n];
        if (it->kind == IT_CHUNK)
            w->queued_chunks--;
        w->active++;
        pthread_mutex_unlock(&w->lock);
        run_item(w, &t, it, dents, &b);
        tally_flush(w, &t);
        pthread_mutex_lock(&w->lock);
        w->active--;
    }
leave:
    if (t.worked || t.seen)
        w->threads_active++;
    pthread_cond_broadcast(&w->cond);
    w->exited++;
    pthread_cond_broadcast(&w->cdone);
    pthread_mutex_unlock(&w->lock);
    free(dents);
    free(b.ents);
    free(b.names);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Python entry points                                                                                    */

static PyObject *result_dict(struct walk *w, int xattrat_used)
{
    PyObject *by_errno = PyDict_New();
    PyObject *samples = PyList_New(0);
    if (!by_errno || !samples)
        goto fail;
    for (int e = 0; e < ERRNO_SLOTS; e++) {
        unsigned long long c = atomic_load(&w->by_errno[e]);
        if (!c)
            continue;
        PyObject *k = PyLong_FromLong(e), *v = PyLong_FromUnsignedLongLong(c);
        int r = (k && v) ? PyDict_SetItem(by_errno, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (r < 0)
            goto fail;
    }
    for (int i = 0; i < w->nsamples; i++) {
        struct sample *s = &w->samples[i];
        PyObject *tup = Py_BuildValue("(isy#)", s->err, s->op, s->path ? s->path : "",
                                      (Py_ssize_t)(s->path ? s->pathlen : 0));
        if (!tup || PyList_Append(samples, tup) < 0) {
            Py_XDECREF(tup);
            goto fail;
        }
        Py_DECREF(tup);
    }
    PyObject *d = Py_BuildValue(
        "{sKsKsKsKsKsKsKsKsKsKsNsNsisisOsOsi}", "seen", atomic_load(&w->seen), "changed", atomic_load(&w->changed),
        "written_unread", atomic_load(&w->unread),
        "already_correct", atomic_load(&w->correct), "other_filesystem", atomic_load(&w->other_fs), "vanished",
        atomic_load(&w->vanished), "owner_changed", atomic_load(&w->owner_changed), "mode_changed",
        atomic_load(&w->mode_changed), "errors", atomic_load(&w->errors), "reopened", atomic_load(&w->reopened),
        "errors_by_errno", by_errno, "error_samples", samples, "fatal_errno", w->fatal_errno, "cancelled",
        atomic_load(&w->cancel) && !w->fatal_errno, "xattrat", xattrat_used ? Py_True : Py_False,
        "root_deferred", w->root_deferred ? Py_True : Py_False, "threads_active", w->threads_active);
    return d;
fail:
    Py_XDECREF(by_errno);
    Py_XDECREF(samples);
    return NULL;
}

static void free_walk(struct walk *w)
{
    for (size_t i = 0; i < w->n; i++) {
        node_release(w, w->stack[i]->node);
        free(w->stack[i]);
    }
    free(w->stack);
    for (int i = 0; i < w->nsamples; i++)
        free(w->samples[i].path);
    if (w->root) {
        if (w->root->fd >= 0)
            close(w->root->fd);
        free(w->root);
    }
    pthread_mutex_destroy(&w->lock);
    pthread_mutex_destroy(&w->fdlock);
    pthread_mutex_destroy(&w->errlock);
    pthread_cond_destroy(&w->cond);
    pthread_cond_destroy(&w->cdone);
}

PyDoc_STRVAR(walk_doc,
             "walk(root: int | bytes, label: bytes, threads: int, flags: int, gid: int = -1, progress=None,\n"
             "     interval: float = 0.2, fd_budget: int = 0, dir_mode: int = 0, file_mode: int = 0,\n"
             "     fatal_errnos: tuple[int, ...] = (), unread_after: int = 0) -> dict\n\n"
             "Label every entry under root (the root last). root is an open directory fd (reopened here, so the\n"
             "caller keeps and closes its own), or a path: a directory, or a single non-directory entry that is\n"
             "labelled without being followed. With gid >= 0, fsGroup ownership: group gid, mode | dir_mode on\n"
             "directories, | file_mode on the rest (not symlinks). label may be empty with NO_LABEL. An error whose\n"
             "errno is in fatal_errnos (at most MAX_FATAL) on the root's filesystem stops the walk (fatal_errno).\n"
             "unread_after > 0: once that many entries in a row of a chunk had another label, the rest of the chunk\n"
             "is written without reading first (written_unread counts them).\n"
             "progress(seen, changed) is called every interval seconds with the GIL held; an exception from it\n"
             "stops the walk and propagates. Raises OSError when the root cannot be opened.");

/* The root, opened for reading from the caller's fd (O_PATH or not): "." gives this walk its own open file, so
 * the caller's directory offset is never shared. */
static int open_root_fd(struct walk *w, int fd)
{
    int flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    if (atomic_load(&w->noatime)) {
        int r = openat(fd, ".", flags | O_NOATIME);
        if (r >= 0 || errno != EPERM)
            return r;
        atomic_store(&w->noatime, 0);
    }
    return openat(fd, ".", flags);
}

static PyObject *py_walk(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"root",     "label",     "threads",  "flags",     "gid", "progress",
                             "interval", "fd_budget", "dir_mode", "file_mode", "fatal_errnos", "unread_after",
                             NULL};
    PyObject *root_obj;
    const char *path = NULL, *label;
    Py_ssize_t path_len = 0, label_len;
    int nthreads, flags, fd_budget = 0, given_fd = -1, unread_after = 0;
    unsigned int dir_mode = 0, file_mode = 0;
    long gid = -1;
    PyObject *progress = Py_None, *fatal_obj = NULL;
    double interval = 0.2;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy#ii|lOdiIIO!i", kwlist, &root_obj, &label, &label_len, &nthreads,
                                     &flags, &gid, &progress, &interval, &fd_budget, &dir_mode, &file_mode,
                                     &PyTuple_Type, &fatal_obj, &unread_after))
        return NULL;
    if (unread_after < 0) {
        PyErr_SetString(PyExc_ValueError, "unread_after must be 0 (always read first) or more");
        return NULL;
    }
    int fatal[MAX_FATAL] = {0}, nfatal = fatal_obj ? (int)PyTuple_GET_SIZE(fatal_obj) : 0;
    if (nfatal > MAX_FATAL) {
        PyErr_SetString(PyExc_ValueError, "fatal_errnos: too many errnos");
        return NULL;
    }
    for (int i = 0; i < nfatal; i++) {
        long e = PyLong_AsLong(PyTuple_GET_ITEM(fatal_obj, i));
        if (e == -1 && PyErr_Occurred())
            return NULL;
        if (e <= 0 || e >= ERRNO_SLOTS) {
            PyErr_SetString(PyExc_ValueError, "fatal_errnos: an errno is a positive number below 4096");
            return NULL;
        }
        fatal[i] = (int)e;
    }
    if (PyLong_Check(root_obj)) {
        given_fd = PyObject_AsFileDescriptor(root_obj);
        if (given_fd < 0)
            return NULL;
    } else if (PyBytes_Check(root_obj)) {
        path = PyBytes_AS_STRING(root_obj);
        path_len = PyBytes_GET_SIZE(root_obj);
    } else {
        PyErr_SetString(PyExc_TypeError, "root must be a directory fd (int) or a path (bytes)");
        return NULL;
    }
    if (nthreads < 1 || nthreads > 1024) {
        PyErr_SetString(PyExc_ValueError, "threads must be between 1 and 1024");
        return NULL;
    }
    if (!(flags & F_NO_LABEL) && (label_len == 0 || label_len > 4096)) {
        PyErr_SetString(PyExc_ValueError, "label must be 1..4096 bytes");
        return NULL;
    }
    if (memchr(label, '\0', label_len) || (path && memchr(path, '\0', path_len))) {
        PyErr_SetString(PyExc_ValueError, "neither the label nor the path may hold NUL");
        return NULL;
    }
    if ((dir_mode | file_mode) & ~07777U) {
        PyErr_SetString(PyExc_ValueError, "dir_mode and file_mode are permission bits (07777 at most)");
        return NULL;
    }
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable");
        return NULL;
    }
    if (fd_budget <= 0) {
        struct rlimit rl;
        rlim_t soft = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
        if (soft == RLIM_INFINITY || soft > 65536)
            soft = 65536;
        /* Keep half of the process's fds for everyone else. */
        fd_budget = (int)(soft / 2) - 2 * nthreads;
        if (fd_budget < 16)
            fd_budget = 16;
    }

    struct walk *w = calloc(1, sizeof *w);
    if (!w)
        return PyErr_NoMemory();
    w->x.label = label;
    w->x.label_len = (size_t)label_len;
    w->flags = flags;
    memcpy(w->fatal, fatal, sizeof fatal);
    w->nfatal = nfatal;
    w->unread_after = unread_after;
    w->gid = gid;
    w->dir_mode = (mode_t)dir_mode;
    w->file_mode = (mode_t)file_mode;
    w->nthreads = nthreads;
    w->fd_budget = fd_budget;
    pthread_mutex_init(&w->lock, NULL);
    pthread_mutex_init(&w->fdlock, NULL);
    pthread_mutex_init(&w->errlock, NULL);
    pthread_cond_init(&w->cond, NULL);
    pthread_cond_init(&w->cdone, NULL);

    PyObject *result = NULL;
    int open_err = 0, is_dir = 0, rootfd = -1;
    struct stat st;
    struct tally t = {0};
    Py_BEGIN_ALLOW_THREADS
    w->x.use_xattrat = !(flags & (F_FORCE_PROC | F_NO_XATTRAT)) && probe_xattrat();
    atomic_store(&w->noatime, 1);
    if (path) {
        int fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        rootfd = fd >= 0 ? open_root_fd(w, fd) : -1;
        if (fd >= 0) {
            int saved = errno;
            close(fd);
            errno = saved;
        }
    } else {
        rootfd = open_root_fd(w, given_fd);
    }
    if (rootfd < 0 && path && (errno == ELOOP || errno == ENOTDIR)) {
        /* A symlink or a non-directory: label that one entry, never following it. */
        if (fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            open_err = errno;
        } else {
            w->root_dev = st.st_dev;
            t.seen++;
            label_entry(w, &t, AT_FDCWD, NULL, path);
            if (gid >= 0)
                own_entry(w, &t, AT_FDCWD, NULL, path, &st);
        }
    } else if (rootfd < 0) {
        open_err = errno;
    } else if (statx_at(rootfd, "", AT_EMPTY_PATH, &st, &w->root_mnt) < 0) {
        open_err = errno;
        close(rootfd);
    } else {
        is_dir = 1;
    }
    Py_END_ALLOW_THREADS
    if (open_err) {
        errno = open_err;
        if (path)
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        else
            PyErr_SetFromErrno(PyExc_OSError);
        free_walk(w);
        free(w);
        return NULL;
    }
    if (!is_dir) {
        tally_flush(w, &t);
        result = result_dict(w, w->x.use_xattrat);
        free_walk(w);
        free(w);
        return result;
    }

    w->root_dev = st.st_dev;
    w->open_fds = 1;
    w->root = node_new(w, NULL, "", 0, rootfd, &st);
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    struct item *first = malloc(sizeof *first);
    if (!w->root || !threads || !first) {
        if (!w->root)
            close(rootfd);
        free(threads);
        free(first);
        free_walk(w);
        free(w);
        return PyErr_NoMemory();
    }
    /* The root node's reader reference and fd use pass to the IT_READ item. */
    first->kind = IT_READ;
    first->node = w->root;
    w->root->items = 2; /* the read item, plus one held until the end so the root is never freed early */
    w->stack = NULL;
    push(w, first);

    int started = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; started < nthreads; started++)
        if (pthread_create(&threads[started], NULL, worker, w) != 0)
            break;
    Py_END_ALLOW_THREADS
    if (started == 0) {
        free(threads);
        free_walk(w);
        free(w);
        PyErr_SetString(PyExc_RuntimeError, "could not start any walker thread");
        return NULL;
    }

    int failed = 0;
    for (;;) {
        int finished;
        Py_BEGIN_ALLOW_THREADS
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double secs = interval > 0.01 ? interval : 0.01;
        until.tv_sec += (time_t)secs;
        until.tv_nsec += (long)((secs - (double)(time_t)secs) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&w->lock);
        while (w->exited < started)
            if (pthread_cond_timedwait(&w->cdone, &w->lock, &until) != 0)
                break;
        finished = w->exited == started;
        pthread_mutex_unlock(&w->lock);
        Py_END_ALLOW_THREADS
        if (finished)
            break;
        if (!failed && PyErr_CheckSignals() < 0)
            failed = 1;
        if (!failed && progress != Py_None) {
            PyObject *r = PyObject_CallFunction(progress, "KK", atomic_load(&w->seen), atomic_load(&w->changed));
            if (!r)
                failed = 1;
            Py_XDECREF(r);
        }
        if (failed) {
            atomic_store(&w->cancel, 1);
            pthread_mutex_lock(&w->lock);
            pthread_cond_broadcast(&w->cond);
            pthread_mutex_unlock(&w->lock);
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    /* Everything below the root is done: label the root last, and only when nothing below it failed, so that a
     * root with the label (and the ownership) always means a complete walk; OnRootMismatch relies on it. */
    w->root_deferred = atomic_load(&w->cancel) || w->oom || atomic_load(&w->errors) != 0;
    if (!w->root_deferred) {
        t.seen++;
        label_dirfd(w, &t, rootfd, NULL, "", st.st_dev);
        if (gid >= 0)
            own_dirfd(w, &t, rootfd, NULL, "", &st);
        tally_flush(w, &t);
    }
    Py_END_ALLOW_THREADS
    free(threads);
    if (w->oom && !failed) {
        PyErr_NoMemory();
        failed = 1;
    }
    if (!failed)
        result = result_dict(w, w->x.use_xattrat);
    free_walk(w);
    free(w);
    return result;
}

static PyObject *py_xattrat_available(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(probe_xattrat());
}

PyDoc_STRVAR(open_root_doc,
             "open_root(path: bytes) -> int\n\nAn O_PATH fd of the directory at path, resolved without following any\n"
             "symlink or magic link on the way (openat2 RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; before Linux\n"
             "5.6 only the last component is checked). Raises OSError: ELOOP for a symlink, ENOTDIR for a file.");

static PyObject *py_open_root(PyObject *self, PyObject *args)
{
    const char *path;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "y#", &path, &len))
        return NULL;
    if (memchr(path, '\0', (size_t)len)) {
        PyErr_SetString(PyExc_ValueError, "path holds NUL");
        return NULL;
    }
    long fd = -1;
    Py_BEGIN_ALLOW_THREADS
    struct rl_open_how how = {.flags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
                              .resolve = RL_RESOLVE_NO_SYMLINKS | RL_RESOLVE_NO_MAGICLINKS};
    do
        fd = syscall(__NR_openat2, AT_FDCWD, path, &how, sizeof how);
    while (fd < 0 && (errno == EINTR || errno == EAGAIN));
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) /* EPERM: a seccomp filter (O_PATH needs no permission) */
        fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    Py_END_ALLOW_THREADS
    if (fd < 0)
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    return PyLong_FromLong(fd);
}

PyDoc_STRVAR(mount_id_doc, "mount_id(fd: int, name: bytes = b\"\") -> int\n\nThe mount id (statx STATX_MNT_ID) of fd "
                           "itself, or of name below it (not followed); 0 where the kernel does not report one.");

static PyObject *py_mount_id(PyObject *self, PyObject *args)
{
    int fd;
    const char *name = "";
    Py_ssize_t len = 0;
    if (!PyArg_ParseTuple(args, "i|y#", &fd, &name, &len))
        return NULL;
    struct stat st;
    uint64_t mnt = 0;
    if (statx_at(fd, name, len ? 0 : AT_EMPTY_PATH, &st, &mnt) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLongLong(mnt);
}

static PyMethodDef methods[] = {
    {"open_root", py_open_root, METH_VARARGS, open_root_doc},
    {"mount_id", py_mount_id, METH_VARARGS, mount_id_doc},
    {"walk", (PyCFunction)(void (*)(void))py_walk, METH_VARARGS | METH_KEYWORDS, walk_doc},
    {"xattrat_available", py_xattrat_available, METH_NOARGS,
     "True when the kernel has getxattrat/setxattrat (Linux 6.13+)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agent.relabel._walker", "Parallel SELinux relabel walker (see agent.relabel.volume).", -1, methods,
};

PyMODINIT_FUNC PyInit__walker(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "ONE_FS", F_ONE_FS) < 0 || PyModule_AddIntConstant(m, "DRY_RUN", F_DRY_RUN) < 0 ||
        PyModule_AddIntConstant(m, "FORCE_PROC", F_FORCE_PROC) < 0 ||
        PyModule_AddIntConstant(m, "NO_COMPARE", F_NO_COMPARE) < 0 ||
        PyModule_AddIntConstant(m, "MAX_FATAL", MAX_FATAL) < 0 ||
        PyModule_AddIntConstant(m, "STAT_FILES", F_STAT_FILES) < 0 ||
        PyModule_AddIntConstant(m, "NO_LABEL", F_NO_LABEL) < 0 ||
        PyModule_AddIntConstant(m, "NO_OPENAT2", F_NO_OPENAT2) < 0 ||
        PyModule_AddIntConstant(m, "NO_XATTRAT", F_NO_XATTRAT) < 0 ||
        PyModule_AddIntConstant(m, "CHUNK_ENTRIES", CHUNK_ENTRIES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/*
 * _floor: the relabel benchmark's syscall floors (bench/relabel.py), built by bench/relabel_floor.py on demand and
 * never shipped. Per pre-listed (directory, name), with no walk: one setxattrat (FLOOR_SET), one getxattrat
 * (FLOOR_GET), or a getxattrat and a setxattrat when the label differs (FLOOR_COMPARE: the least any
 * compare-before-set walker has to do). The calls are the walker's own (agent/relabel/_xattr.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "_xattr.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


enum floor_mode { FLOOR_SET = 0, FLOOR_GET = 1, FLOOR_COMPARE = 2 };

struct listed {
    int ndirs;
    char **dirs;
    Py_ssize_t *first; /* index of the first name of dir i in names; first[ndirs] = total */
    char **names;
    Py_ssize_t total;
    int mode; /* enum floor_mode */
    const char *label;
    size_t label_len;
    int use_xattrat;
    atomic_llong done, errors;
    int nthreads;
    atomic_llong next; /* first name not yet claimed: threads take FLOOR_BLOCK names at a time */
};

/* Names are claimed in blocks, so a thread slowed by something else on its CPU does not leave the other idle at
 * the end, as a fixed split would: a walker balances its load the same way. */
#define FLOOR_BLOCK 256

static void *listed_worker(void *arg)
{
    struct listed *l = arg;
    struct xlabel x = {.label = l->label, .label_len = l->label_len, .use_xattrat = l->use_xattrat};
    char buf[4096];
    /* Without *xattrat, the walker's way: this thread's own working directory, entered once per directory, and
     * bare names (agent/relabel/_walker.c xattr_dirfd); /proc/self/fd paths only where unshare is refused. */
    int own_cwd = !x.use_xattrat && unshare(CLONE_FS) == 0;
    int dir = 0, open_dir_index = -1, fd = -1, xfd = -1;
    long long done = 0, errors = 0;
    for (;;) {
        Py_ssize_t lo = (Py_ssize_t)atomic_fetch_add(&l->next, FLOOR_BLOCK);
        if (lo >= l->total)
            break;
        Py_ssize_t hi = lo + FLOOR_BLOCK < l->total ? lo + FLOOR_BLOCK : l->total;
        for (Py_ssize_t i = lo; i < hi; i++) {
            while (l->first[dir + 1] <= i)
                dir++;
            if (dir != open_dir_index) {
                if (fd >= 0)
                    close(fd);
                fd = open(l->dirs[dir], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                open_dir_index = dir;
                xfd = fd >= 0 && own_cwd && fchdir(fd) == 0 ? AT_FDCWD : fd;
            }
            long r = -1;
            if (fd >= 0 && l->mode == FLOOR_SET)
                r = xset_at(&x, xfd, l->names[i]);
            else if (fd >= 0 && l->mode == FLOOR_GET)
                r = xget_at(&x, xfd, l->names[i], buf, sizeof buf);
            else if (fd >= 0) {
                ssize_t len = xget_at(&x, xfd, l->names[i], buf, sizeof buf);
                r = len >= 0 && label_matches(&x, buf, len) ? 0 : xset_at(&x, xfd, l->names[i]);
            }
            if (r < 0)
                errors++;
            else
                done++;
        }
    }
    if (fd >= 0)
        close(fd);
    atomic_fetch_add(&l->done, done);
    atomic_fetch_add(&l->errors, errors);
    return NULL;
}

PyDoc_STRVAR(floor_doc,
             "floor(dirs: list[bytes], names: list[list[bytes]], label: bytes, threads: int, mode: int,\n"
             "      no_xattrat: bool = False) -> (done, errors, seconds)\n\nPer listed name, claimed by the "
             "threads in blocks of 256: mode 0 one setxattrat, "
             "1 one getxattrat, 2 a getxattrat and a setxattrat when the label differs; the benchmark's syscall "
             "floors.");

static PyObject *py_floor(PyObject *self, PyObject *args)
{
    PyObject *dirs, *names;
    const char *label;
    Py_ssize_t label_len;
    int nthreads, mode;
    int no_xattrat = 0;
    if (!PyArg_ParseTuple(args, "O!O!y#ii|p", &PyList_Type, &dirs, &PyList_Type, &names, &label, &label_len,
                          &nthreads, &mode, &no_xattrat))
        return NULL;
    Py_ssize_t ndirs = PyList_GET_SIZE(dirs);
    if (PyList_GET_SIZE(names) != ndirs || nthreads < 1 || mode < FLOOR_SET || mode > FLOOR_COMPARE) {
        PyErr_SetString(PyExc_ValueError, "dirs and names must have the same length; threads >= 1; mode 0, 1 or 2");
        return NULL;
    }
    struct listed l = {0};
    l.ndirs = (int)ndirs;
    l.dirs = calloc((size_t)ndirs + 1, sizeof *l.dirs);
    l.first = calloc((size_t)ndirs + 2, sizeof *l.first);
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < ndirs; i++) {
        PyObject *lst = PyList_GET_ITEM(names, i);
        if (!PyList_Check(lst)) {
            PyErr_SetString(PyExc_TypeError, "names must be a list of lists of bytes");
            goto fail;
        }
        total += PyList_GET_SIZE(lst);
    }
    l.names = calloc((size_t)total + 1, sizeof *l.names);
    if (!l.dirs || !l.first || !l.names) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < ndirs; i++) {
        l.dirs[i] = PyBytes_AsString(PyList_GET_ITEM(dirs, i));
        if (!l.dirs[i])
            goto fail;
        l.first[i] = k;
        PyObject *lst = PyList_GET_ITEM(names, i);
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(lst); j++) {
            l.names[k] = PyBytes_AsString(PyList_GET_ITEM(lst, j));
            if (!l.names[k++])
                goto fail;
        }
    }
    l.first[ndirs] = total;
    l.first[ndirs + 1] = total + 1;
    l.total = total;
    l.mode = mode;
    l.label = label;
    l.label_len = (size_t)label_len;
    l.nthreads = nthreads;
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    if (!threads) {
        PyErr_NoMemory();
        goto fail;
    }
    double t0, t1;
    Py_BEGIN_ALLOW_THREADS
    l.use_xattrat = !no_xattrat && probe_xattrat();
    t0 = now();
    int started = 0;
    for (; started < nthreads; started++)
        if (pthread_create(&threads[started], NULL, listed_worker, &l) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    t1 = now();
    Py_END_ALLOW_THREADS
    free(threads);
    free(l.dirs);
    free(l.first);
    free(l.names);
    return Py_BuildValue("(LLd)", (long long)atomic_load(&l.done), (long long)atomic_load(&l.errors), t1 - t0);
fail:
    free(l.dirs);
    free(l.first);
    free(l.names);
    return NULL;
}

static PyMethodDef methods[] = {
    {"floor", py_floor, METH_VARARGS, floor_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_floor", "The relabel benchmark's syscall floors (bench/relabel.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__floor(void)
{
    return PyModule_Create(&module);
}

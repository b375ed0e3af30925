/* agent.parsing._yaml: libyaml's event stream turned straight into dicts, lists and scalars, in compiled code.
 *
 * The reading of YAML stays PyYAML's: the Python face (agent/parsing/compiled_yaml.py) hands in callables for
 * what is decided in Python. This file only walks events, counts, and builds the containers:
 *
 *   - plain scalars that may resolve to something other than a string (YAML 1.1 ints, floats, timestamps:
 *     first character one of "-+.0123456789!&*") go to `plain(value)`, which resolves and constructs them as
 *     PyYAML's SafeLoader does; results are kept per spelling (bounded). The few words that are booleans or
 *     null are matched here; decimal integers that fit 18 digits are read here; every other plain scalar and
 *     every quoted or block scalar is a string;
 *   - scalars with an explicit tag the safe loader builds at once (null, bool, int, float, binary, timestamp)
 *     go to `tagged(tag, value, line, column)`;
 *   - anything else the safe loader reads differently or refuses (other tags, `!`, undefined or duplicate
 *     anchors, unhashable keys, merges of what is not a mapping, `=` outside a key) raises `needs_nodes`, so
 *     the caller reads the text again through PyYAML's own composer and constructor, errors included;
 *   - the bounds (depth, gopkg.in/yaml.v2's alias ratio, an alias inside its own anchor) call
 *     `refuse(code, line, column, anchor)`, which returns the exception to raise (its words live in Python);
 *     libyaml's syntax errors call `syntax_error(...)`, which returns the error PyYAML's CParser raises;
 *   - each item of a top-level mapping's `items` list that holds only what JSON carries is given to
 *     `item_hook`, and what it returns is kept instead (agent/k8s/stored_objects.py keeps the item's JSON text).
 *
 * Counting follows agent/parsing/bounded_yaml.py's _Bounds exactly: one decoded node per scalar or collection
 * event, an alias adds what its anchor's node stood for.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <yaml.h>

#define TAG_PREFIX "tag:yaml.org,2002:"
#define CACHE_LIMIT 4096 /* spellings kept: values that repeat (ports, replicas) are met again, uids never */
/* Short strings are taken from a direct-mapped table of the last one seen per slot: a dump repeats its keys and
 * many values (kind, apiVersion, TCP, IfNotPresent) hundreds of thousands of times, and a string found there costs
 * no allocation, no decoding and no hashing when it becomes a dict key again. */
#define STRING_SLOTS 8192 /* 2**13: string_slot keeps 13 bits */
#define STRING_MAX 48

enum { REFUSE_DEPTH = 1, REFUSE_ALIASES = 2, REFUSE_CYCLE = 3 };
enum { NODE_OTHER = 0, NODE_MERGE = 1, NODE_VALUE = 2 }; /* plain `<<` and `=`: meaningful only as keys */

typedef struct {
    yaml_parser_t parser;
    yaml_event_t event;
    PyObject *stream;     /* an object with read(), or NULL */
    PyObject *input;      /* the bytes libyaml reads from, kept alive */
    PyObject *pending;    /* bytes read from the stream and not yet given to libyaml */
    Py_ssize_t pending_at;
    PyObject *plain, *tagged, *refuse, *needs_nodes, *syntax_error, *item_hook;
    PyObject *cache;      /* plain spelling -> value */
    PyObject *anchors;    /* anchor -> object built for it */
    PyObject *sizes;      /* anchor -> nodes its node stood for */
    PyObject *open;       /* anchors of the collections being built */
    PyObject *not_json;   /* anchors whose node holds what JSON does not carry, for the items that alias them */
    long max_depth, depth;
    long long decoded, aliased;
    int item_plain;       /* the item being built holds only what JSON carries */
    int hook_next;        /* the next sequence is a top-level `items` list */
    PyObject *strings[STRING_SLOTS];
} Builder;

static PyObject *build(Builder *b, int *node);

/* libyaml asks for at most `size` bytes; a text stream's characters may encode to more, so what is left over
 * waits in b->pending for the next call. */
static int read_handler(void *data, unsigned char *buffer, size_t size, size_t *size_read)
{
    Builder *b = data;
    if (b->pending == NULL) {
        PyObject *chunk = PyObject_CallMethod(b->stream, "read", "n", (Py_ssize_t)size);
        if (chunk == NULL)
            return 0;
        if (PyUnicode_Check(chunk)) {
            PyObject *encoded = PyUnicode_AsUTF8String(chunk);
            Py_DECREF(chunk);
            if (encoded == NULL)
                return 0;
            chunk = encoded;
        }
        if (!PyBytes_Check(chunk)) {
            PyErr_SetString(PyExc_TypeError, "a YAML stream's read() must give bytes or str");
            Py_DECREF(chunk);
            return 0;
        }
        b->pending = chunk;
        b->pending_at = 0;
    }
    size_t left = (size_t)(PyBytes_GET_SIZE(b->pending) - b->pending_at);
    size_t length = left < size ? left : size;
    memcpy(buffer, PyBytes_AS_STRING(b->pending) + b->pending_at, length);
    *size_read = length;
    b->pending_at += length;
    if (length == left)
        Py_CLEAR(b->pending);
    return 1;
}

static PyObject *mark_args(yaml_mark_t mark)
{
    return Py_BuildValue("(nn)", (Py_ssize_t)mark.line, (Py_ssize_t)mark.column);
}

/* libyaml stopped: the exception PyYAML's CParser raises for it, built by `syntax_error`. */
static void raise_parse_error(Builder *b)
{
    if (PyErr_Occurred()) /* from read() */
        return;
    if (b->parser.error == YAML_MEMORY_ERROR) {
        PyErr_NoMemory();
        return;
    }
    PyObject *context_mark = b->parser.context ? mark_args(b->parser.context_mark) : (Py_INCREF(Py_None), Py_None);
    PyObject *problem_mark = b->parser.problem ? mark_args(b->parser.problem_mark) : (Py_INCREF(Py_None), Py_None);
    PyObject *error = NULL;
    if (context_mark && problem_mark)
        error = PyObject_CallFunction(b->syntax_error, "isOsOni", (int)b->parser.error, b->parser.context,
                                      context_mark, b->parser.problem, problem_mark,
                                      (Py_ssize_t)b->parser.problem_offset, b->parser.problem_value);
    Py_XDECREF(context_mark);
    Py_XDECREF(problem_mark);
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
}

static int next_event(Builder *b)
{
    yaml_event_delete(&b->event);
    if (!yaml_parser_parse(&b->parser, &b->event)) {
        raise_parse_error(b);
        return -1;
    }
    return 0;
}

static PyObject *fall_back(Builder *b)
{
    PyErr_SetNone(b->needs_nodes);
    return NULL;
}

static PyObject *refused(Builder *b, int code, yaml_mark_t mark, PyObject *anchor)
{
    PyObject *error = PyObject_CallFunction(b->refuse, "innO", code, (Py_ssize_t)mark.line,
                                            (Py_ssize_t)mark.column, anchor ? anchor : Py_None);
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
    return NULL;
}

static uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* A slot for a string of at most STRING_MAX bytes: its length, first and last eight bytes, mixed. */
static size_t string_slot(const unsigned char *value, size_t length)
{
    uint64_t h;
    if (length >= 8) {
        h = load64(value) ^ (load64(value + length - 8) * 0xff51afd7ed558ccdull);
    } else {
        h = 0;
        memcpy(&h, value, length);
    }
    h = (h ^ length ^ (h >> 29)) * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 51) & (STRING_SLOTS - 1);
}

static PyObject *text(Builder *b, const unsigned char *value, size_t length)
{
    if (length > STRING_MAX)
        return PyUnicode_DecodeUTF8((const char *)value, (Py_ssize_t)length, "strict");
    PyObject **slot = &b->strings[string_slot(value, length)];
    PyObject *kept = *slot;
    if (kept != NULL) {
        const char *utf8;
        Py_ssize_t size;
        if (PyUnicode_IS_COMPACT_ASCII(kept)) { /* its characters are its UTF-8 */
            utf8 = (const char *)PyUnicode_DATA(kept);
            size = PyUnicode_GET_LENGTH(kept);
        } else {
            utf8 = PyUnicode_AsUTF8AndSize(kept, &size); /* kept with the string: no copy the next time */
        }
        if (utf8 != NULL && (size_t)size == length && memcmp(utf8, value, length) == 0) {
            Py_INCREF(kept);
            return kept;
        }
        if (utf8 == NULL)
            PyErr_Clear();
    }
    PyObject *string = PyUnicode_DecodeUTF8((const char *)value, (Py_ssize_t)length, "strict");
    if (string != NULL) {
        Py_XSETREF(*slot, string);
        Py_INCREF(string);
    }
    return string;
}

/* gopkg.in/yaml.v2 decode.go allowedAliasRatio; the same arithmetic as bounded_yaml.allowed_alias_ratio. */
static double allowed_alias_ratio(long long decoded)
{
    if (decoded <= 400000)
        return 0.99;
    if (decoded >= 4000000)
        return 0.10;
    return 0.99 - 0.89 * (double)(decoded - 400000) / (double)(4000000 - 400000);
}

/* Whether a constructed scalar is one JSON carries as it is (a string, a number within range, true, false,
 * null): a timestamp, binary or an infinity is not. */
static int json_scalar(PyObject *value)
{
    if (PyFloat_CheckExact(value)) {
        double x = PyFloat_AS_DOUBLE(value);
        return x - x == 0;
    }
    return value == Py_None || PyBool_Check(value) || PyLong_CheckExact(value) || PyUnicode_CheckExact(value);
}

static int is_word(const char *value, size_t length, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == length && memcmp(*words, value, length) == 0)
            return 1;
    return 0;
}

static const char *const TRUE_WORDS[] = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", NULL};
static const char *const FALSE_WORDS[] = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", NULL};
static const char *const NULL_WORDS[] = {"~", "null", "Null", "NULL", NULL};

/* A plain scalar without a tag, as PyYAML's Resolver and SafeConstructor read it. Its implicit resolvers are
 * keyed by first character: booleans [yYnNtTfFoO], null [~nN and the empty string], merge [<], value [=],
 * ints, floats and timestamps [-+.0-9], the `yaml` tag [!&*]; any other plain scalar is a string. */
static PyObject *plain_scalar(Builder *b, const char *value, size_t length, int *node)
{
    if (length == 0)
        Py_RETURN_NONE;
    switch (value[0]) {
    case 'y': case 'Y': case 'n': case 'N': case 't': case 'T': case 'f': case 'F': case 'o': case 'O': case '~':
        if (length <= 5) {
            if (is_word(value, length, TRUE_WORDS))
                Py_RETURN_TRUE;
            if (is_word(value, length, FALSE_WORDS))
                Py_RETURN_FALSE;
            if (is_word(value, length, NULL_WORDS))
                Py_RETURN_NONE;
        }
        break;
    case '<':
        if (length == 2 && value[1] == '<')
            *node = NODE_MERGE;
        break;
    case '=':
        if (length == 1)
            *node = NODE_VALUE;
        break;
    case '-': case '+': case '.': case '0': case '1': case '2': case '3': case '4': case '5': case '6':
    case '7': case '8': case '9': case '!': case '&': case '*': {
        /* A decimal integer of up to 18 digits without a leading zero (which YAML 1.1 reads as octal) is what
         * SafeConstructor.construct_yaml_int gives int() of. */
        if (length <= 18 && (value[0] != '0' || length == 1)) {
            size_t i = 0;
            while (i < length && value[i] >= '0' && value[i] <= '9')
                i++;
            if (i == length)
                return PyLong_FromString(value, NULL, 10);
        }
        PyObject *spelling = text(b, (const unsigned char *)value, length);
        if (spelling == NULL)
            return NULL;
        PyObject *result = PyDict_GetItemWithError(b->cache, spelling);
        if (result != NULL) {
            Py_DECREF(spelling);
            Py_INCREF(result);
            return result;
        }
        if (PyErr_Occurred() || (result = PyObject_CallOneArg(b->plain, spelling)) == NULL) {
            Py_DECREF(spelling);
            return NULL;
        }
        if (PyDict_GET_SIZE(b->cache) >= CACHE_LIMIT)
            PyDict_Clear(b->cache);
        if (PyDict_SetItem(b->cache, spelling, result) < 0) {
            Py_DECREF(spelling);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(spelling);
        return result;
    }
    }
    return text(b, (const unsigned char *)value, length);
}

static const char *const DIRECT_TAGS[] = {TAG_PREFIX "null", TAG_PREFIX "bool", TAG_PREFIX "int",
                                          TAG_PREFIX "float", TAG_PREFIX "binary", TAG_PREFIX "timestamp", NULL};

static int tag_is(const yaml_char_t *tag, const char *name)
{
    return tag == NULL || strcmp((const char *)tag, name) == 0;
}

static PyObject *scalar(Builder *b, int *node)
{
    yaml_event_t *e = &b->event;
    const char *value = (const char *)e->data.scalar.value;
    size_t length = e->data.scalar.length;
    const yaml_char_t *tag = e->data.scalar.tag;
    PyObject *result;
    if (tag == NULL) {
        if (!e->data.scalar.plain_implicit)
            return text(b, e->data.scalar.value, length); /* quoted or block: a string */
        result = plain_scalar(b, value, length, node);
    } else if (strcmp((const char *)tag, TAG_PREFIX "str") == 0) {
        return text(b, e->data.scalar.value, length);
    } else if (is_word((const char *)tag, strlen((const char *)tag), DIRECT_TAGS)) {
        result = PyObject_CallFunction(b->tagged, "ss#nn", (const char *)tag, value, (Py_ssize_t)length,
                                       (Py_ssize_t)e->start_mark.line, (Py_ssize_t)e->start_mark.column);
    } else {
        return fall_back(b); /* `!`, !!set, !!omap, !!pairs, !!merge, application tags */
    }
    if (result != NULL && b->item_plain && !json_scalar(result))
        b->item_plain = 0;
    return result;
}

/* A node in a place other than a mapping's key: a plain `<<` or `=` there is PyYAML's to read or refuse. */
static PyObject *build_value(Builder *b)
{
    int node = NODE_OTHER;
    PyObject *value = build(b, &node);
    if (value != NULL && node != NODE_OTHER) {
        Py_DECREF(value);
        return fall_back(b);
    }
    return value;
}

static PyObject *sequence(Builder *b)
{
    int hooked = b->hook_next;
    b->hook_next = 0;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (;;) {
        if (next_event(b) < 0)
            goto error;
        if (b->event.type == YAML_SEQUENCE_END_EVENT)
            return list;
        if (hooked)
            b->item_plain = 1;
        PyObject *item = build_value(b);
        if (item == NULL)
            goto error;
        if (hooked && b->item_plain) {
            PyObject *kept = PyObject_CallOneArg(b->item_hook, item);
            Py_DECREF(item);
            if (kept == NULL)
                goto error;
            item = kept;
        }
        int failed = PyList_Append(list, item);
        Py_DECREF(item);
        if (failed)
            goto error;
    }
error:
    Py_DECREF(list);
    return NULL;
}

/* What `<<: value` adds, in SafeConstructor.flatten_mapping's order: a list's mappings last first, so that the
 * first one wins. Anything else is PyYAML's error: read again through nodes. */
static int merge_into(Builder *b, PyObject *merged, PyObject *value)
{
    if (PyDict_CheckExact(value))
        return PyDict_Update(merged, value);
    if (!PyList_CheckExact(value)) {
        fall_back(b);
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(value);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyDict_CheckExact(PyList_GET_ITEM(value, i))) {
            fall_back(b);
            return -1;
        }
    for (Py_ssize_t i = n - 1; i >= 0; i--)
        if (PyDict_Update(merged, PyList_GET_ITEM(value, i)) < 0)
            return -1;
    return 0;
}

static PyObject *mapping(Builder *b)
{
    PyObject *dict = PyDict_New(), *merged = NULL, *key = NULL, *value = NULL;
    if (dict == NULL)
        return NULL;
    for (;;) {
        if (next_event(b) < 0)
            goto error;
        if (b->event.type == YAML_MAPPING_END_EVENT)
            break;
        int key_node = NODE_OTHER;
        if ((key = build(b, &key_node)) == NULL)
            goto error;
        if (!PyUnicode_CheckExact(key)) {
            if (PyDict_Check(key) || PyList_Check(key)) { /* unhashable: PyYAML's ConstructorError */
                fall_back(b);
                goto error;
            }
            b->item_plain = 0; /* JSON keys are strings */
        }
        if (next_event(b) < 0)
            goto error;
        if (b->depth == 1 && b->item_hook != Py_None && b->event.type == YAML_SEQUENCE_START_EVENT &&
            key_node == NODE_OTHER && PyUnicode_CheckExact(key) && PyUnicode_CompareWithASCIIString(key, "items") == 0)
            b->hook_next = 1; /* the items of a top-level List */
        value = build_value(b);
        b->hook_next = 0;
        if (value == NULL)
            goto error;
        if (key_node == NODE_MERGE) {
            if (merged == NULL && (merged = PyDict_New()) == NULL)
                goto error;
            if (merge_into(b, merged, value) < 0)
                goto error;
        } else if (PyDict_SetItem(dict, key, value) < 0) {
            goto error;
        }
        Py_CLEAR(key);
        Py_CLEAR(value);
    }
    if (merged != NULL) { /* the mapping's own keys override merged ones; merged keys come first */
        if (PyDict_Update(merged, dict) < 0)
            goto error;
        Py_DECREF(dict);
        return merged;
    }
    return dict;
error:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(merged);
    Py_DECREF(dict);
    return NULL;
}

static PyObject *alias(Builder *b)
{
    yaml_event_t *e = &b->event;
    PyObject *name = PyUnicode_FromString((const char *)e->data.alias.anchor);
    if (name == NULL)
        return NULL;
    PyObject *object = PyDict_GetItemWithError(b->anchors, name);
    if (object == NULL) {
        int open = PyErr_Occurred() ? -1 : PySet_Contains(b->open, name);
        if (open == 1)
            refused(b, REFUSE_CYCLE, e->start_mark, name);
        else if (open == 0)
            fall_back(b); /* an undefined alias: PyYAML's ComposerError */
        Py_DECREF(name);
        return NULL;
    }
    PyObject *size = PyDict_GetItemWithError(b->sizes, name);
    long long n = size ? PyLong_AsLongLong(size) : -1;
    if (n < 0) {
        Py_DECREF(name);
        return NULL;
    }
    if (b->item_plain) {
        int held = PySet_Contains(b->not_json, name);
        if (held < 0) {
            Py_DECREF(name);
            return NULL;
        }
        b->item_plain = !held;
    }
    b->decoded += n;
    b->aliased += n;
    if (b->aliased > 100 && b->decoded > 1000 &&
        (double)b->aliased / (double)b->decoded > allowed_alias_ratio(b->decoded)) {
        refused(b, REFUSE_ALIASES, e->start_mark, name);
        Py_DECREF(name);
        return NULL;
    }
    Py_DECREF(name);
    Py_INCREF(object);
    return object;
}

/* The object of the node whose first event is b->event; `node` says a plain `<<` or `=`. */
static PyObject *build(Builder *b, int *node)
{
    yaml_event_t *e = &b->event;
    if (e->type == YAML_ALIAS_EVENT)
        return alias(b);
    const yaml_char_t *raw_anchor = e->type == YAML_SCALAR_EVENT ? e->data.scalar.anchor
                                  : e->type == YAML_SEQUENCE_START_EVENT ? e->data.sequence_start.anchor
                                  : e->type == YAML_MAPPING_START_EVENT ? e->data.mapping_start.anchor : NULL;
    PyObject *anchor = NULL, *result = NULL;
    if (raw_anchor != NULL) {
        if ((anchor = PyUnicode_FromString((const char *)raw_anchor)) == NULL)
            return NULL;
        int seen = PyDict_Contains(b->anchors, anchor);
        if (seen == 0)
            seen = PySet_Contains(b->open, anchor);
        if (seen != 0) { /* a duplicate anchor: PyYAML's ComposerError */
            if (seen == 1)
                fall_back(b);
            Py_DECREF(anchor);
            return NULL;
        }
    }
    long long start = b->decoded++;
    int outer_plain = b->item_plain;
    if (anchor != NULL)
        b->item_plain = 1; /* whether this node alone holds only what JSON carries */
    if (e->type == YAML_SCALAR_EVENT) {
        result = scalar(b, node);
        if (result != NULL && anchor != NULL && *node != NODE_OTHER) { /* an anchored `<<` or `=` */
            Py_CLEAR(result);
            fall_back(b);
        }
    } else if (e->type == YAML_SEQUENCE_START_EVENT || e->type == YAML_MAPPING_START_EVENT) {
        int is_sequence = e->type == YAML_SEQUENCE_START_EVENT;
        const yaml_char_t *tag = is_sequence ? e->data.sequence_start.tag : e->data.mapping_start.tag;
        if (++b->depth > b->max_depth) {
            refused(b, REFUSE_DEPTH, e->start_mark, anchor);
        } else if (!tag_is(tag, is_sequence ? TAG_PREFIX "seq" : TAG_PREFIX "map")) {
            fall_back(b);
        } else if (anchor == NULL || PySet_Add(b->open, anchor) == 0) {
            result = is_sequence ? sequence(b) : mapping(b);
            if (anchor != NULL && PySet_Discard(b->open, anchor) < 0)
                Py_CLEAR(result);
        }
        b->depth--;
    } else {
        PyErr_Format(PyExc_RuntimeError, "unexpected YAML event %d", (int)e->type);
    }
    if (result != NULL && anchor != NULL) {
        PyObject *size = PyLong_FromLongLong(b->decoded - start);
        if (size == NULL || PyDict_SetItem(b->anchors, anchor, result) < 0 ||
            PyDict_SetItem(b->sizes, anchor, size) < 0 || (!b->item_plain && PySet_Add(b->not_json, anchor) < 0))
            Py_CLEAR(result);
        Py_XDECREF(size);
        b->item_plain = outer_plain && b->item_plain;
    }
    Py_XDECREF(anchor);
    return result;
}

static PyObject *documents(Builder *b)
{
    PyObject *out = PyList_New(0);
    if (out == NULL || next_event(b) < 0) /* stream start */
        goto error;
    for (;;) {
        if (next_event(b) < 0)
            goto error;
        if (b->event.type == YAML_STREAM_END_EVENT)
            return out;
        /* document start: anchors and counts are the document's own */
        PyDict_Clear(b->anchors);
        PyDict_Clear(b->sizes);
        PySet_Clear(b->open);
        PySet_Clear(b->not_json);
        b->decoded = b->aliased = 0;
        b->depth = 0;
        if (next_event(b) < 0)
            goto error;
        PyObject *document = build_value(b);
        if (document == NULL)
            goto error;
        int failed = PyList_Append(out, document);
        Py_DECREF(document);
        if (failed || next_event(b) < 0) /* document end */
            goto error;
    }
error:
    Py_XDECREF(out);
    return NULL;
}

PyDoc_STRVAR(load_all_doc,
"load_all(source, plain, tagged, refuse, needs_nodes, syntax_error, item_hook, max_depth) -> list\n\n"
"Every document of `source` (str, bytes, or an object whose read(size) gives either) built from libyaml's\n"
"events; see agent/parsing/compiled_yaml.py for the callables.");

static PyObject *load_all(PyObject *module, PyObject *args)
{
    Builder b;
    memset(&b, 0, sizeof b);
    PyObject *source;
    if (!PyArg_ParseTuple(args, "OOOOOOOl:load_all", &source, &b.plain, &b.tagged, &b.refuse, &b.needs_nodes,
                          &b.syntax_error, &b.item_hook, &b.max_depth))
        return NULL;
    if (!yaml_parser_initialize(&b.parser))
        return PyErr_NoMemory();
    PyObject *out = NULL;
    b.cache = PyDict_New();
    b.anchors = PyDict_New();
    b.sizes = PyDict_New();
    b.open = PySet_New(NULL);
    b.not_json = PySet_New(NULL);
    if (!b.cache || !b.anchors || !b.sizes || !b.open || !b.not_json)
        goto done;
    if (PyUnicode_Check(source)) {
        /* The encoding is left for libyaml to detect (UTF-8, as a str's encoding never starts with a UTF-16 BOM):
         * only then does it skip a leading U+FEFF, as the safe loader does. Set by hand, the BOM stays a character
         * of column 0 and moves every mark of the first line, so `\ufeff%YAML 1.1` or `\ufeff- a\n- b` fail. */
        if ((b.input = PyUnicode_AsUTF8String(source)) == NULL)
            goto done;
    } else if (PyBytes_Check(source)) {
        Py_INCREF(source);
        b.input = source;
    } else {
        /* As PyYAML's CParser: a stream whose read() gives str is UTF-8 once encoded (read_handler), and libyaml
         * detects that encoding itself, skipping a leading BOM, as for a str above. The empty read only makes an
         * object without read() fail here, before libyaml starts. */
        PyObject *probe = PyObject_CallMethod(source, "read", "i", 0);
        if (probe == NULL)
            goto done;
        Py_DECREF(probe);
        b.stream = source;
        yaml_parser_set_input(&b.parser, read_handler, &b);
    }
    if (b.input != NULL)
        yaml_parser_set_input_string(&b.parser, (const unsigned char *)PyBytes_AS_STRING(b.input),
                                     (size_t)PyBytes_GET_SIZE(b.input));
    out = documents(&b);
done:
    yaml_event_delete(&b.event);
    yaml_parser_delete(&b.parser);
    Py_XDECREF(b.input);
    Py_XDECREF(b.pending);
    Py_XDECREF(b.cache);
    Py_XDECREF(b.anchors);
    Py_XDECREF(b.sizes);
    Py_XDECREF(b.open);
    Py_XDECREF(b.not_json);
    for (int i = 0; i < STRING_SLOTS; i++)
        Py_XDECREF(b.strings[i]);
    return out;
}

static PyMethodDef methods[] = {
    {"load_all", load_all, METH_VARARGS, load_all_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agent.parsing._yaml",
    "YAML documents built from libyaml's events in compiled code (agent/parsing/compiled_yaml.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__yaml(void)
{
    return PyModule_Create(&module);
}

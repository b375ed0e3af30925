"""A small Kubernetes API server for tests: list, streaming watch and create, over real HTTP on loopback.

It keeps objects per collection path, numbers every change with a resourceVersion, pushes watch events to open
watches, and records created Events and request headers so tests can assert on them. Of the field selectors it
knows `spec.nodeName=<node>`, the one a node agent uses. With `tokens` it answers 401 to a request whose bearer
token is not one of them; with `tls` (a server ssl.SSLContext) it serves HTTPS and records the common name of
each client certificate (None without one) in `peers`.

With `audit_log` (a path) it also writes an API-server audit log of the requests it serves: one
audit.k8s.io/v1 Event per line at the Metadata level, as the API server's log backend writes them (a watch gets
its ResponseStarted and its ResponseComplete; refused requests are not logged). The user is the one `tokens`
maps the bearer token to when it is a dict, else the client certificate's common name, else system:anonymous;
an Impersonate-User header is recorded as impersonatedUser.
"""

import datetime
import json
import queue
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def selected(obj, selector):
    """Does `obj` pass a fieldSelector? Only `spec.nodeName=<node>` is understood; anything else is refused."""
    if not selector:
        return True
    field, _, value = selector.partition("=")
    if field != "spec.nodeName":
        raise ValueError(f"field selector {selector!r} is not supported by this fake")
    return (obj.get("spec") or {}).get("nodeName") == value


COLLECTIONS = {
    "Pod": "/api/v1/pods",
    "PersistentVolumeClaim": "/api/v1/persistentvolumeclaims",
    "PersistentVolume": "/api/v1/persistentvolumes",
    "CSIDriver": "/apis/storage.k8s.io/v1/csidrivers",
}
# What the audit log's objectRef says of each collection: (apiGroup, apiVersion, resource).
AUDITED_COLLECTIONS = {
    "/api/v1/pods": ("", "v1", "pods"),
    "/api/v1/persistentvolumeclaims": ("", "v1", "persistentvolumeclaims"),
    "/api/v1/persistentvolumes": ("", "v1", "persistentvolumes"),
    "/apis/storage.k8s.io/v1/csidrivers": ("storage.k8s.io", "v1", "csidrivers"),
}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeAPIServer:
    def __init__(self, tokens=None, tls=None, audit_log=None):
        self.tokens = tokens
        self.audit_log = open(audit_log, "a", encoding="utf-8") if audit_log is not None else None
        self.audit_lock = threading.Lock()
        self.peers = []
        self.tls = tls
        self.lock = threading.Lock()
        self.version = 1
        self.objects = {path: {} for path in COLLECTIONS.values()}
        self.watchers = {path: [] for path in COLLECTIONS.values()}
        self.history = {path: [] for path in COLLECTIONS.values()}  # (resourceVersion, type, object)
        self.events = []
        self.headers = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _refused(self):
                """Record the request; answer 401 and say so when its credentials are not accepted."""
                server.headers.append(dict(self.headers))
                if server.tls is not None:
                    subject = dict(item[0] for item in (self.connection.getpeercert() or {}).get("subject", ()))
                    server.peers.append(subject.get("commonName"))
                if server.tokens is None:
                    return False
                authorization = self.headers.get("Authorization", "")
                if authorization.startswith("Bearer ") and authorization[len("Bearer "):] in server.tokens:
                    return False
                if server.tls is not None and server.peers[-1] is not None:
                    return False  # a client certificate the CA signed authenticates on its own
                self._json(401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
                return True

            def _audit(self, verb, ref, code, stage="ResponseComplete", audit_id=None, received=None):
                """One audit Event for this request (see the module's docstring); the auditID it used."""
                audit_id = audit_id or str(uuid.uuid4())
                if server.audit_log is None:
                    return audit_id
                authorization = self.headers.get("Authorization", "")
                token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else None
                if isinstance(server.tokens, dict) and token in server.tokens:
                    username = server.tokens[token]
                elif server.tls is not None and server.peers and server.peers[-1] is not None:
                    username = server.peers[-1]
                else:
                    username = "system:anonymous"
                event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
                         "stage": stage, "requestURI": self.path, "verb": verb,
                         "user": {"username": username, "groups": ["system:authenticated"]},
                         "sourceIPs": [self.client_address[0]], "userAgent": self.headers.get("User-Agent", "")}
                impersonated = self.headers.get("Impersonate-User")
                if impersonated:
                    event["impersonatedUser"] = {"username": impersonated}
                if ref is not None:
                    event["objectRef"] = ref
                event["responseStatus"] = {"metadata": {}, "code": code}
                now = _now()
                event["requestReceivedTimestamp"] = received or now
                event["stageTimestamp"] = now
                with server.audit_lock:
                    if not server.audit_log.closed:  # a watch may end after stop()
                        server.audit_log.write(json.dumps(event, separators=(",", ":")) + "\n")
                        server.audit_log.flush()
                return audit_id

            @staticmethod
            def _collection_ref(path, namespace=None):
                group, version, resource = AUDITED_COLLECTIONS[path]
                ref = {"resource": resource, "apiVersion": version}
                if group:
                    ref["apiGroup"] = group
                if namespace:
                    ref["namespace"] = namespace
                return ref

            def do_GET(self):
                if self._refused():
                    return
                parsed = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                if parsed.path not in server.objects:
                    self._audit("get", None, 404)
                    return self._json(404, {"kind": "Status", "code": 404, "message": f"{parsed.path} not found"})
                selector = query.get("fieldSelector", [""])[0]
                ref = self._collection_ref(parsed.path)
                if query.get("watch") == ["1"]:
                    since = int(query.get("resourceVersion", ["0"])[0] or 0)
                    received = _now()
                    audit_id = self._audit("watch", ref, 200, "ResponseStarted", received=received)
                    try:
                        return self._watch(parsed.path, float(query.get("timeoutSeconds", ["30"])[0]), since,
                                           selector)
                    finally:
                        self._audit("watch", ref, 200, "ResponseComplete", audit_id, received)
                with server.lock:
                    items = [obj for obj in server.objects[parsed.path].values() if selected(obj, selector)]
                    version = str(server.version)
                self._audit("list", ref, 200)
                return self._json(200, {"kind": "List", "apiVersion": "v1", "items": items,
                                        "metadata": {"resourceVersion": version}})

            def do_POST(self):
                if self._refused():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self.path.endswith("/events"):
                    self._audit("post", None, 404)
                    return self._json(404, {"kind": "Status", "code": 404, "message": "not found"})
                with server.lock:
                    server.events.append(body)
                parts = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
                namespace = parts[3] if len(parts) == 5 and parts[2] == "namespaces" else None
                ref = {"resource": "events", "apiVersion": "v1", **({"namespace": namespace} if namespace else {})}
                self._audit("create", ref, 201)
                return self._json(201, body)

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _watch(self, path, timeout, since, selector=""):
                events = queue.Queue()
                with server.lock:
                    # Like the real API server: first what changed after the resourceVersion asked for.
                    for version, kind, obj in server.history[path]:
                        if version > since:
                            events.put((kind, obj))
                    server.watchers[path].append(events)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    waited = 0.0
                    while not server.stopping.is_set() and waited < timeout:
                        try:
                            kind, obj = events.get(timeout=0.1)
                        except queue.Empty:
                            waited += 0.1
                            continue
                        if not selected(obj, selector):
                            continue
                        self.wfile.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.watchers[path].remove(events)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self):
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.audit_log is not None:
            with self.audit_lock:
                self.audit_log.close()

    def _key(self, obj):
        meta = obj["metadata"]
        return (meta.get("namespace"), meta["name"])

    def put(self, obj, event="ADDED"):
        path = COLLECTIONS[obj["kind"]]
        with self.lock:
            self.version += 1
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(self.version)
            if event != "DELETED":
                self.objects[path][self._key(obj)] = obj
            else:
                self.objects[path].pop(self._key(obj), None)
            self.history[path].append((self.version, event, obj))
            for watcher in self.watchers[path]:
                watcher.put((event, obj))

    def delete(self, obj):
        self.put(obj, "DELETED")

    def watching(self):
        with self.lock:
            return sum(len(w) for w in self.watchers.values())

"""The web side: the app factory and the blueprint serving POST /logs."""
import base64
import binascii
import collections
import contextlib
import functools
import logging
import math
import os
import pathlib
import socket
import threading
import time
import zlib

import gunicorn.http.errors
import orjson
import peewee
from flask import Blueprint, Flask, current_app, g, redirect, request, url_for
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

import alerts
import config
import drains
import metrics
import models
import otlp
import query
import records
import signin
import tasks
import spool
import viewer
from spool import NotReplicated, OutcomeUnknown, QueueFull, RateLimited, SpoolUnavailable

logger = logging.getLogger("logflow")
bp = Blueprint("logs", __name__)

OPENAPI_PATH = pathlib.Path(__file__).with_name("openapi.json")

# How long a key's last lookup stays usable while the database is down.
KNOWN_KEY_SECONDS = 3600

# Longer headers are not keys LogFlow issued; refuse them before hashing.
MAX_KEY_LENGTH = 256


class APIError(Exception):
    """An error that the client is told about, as {"error": message} with its status code."""

    def __init__(self, status, message, headers=None, body=None, counted=True, reason=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.body = body
        # False when the store behind the counters is what failed: counting
        # would only wait on it a second time.
        self.counted = counted
        # What /metrics calls this refusal, when its status alone would mislead.
        self.reason = reason or REFUSAL_REASONS.get(status, str(status))

    def response(self):
        if self.counted:
            count_refusal(self.reason)
        body = {"error": self.message}
        body.update(self.body or {})
        return json_response(body, self.status, self.headers)


# What /metrics calls each status of a refused request.
REFUSAL_REASONS = {400: "unreadable", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "timeout",
                   413: "too_large", 415: "unsupported", 422: "invalid", 429: "rate_limited",
                   503: "unavailable"}


def count_refusal(reason):
    """Count a refused request in the shared counters, when the store behind them answers."""
    count([(metrics.counter("requests_refused", reason=reason), 1)])


def count(counters):
    """Add (name, amount) pairs to the shared counters, when the store behind them answers."""
    try:
        tasks.runtime.spool.add_counters(counters)
    except SpoolUnavailable as error:
        # What was counted is answered and logged anyway; only its count is missing.
        logger.debug("could not count %s: %s", [name for name, _ in counters], error)


def rejected_records(project_id, reason, amount):
    """The counter of a project's records refused for one reason, as a (name, amount) list."""
    return [(metrics.counter("records_rejected", project=project_id, reason=reason), amount)] if amount else []


def check_replicas_refuse(settings):
    """Warn unless the Redis primary refuses writes it cannot replicate (min-replicas-to-write), as WAIT cannot."""
    if not (settings.redis_url and settings.redis_replicas):
        return
    required = tasks.runtime.spool.replicas_required()
    if required is None:
        logger.info("could not read the Redis primary's min-replicas-to-write (CONFIG GET refused or Redis down)")
    elif required < settings.redis_replicas:
        logger.warning("the Redis primary's min-replicas-to-write is %d, below LOGFLOW_REDIS_REPLICAS=%d: with too"
                       " few replicas, each push is queued, then refused after the WAIT (docs/scaling.md)",
                       required, settings.redis_replicas)


def json_response(body, status, headers=None):
    """A JSON response serialized with orjson."""
    return current_app.response_class(
        orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def create_app(settings=None):
    """Create the Flask app: settings from the environment unless given (tests pass their own)."""
    settings = settings or config.load()
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=settings.log_level,
                            format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    tasks.configure(settings)
    check_replicas_refuse(settings)
    if not settings.database_url:
        # Dev mode needs no set-up step; PostgreSQL gets `manage.py init-db`.
        models.create_tables()
    tasks.collect_garbage_rarely()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["logflow"] = {"settings": settings, "keys": KeyCache(settings.key_cache_seconds,
                                                                    settings.retry_after_seconds)}
    app.register_blueprint(bp)
    app.register_blueprint(viewer.bp)
    app.register_error_handler(APIError, APIError.response)
    app.register_error_handler(HTTPException, lambda error: json_response(
        {"error": error.description}, error.code))
    app.register_error_handler(RequestEntityTooLarge, lambda error: too_large(settings).response())
    app.register_error_handler(Exception, internal_error)
    return app


def too_large(settings):
    """The 413 of a body over LOGFLOW_MAX_BODY_BYTES as sent."""
    return APIError(413, "the body is larger than %d bytes" % settings.max_body_bytes)


def internal_error(error):
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return json_response({"error": "internal error; see the server log"}, 500)


class KeyCache:
    """Key hash → (project id, active, writers, rate limit, scope, retention days), trusted for `ttl` seconds so known keys skip the database.

    During a database outage a key's last lookup (this process's, else the one
    a web process shared in the spool) keeps serving, but only if no key or
    project changed since: each lookup notes the spool's key epoch, read before
    the database, and manage.py advances the epoch after committing a change.
    A lookup that read the database before a revocation committed therefore
    carries the epoch before it, however late it is shared.
    """

    max_entries = 10000
    Entry = collections.namedtuple("Entry", "expires identity epoch")

    def __init__(self, ttl, retry_after):
        self.ttl = ttl
        self.retry_after = retry_after
        self.entries = {}
        self.lock = threading.Lock()

    def identify(self, plaintext, default_writers):
        """The identity behind a key, or None if it is unknown or revoked."""
        key_hash = models.hash_key(plaintext)
        now = time.monotonic()
        entry = self.entries.get(key_hash)
        if entry is not None and entry.expires > now:
            return entry.identity
        # Before the database, never after: see the class's docstring.
        epoch = self.epoch()
        try:
            with models.database.connection_context():
                key = models.ApiKey.find(plaintext)
        except (peewee.PeeweeException, OSError) as error:
            # Keep accepting known keys through a database outage (the records
            # wait in the queue, not in the database). Ask the database again
            # once per TTL, not on every request.
            identity = self.last_lookup(key_hash, entry, epoch)
            if identity is None:
                logger.error("database unavailable, cannot check a key: %s", error)
                raise APIError(503, "the database is unavailable, so the key cannot be checked;"
                               " retry later", headers={"Retry-After": str(self.retry_after)}) from None
            logger.warning("database unavailable (%s); trusting the last lookup of a key for %g s more",
                           error, self.ttl)
            self.remember(key_hash, now, identity, epoch)
            return identity
        identity = None
        if key is not None:
            project = key.project
            identity = (project.id, project.is_active, project.writers(default_writers),
                        project.rate_limit, key.scope, project.retention_days)
            if epoch is not None:
                self.share(key_hash, identity, epoch)
        self.remember(key_hash, now, identity, epoch)
        return identity

    def last_lookup(self, key_hash, entry, epoch):
        """The identity a lookup in this epoch found, this process's else a shared one; None if there is none."""
        if epoch is None:
            # Without the current epoch no earlier lookup can be told current.
            return None
        if entry is not None and entry.epoch == epoch:
            # This process's own lookup, even one that found no key: shared
            # lookups of a key that is revoked now may be as recent.
            return entry.identity
        return self.recall(key_hash, epoch)

    def remember(self, key_hash, now, identity, epoch):
        """Trust this identity of a key, looked up in this epoch, for ttl seconds from now."""
        with self.lock:
            if len(self.entries) >= self.max_entries:
                # Unknown keys are cached too, so a flood of them cannot reach
                # the database; clearing bounds the memory they take.
                self.entries.clear()
            self.entries[key_hash] = self.Entry(now + self.ttl, identity, epoch)

    @staticmethod
    def epoch():
        """The spool's key epoch, or None when the spool cannot say."""
        try:
            return tasks.runtime.spool.epoch(spool.KEY_EPOCH)
        except SpoolUnavailable as error:
            logger.debug("could not read the key epoch: %s", error)
            return None

    @staticmethod
    def memo_name(key_hash, epoch):
        """Where a lookup of this epoch is shared: a new epoch's lookups are found under new names only."""
        # Epoch 0 keeps the name lookups had before epochs, so those stay readable until the first change.
        return key_hash if epoch == 0 else "%s:%d" % (key_hash, epoch)

    @classmethod
    def share(cls, key_hash, identity, epoch):
        """Leave a key's identity where every web process finds it during a database outage."""
        try:
            tasks.runtime.spool.remember(cls.memo_name(key_hash, epoch), orjson.dumps(identity),
                                         KNOWN_KEY_SECONDS)
        except SpoolUnavailable as error:
            # Only the outage fallback is missing; the request itself goes on.
            logger.debug("could not share a key lookup: %s", error)

    @classmethod
    def recall(cls, key_hash, epoch):
        """A key's identity as a web process last shared it in this epoch, or None."""
        try:
            shared = tasks.runtime.spool.recall(cls.memo_name(key_hash, epoch))
        except SpoolUnavailable:
            return None
        if shared is None:
            return None
        # Lookups shared before keys had scopes were all ingest keys; before
        # retention was shared, the default retention applies.
        shared = orjson.loads(shared)
        project_id, is_active, writers, rate_limit, scope, retention = shared + [None, "ingest", None][len(shared) - 3:]
        return project_id, is_active, tuple(writers), rate_limit, scope, retention


# Every 401 of a key asks for HTTP Basic: urllib's HTTPBasicAuthHandler, and a browser, send
# credentials only once asked; curl -u, HTTPHandler and Logplex send them unasked.
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="LogFlow"'}


def authenticate(settings, scope="ingest"):
    """The (project id, writers, rate limit or None, retention days or None) of the request's key; 401, or 403 if it lacks the scope."""
    plaintext = request.headers.get("X-API-Key", "") or key_of_authorization(request.headers.get("Authorization", ""))
    if not plaintext:
        raise APIError(401, "an API key is required: send it as X-API-Key, Authorization: Bearer, or the password"
                       " of HTTP Basic (curl -u :KEY)", headers=BASIC_CHALLENGE)
    identity = None
    if len(plaintext) <= MAX_KEY_LENGTH:
        identity = current_app.extensions["logflow"]["keys"].identify(plaintext, settings.storage)
    if identity is None:
        raise APIError(401, "the API key is not valid", headers=BASIC_CHALLENGE)
    project_id, is_active, writers, rate_limit, key_scope, retention_days = identity
    if not is_active:
        raise APIError(403, "this project is deactivated")
    if key_scope != scope:
        raise APIError(403, "this key's scope is %s; %s %s needs a key with scope %s (manage.py"
                       " create-key --scope %s)" % (key_scope, request.method, request.path, scope, scope))
    return project_id, writers, rate_limit, retention_days


def key_of_authorization(value):
    """The key an Authorization header carries: a Bearer token, or Basic's password (any user name); "" if none."""
    scheme, _, credentials = value.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme != "basic":
        return ""
    try:
        user_and_password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        # Never the header itself in the answer: it holds the key.
        raise APIError(401, "the Authorization header's Basic credentials are not base64 of user:key",
                       headers=BASIC_CHALLENGE) from None
    return user_and_password.partition(":")[2]


def read_body(settings):
    """The request body, decompressed within the configured limits."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise APIError(415, "Content-Encoding %s is not supported; use gzip or deflate" % encoding[:32])
    data = receive(settings.body_timeout_seconds)
    if encoding == "identity":
        return data
    # 32 + MAX_WBITS reads both gzip and zlib headers; raw deflate is retried below.
    for wbits in (32 + zlib.MAX_WBITS, -zlib.MAX_WBITS):
        try:
            return inflate(data, wbits, settings.max_decoded_bytes)
        except zlib.error:
            if encoding != "deflate":
                break
    raise APIError(400, "the body is not valid %s data" % encoding)


def receive(timeout):
    """The raw body, read within `timeout` seconds in all; 408 for a client that sends too slowly.

    A web worker has few threads: a client trickling its body must not hold
    one for long. The Procfile's worker (server.py) gives a request a thread
    only once its body has arrived; with any other gunicorn worker, the body
    is read here. gunicorn's body reader loops over recv() until it has what
    it was asked for, so a socket timeout would bound each gap between bytes,
    not the whole body: body_deadlines stops the read instead.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        body_deadlines.watch(sock, time.monotonic() + timeout)
    chunks, received = [], 0
    # Stop at Content-Length: under gunicorn the stream is capped at the body limit, and one more
    # read of a body of exactly that size is refused as too large.
    expected = request.content_length
    failure = None
    try:
        while expected is None or received < expected:
            chunk = request.stream.read(1 << 16 if expected is None else min(1 << 16, expected - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    except (ClientDisconnected, gunicorn.http.errors.ParseException) as error:
        # Werkzeug reports a read that raised OSError (gunicorn's NoMoreData
        # for a chunked body cut short) as a disconnect; ParseException is
        # gunicorn's refusal of the chunked framing (a size that is not hex...).
        failure = error
    finally:
        timed_out = sock is not None and body_deadlines.release(sock)
    if timed_out:
        raise APIError(408, "the body did not arrive within %g seconds" % timeout)
    body = b"".join(chunks)
    if isinstance(failure, gunicorn.http.errors.ParseException):
        raise APIError(400, "the body's chunked framing is not valid: %s" % str(failure)[:200])
    if failure is not None or len(body) < (request.content_length or 0):
        raise APIError(400, "the connection closed before the whole body arrived")
    return body


class BodyDeadlines:
    """Sockets whose body is being read, with their deadlines; one thread per process stops reading those past it.

    Shutting a socket down for reading (SHUT_RD) ends a recv() blocked in
    another thread at once, with no data, and leaves the socket writable for
    the 408. The hot path is a lock and a dict entry; the thread checks the
    entries every `tick` seconds, so a 408 comes at most that late.
    """

    tick = 0.1

    def __init__(self):
        self.lock = threading.Lock()
        self.deadlines = {}  # socket -> deadline (time.monotonic()), None once it passed
        self.thread = None
        # A forked child has no thread of its parent's: it starts its own.
        os.register_at_fork(after_in_child=self.forget_thread)

    def forget_thread(self):
        self.thread = None
        self.lock = threading.Lock()
        self.deadlines = {}

    def watch(self, sock, deadline):
        """Shut sock down for reading if it is still watched at deadline."""
        with self.lock:
            self.deadlines[sock] = deadline
            if self.thread is None:
                self.thread = threading.Thread(target=self.run, name="body-deadlines", daemon=True)
                self.thread.start()

    def release(self, sock):
        """Stop watching sock; True if its deadline passed (reading from it was shut down)."""
        with self.lock:
            return self.deadlines.pop(sock, 0) is None

    def run(self):
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self.lock:
                # Under the lock: once release() returns, its socket is never shut down.
                for sock, deadline in self.deadlines.items():
                    if deadline is not None and deadline <= now:
                        self.deadlines[sock] = None
                        with contextlib.suppress(OSError):  # the client is gone already
                            sock.shutdown(socket.SHUT_RD)


body_deadlines = BodyDeadlines()


# Compressed input is fed to zlib this much at a time: what zlib copies into
# unused_data at the end of each gzip member is then this long at most, not the
# rest of the body (52,000 members in 1 MiB took 0.67 s when it was).
INFLATE_CHUNK = 1 << 16


def inflate(data, wbits, limit):
    """Decompress data, never holding more than limit bytes of output; 413 past it."""
    view, position, chunks, size = memoryview(data), 0, [], 0
    while position < len(data):
        decompressor = zlib.decompressobj(wbits)
        while not decompressor.eof:
            if position >= len(data):
                raise APIError(400, "the compressed body is truncated")
            compressed = view[position:position + INFLATE_CHUNK]
            position += len(compressed)
            chunk = decompressor.decompress(compressed, limit + 1 - size)
            size += len(chunk)
            chunks.append(chunk)
            if size > limit or decompressor.unconsumed_tail:
                raise APIError(413, "the body is larger than %d bytes once decompressed" % limit)
        # Concatenated gzip members are one stream to every gzip reader; raw deflate has one.
        position -= len(decompressor.unused_data)
        if wbits < 0:
            break
    return b"".join(chunks)


def oldest_day(settings, retention_days, received_at):
    """The first UTC day a record's timestamp may fall on (None: any): the past window, else the project's retention."""
    days = settings.past_window_days
    if days is None:
        days = models.Project.kept_days(retention_days, settings.retention_days)
    return tasks.retention_cutoff(days, received_at.date())


def limited_rate(settings, project_rate):
    """Records per second the project may send: its own limit, else the default; 0 is none."""
    return settings.rate_limit if project_rate is None else project_rate


def rate_limit_of(settings, project_id, project_rate):
    """The project's token bucket as a spool Limit, or None when it is unlimited."""
    rate = limited_rate(settings, project_rate)
    if rate <= 0:
        return None
    burst = settings.rate_burst or max(rate, settings.max_records)
    return spool.Limit("project:%d" % project_id, rate, burst)


@bp.post("/logs")
def ingest():
    """Accept a batch of log records; 202 once every accepted record is queued."""
    settings = current_app.extensions["logflow"]["settings"]
    identity = authenticate(settings)
    # Logplex's headers give its frames their ids (drains.logplex_records).
    raw_records = parse_request(settings, identity, functools.partial(drains.parse_body, headers=request.headers))
    warning = drains.msg_count_warning(request.content_type, request.headers, len(raw_records))
    summary = accept(settings, identity, raw_records)
    if warning:
        logger.warning("project %d: %s", identity[0], warning)
        summary["body_warning"] = warning
    return json_response(summary, 202)


def parse_request(settings, identity, parse):
    """parse(body, content type, settings) of the request's body; its refusals as APIError 415, 400 or 413."""
    try:
        return parse(read_body(settings), request.content_type, settings)
    except records.UnsupportedMediaType as error:
        raise APIError(415, str(error)) from None
    except records.InvalidBody as error:
        raise APIError(400, str(error)) from None
    except records.TooManyRecords as error:
        # Found while scanning: at least one more than the limit.
        count(rejected_records(identity[0], "too_many", settings.max_records + 1))
        raise APIError(413, str(error)) from None
    except RequestEntityTooLarge:
        raise too_large(settings) from None


@bp.post("/v1/logs")
def ingest_otlp():
    """Accept an OTLP/HTTP logs export, protobuf or JSON; 200 once queued, answered in the request's encoding."""
    settings = current_app.extensions["logflow"]["settings"]
    media_type = otlp.response_type(request.content_type)
    locations = []
    try:
        identity = authenticate(settings)
        raw_records, locations = parse_request(settings, identity, otlp.decode)
        # OTLP counts an empty export as a success; accept() refuses an empty request.
        summary = accept(settings, identity, raw_records) if raw_records else None
    except APIError as error:
        failure = error
    else:
        return current_app.response_class(otlp.encode_success(media_type, summary, locations),
                                          mimetype=media_type)
    if failure.counted:
        count_refusal(failure.reason)
    # No valid record is a request that can never succeed: OTLP's 400, which clients do not retry.
    status = 400 if failure.status == 422 else failure.status
    body = otlp.encode_failure(media_type, status, failure.message, failure.body, locations)
    return current_app.response_class(body, status=status, headers=failure.headers, mimetype=media_type)


def accept(settings, identity, raw_records):
    """Validate raw records and queue the valid ones for the project's writers; the 202 summary.

    Raises APIError when nothing can be accepted: 400/413 for the request as a
    whole, 422 when no record is valid, 429/503 when the queue refuses.
    """
    project_id, writers, rate_limit, retention_days = identity
    if not raw_records:
        raise APIError(400, "the body holds no records")

    received_at = models.utcnow()
    try:
        accepted, encoded, errors, warnings = records.normalize_many(
            raw_records, received_at, settings, oldest_day(settings, retention_days, received_at))
    except records.InvalidBody as error:
        # A record read only now, one at a time (records.Unread), was not valid JSON or protobuf.
        raise APIError(400, str(error)) from None
    errors = [{"index": index, "error": error} for index, error in errors]
    summary = {"accepted": accepted, "rejected": len(errors), "errors": errors}
    if warnings:
        summary["warnings"] = [{"index": index, "warning": note} for index, note in warnings]
    rejected = rejected_records(project_id, "invalid", len(errors))
    if not accepted:
        count(rejected)
        raise APIError(422, "no record in the request is valid", body=summary)

    payload = spool.encode(project_id, records.format_time(received_at), accepted, encoded)
    retry_after = {"Retry-After": str(settings.retry_after_seconds)}
    try:
        woken = tasks.runtime.spool.push(
            payload, writers, accepted, rate_limit_of(settings, project_id, rate_limit),
            [(metrics.counter("records_accepted", project=project_id), accepted)] + rejected)
    except OutcomeUnknown as error:
        # Sent, then the connection broke or timed out: Redis may have queued them (and replicated them).
        logger.error("queue's answer lost, %d records of project %d may be queued: %s", accepted, project_id, error)
        raise APIError(503, "the queue's answer was lost after the records were sent; they may still be stored:"
                       " retry later with the same record ids, which the database stores once",
                       headers=retry_after, counted=False) from None
    except SpoolUnavailable as error:
        logger.error("queue unavailable, refused %d records of project %d: %s",
                     accepted, project_id, error)
        raise APIError(503, "the queue is unavailable; nothing was accepted, retry later",
                       headers=retry_after, counted=False) from None
    except QueueFull:
        logger.warning("queue full, refused %d records of project %d", accepted, project_id)
        count(rejected + rejected_records(project_id, "queue_full", accepted))
        raise APIError(503, "the queue is full; nothing was accepted, retry later",
                       headers=retry_after) from None
    except RateLimited as limited:
        count(rejected + rejected_records(project_id, "rate_limited", accepted))
        raise APIError(429, "this project sends more than its %d records per second; nothing was"
                       " accepted, retry later" % limited_rate(settings, rate_limit),
                       headers={"Retry-After": str(math.ceil(limited.retry_after))}) from None
    except NotReplicated as unconfirmed:
        # Queued on the primary, but a failover now could lose them: no 202. A resend with the
        # same ids is stored once in the database (as twice-written lines in the daily files).
        logger.warning("project %d: %s within %g s; answered 503", project_id, unconfirmed,
                       settings.redis_replicas_timeout_seconds)
        wake(unconfirmed.woken)
        raise APIError(503, "the records were queued, but %d of the %d Redis replicas asked for confirmed them"
                       " within %g s; they may still be stored: retry later with the same record ids, which"
                       " the database stores once" % (unconfirmed.confirmed, unconfirmed.wanted,
                                                      settings.redis_replicas_timeout_seconds),
                       headers=retry_after, reason="not_replicated") from None
    wake(woken)
    return summary


def wake(woken):
    """Have a consumer drain each of these (writer, shard) queues, which were idle."""
    for writer, shard in woken:
        try:
            tasks.drain(writer, woken=True, **tasks.of_shard(shard))
        except Exception:
            # The records are safe in the spool; the consumer's sweep finds them.
            logger.exception("could not wake the %s writer; its sweep will pick the records up", writer)


def reader(settings):
    """The project a read is for, and the read's own parameters.

    The project of the request's read key; or, for a person signed in to the
    viewer (whose pages read through these very routes), the one the
    `project` parameter names (name or id), if they may read it: 404 alike
    for an unknown project and another's. A session never authorizes a write.
    """
    pairs = request.args.items(multi=True)
    if "X-API-Key" in request.headers or "Authorization" in request.headers or "project" not in request.args:
        return authenticate(settings, scope="read")[0], pairs
    with models.database.connection_context():
        user = signin.signed_in_user()
        if user is None:
            raise APIError(401, "project is read by people signed in to the viewer; a script sends a read key"
                                " (X-API-Key or Authorization: Bearer) instead")
        name = request.args["project"]
        project = models.Project.lookup(name)
        if project is None or not user.may_read(project):
            raise APIError(404, "there is no project %r that you may read" % name[:100])
    # Logs shown to one person: no cache keeps them.
    g.personal = True
    return project.id, [(name, value) for name, value in pairs if name != "project"]


@bp.after_request
def personal_answers(response):
    if g.get("personal"):
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    return response


@bp.get("/logs")
def list_logs():
    """A page of the project's stored logs, newest first, filtered by the query parameters."""
    settings = current_app.extensions["logflow"]["settings"]
    project_id, pairs = reader(settings)
    with reading():
        logs, next_cursor = query.page(project_id, query.parse_filter(pairs), settings.max_page_bytes)
    return json_response({"logs": logs, "next_cursor": next_cursor}, 200)


@bp.get("/logs/<log_id>")
def get_log(log_id):
    """One stored log of the project, by id."""
    project_id, _ = reader(current_app.extensions["logflow"]["settings"])
    with reading():
        log = query.find_log(project_id, log_id)
    if log is None:
        raise APIError(404, "this project has no stored log with id %s" % log_id[:64])
    return json_response(log, 200)


@bp.get("/logs/histogram")
def log_histogram():
    """Counts per level of the project's logs the filters match, per time bucket (the last day by default)."""
    project_id, pairs = reader(current_app.extensions["logflow"]["settings"])
    with reading():
        log_filter, _ = query.parse_only(pairs)
        answer = query.histogram(project_id, log_filter, models.utcnow())
    return json_response(answer, 200)


# Live polls a web process answers at once. Under a flood a poll costs tens of ms of CPU (the
# logs it renders, for each viewer); one at a time leaves the other threads to POST /logs, and
# the viewers that wait ask again a second later, taking more logs each time.
LIVE_POLLS_AT_ONCE = 1
live_polls = threading.BoundedSemaphore(LIVE_POLLS_AT_ONCE)


@bp.get("/logs/live")
def live_logs():
    """The logs the filters match that were stored after the cursor, in the order stored: what a live view polls.

    Without a cursor, no logs and the cursor of now: read the page first, then
    poll from that cursor, and drop any log already shown.
    """
    settings = current_app.extensions["logflow"]["settings"]
    project_id, pairs = reader(settings)
    try:
        # The primary's: the feed lists what the primary committed, and a replica not there yet would have
        # the cursor pass those logs for good. Rows by id, read through the primary key, cost it little.
        with reading(stored_logs=False):
            log_filter, given = query.parse_only(pairs, ("cursor",))
            if "cursor" not in given:
                return json_response({"logs": [], "cursor": tasks.runtime.spool.feed_end(project_id) + ":0",
                                      "more": False, "gap": False}, 200)
            feed = functools.partial(tasks.runtime.spool.feed, project_id)
            if not live_polls.acquire(blocking=False):
                # Not counted in /metrics: a busy moment, not a refused client.
                raise APIError(429, "this web process is answering another live poll; ask again in a second",
                               headers={"Retry-After": "1"}, counted=False)
            try:
                rows, cursor, more, gap = query.live(project_id, log_filter, feed, given["cursor"],
                                                     settings.max_page_bytes)
                # Rendered under the same turn: turning rows into JSON is much of a flood's cost.
                return json_response({"logs": [query.render(row) for row in rows], "cursor": cursor,
                                      "more": more, "gap": gap}, 200)
            finally:
                live_polls.release()
    except SpoolUnavailable as error:
        logger.error("the live feed is unavailable: %s", error)
        raise APIError(503, "the live feed is unavailable; retry later", headers={
            "Retry-After": str(settings.retry_after_seconds)}) from None


@bp.get("/logs/<log_id>/context")
def log_context(log_id):
    """One stored log of the project and the logs the filters match just before and after it."""
    settings = current_app.extensions["logflow"]["settings"]
    project_id, pairs = reader(settings)
    with reading():
        log_filter, given = query.parse_only(pairs, ("before", "after"))
        before, after = (query.parse_count(name, given, query.DEFAULT_CONTEXT, query.MAX_CONTEXT)
                         for name in ("before", "after"))
        answer = query.context(project_id, log_id, log_filter, before, after, settings.max_page_bytes)
    if answer is None:
        raise APIError(404, "this project has no stored log with id %s" % log_id[:64])
    return json_response(answer, 200)


@contextlib.contextmanager
def reading(stored_logs=True):
    """A read's transaction, time-limited; 400 for a bad parameter, 422 past the limit, 503 when the database is down.

    Reads of stored logs go to the read replica when there is one (a replica
    down is a 503 too: falling back would put the load it carries on the
    primary that ingestion writes to); other reads stay on the primary.
    """
    settings = current_app.extensions["logflow"]["settings"]
    replica = models.using_replica() if stored_logs else contextlib.nullcontext()
    try:
        with replica, models.database.connection_context(), query.time_limited(settings.read_timeout_seconds):
            yield
    except query.InvalidQuery as error:
        raise APIError(400, str(error)) from None
    except (peewee.OperationalError, peewee.InterfaceError) as error:
        if query.timed_out(error):
            # The same read would time out again: the client must ask for less, not retry.
            raise APIError(422, "the read ran longer than %g s and was cancelled; narrow it with since and until"
                           % settings.read_timeout_seconds, reason="read_timeout") from None
        if not (query.unreachable(error) or query.recovery_conflict(error)):
            # The database answered: the statement failed and would fail again, so a 500, logged with the request.
            error.add_note("while reading %s" % request.full_path[:1000])
            raise
        logger.error("database unavailable for a read: %s", error)
        raise APIError(503, "the database is unavailable; retry later", headers={
            "Retry-After": str(settings.retry_after_seconds)}) from None


# A saved search's JSON body is a name and a query string: far below any log batch.
MAX_SEARCH_BODY_BYTES = 16 * 1024


def search_as_json(search):
    """A saved search as the API shows it, with its alert's name and state if it has one."""
    rule = search.rules.first()
    return {"name": search.name, "query": search.query, "created_at": records.format_time(search.created_at),
            "alert": None if rule is None else {"rule": alerts.describe(rule), "channel": rule.channel,
                                                "state": rule.state}}


@bp.get("/searches")
def list_searches():
    """The project's saved searches, by name."""
    project_id, _ = reader(current_app.extensions["logflow"]["settings"])
    with reading(stored_logs=False):
        searches = models.SavedSearch.select().where(models.SavedSearch.project == project_id)
        return json_response({"searches": [search_as_json(search) for search in
                                           searches.order_by(models.SavedSearch.name)]}, 200)


@bp.post("/searches")
def save_search():
    """Save a search of the project: {"name": ..., "query": "level=ERROR&q=timeout"}."""
    project_id = authenticate(current_app.extensions["logflow"]["settings"], scope="read")[0]
    if (request.content_length or 0) > MAX_SEARCH_BODY_BYTES:
        raise APIError(413, "a saved search's body is at most %d bytes" % MAX_SEARCH_BODY_BYTES)
    try:
        given = orjson.loads(request.get_data())
    except orjson.JSONDecodeError:
        raise APIError(400, "the body is not valid JSON; send {\"name\": ..., \"query\": ...}") from None
    if not (isinstance(given, dict) and isinstance(given.get("name"), str)
            and isinstance(given.get("query", ""), str)):
        raise APIError(400, "send {\"name\": \"...\", \"query\": \"level=ERROR&q=...\"}: name and query are strings")
    with reading(stored_logs=False):
        try:
            search = alerts.save_search(models.Project.get_by_id(project_id), given["name"], given.get("query", ""))
        except alerts.AlertError as error:
            raise APIError(409 if isinstance(error, alerts.NameTaken) else 400, str(error)) from None
        return json_response(search_as_json(search), 201)


@bp.delete("/searches/<name>")
def delete_search(name):
    """Delete a saved search of the project, and its alert if it has one."""
    project_id = authenticate(current_app.extensions["logflow"]["settings"], scope="read")[0]
    with reading(stored_logs=False):
        search = alerts.find_search(project_id, name)
        if search is None:
            raise APIError(404, "this project has no saved search named %r" % name[:100])
        search.delete_instance(recursive=True)
    return current_app.response_class(status=204)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return current_app.response_class(OPENAPI_PATH.read_bytes(), mimetype="application/json")


@bp.get("/metrics")
def prometheus_metrics():
    """Counters and gauges of every LogFlow process, in Prometheus text format."""
    try:
        page = metrics.render(tasks.runtime.spool, config.WRITERS, quarantined_records())
    except SpoolUnavailable as error:
        raise APIError(503, "metrics are unavailable: %s" % error, counted=False, headers={
            "Retry-After": str(current_app.extensions["logflow"]["settings"].retry_after_seconds)}) from None
    # content_type, not mimetype: Flask would add a second "; charset=utf-8".
    return current_app.response_class(page, content_type="text/plain; version=0.0.4; charset=utf-8")


def quarantined_records():
    """{writer: records in quarantine}, or None while the database does not answer: the spool's metrics still do."""
    try:
        with models.database.connection_context():
            return models.Quarantined.count_by_writer()
    except (peewee.PeeweeException, OSError) as error:
        logger.warning("metrics without the quarantine count: %s", error)
        return None


@bp.get("/")
def home():
    """People start at the viewer."""
    return redirect(url_for("viewer.index"))


@bp.get("/healthz")
def healthz():
    """200 while the process serves requests."""
    return json_response({"status": "ok"}, 200)


@bp.get("/readyz")
def readyz():
    """200 when the database and the queue answer; 503 naming what failed."""
    failures = {}
    try:
        with models.database.connection_context():
            models.database.execute_sql("SELECT 1")
    except (peewee.PeeweeException, OSError) as error:
        failures["database"] = str(error).strip() or type(error).__name__
    try:
        tasks.runtime.spool.ping()
    except SpoolUnavailable as error:
        failures["queue"] = str(error)
    if failures:
        logger.warning("not ready: %s", failures)
        return json_response({"error": "not ready: " + ", ".join(sorted(failures)), "failures": failures}, 503,
                             {"Retry-After": str(current_app.extensions["logflow"]["settings"].retry_after_seconds)})
    return json_response({"status": "ready"}, 200)

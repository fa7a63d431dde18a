"""The ceiling for POST /logs: a Flask app that parses the body as LogFlow does and answers 202.

Served by the Procfile's web line with only the app changed (`bench.hello:app`,
bench/web.py), so the gap between the two is what LogFlow's work per request costs. POST
/queued/logs adds one Redis LPUSH of the body: the ceiling for any service
that answers 202 only once a request is queued outside its own process.
"""
import os

import orjson
import redis
from flask import Flask, request

app = Flask(__name__)
# The durable ceiling's queue: the benchmark's Redis (REDIS_URL), as LogFlow uses it.
queue = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


@app.post("/logs")
def logs():
    """Parse the JSON body with orjson, as LogFlow does, and say how many records it held."""
    return accepted(request.get_data())


@app.post("/queued/logs")
def queued_logs():
    """The same, plus the least any durable 202 needs: one round trip that queues the body in Redis."""
    body = request.get_data()
    response = accepted(body)
    queue.lpush("hello:queue", body)
    return response


def accepted(body):
    """The 202 of a JSON body, counting its records as LogFlow's answer does."""
    parsed = orjson.loads(body)
    count = len(parsed) if isinstance(parsed, list) else 1
    return app.response_class(orjson.dumps({"accepted": count, "rejected": 0, "errors": []}),
                              status=202, mimetype="application/json")


@app.get("/healthz")
def healthz():
    """200 while the process serves; the benchmark waits for it, and exact.lua uses it as a no-op."""
    return app.response_class(b'{"status":"ok"}', status=200, mimetype="application/json")

"""The ceiling for POST /logs: a Flask app that parses the body as LogFlow does and answers 202.

Served by gunicorn with LogFlow's own flags (`--chdir bench 'hello:app'`), so
the gap between the two is what LogFlow's work per request costs.
"""
import orjson
from flask import Flask, request

app = Flask(__name__)


@app.post("/logs")
def logs():
    """Parse the JSON body with orjson, as LogFlow does, and say how many records it held."""
    body = orjson.loads(request.get_data())
    count = len(body) if isinstance(body, list) else 1
    return app.response_class(orjson.dumps({"accepted": count, "rejected": 0, "errors": []}),
                              status=202, mimetype="application/json")


@app.get("/healthz")
def healthz():
    """200 while the process serves; the benchmark waits for it, and exact.lua uses it as a no-op."""
    return app.response_class(b'{"status":"ok"}', status=200, mimetype="application/json")

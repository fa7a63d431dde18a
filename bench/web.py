"""The Procfile's web line, for the benchmarks: LogFlow's gunicorn as production starts it, through sh as honcho does.

The line is read, not copied (tests/processes.py reads it the same way), so a
benchmark measures the worker class and flags production runs; the ceilings
(bench/hello.py) run under the same line with only the app changed, so that
the ratios compare applications, not servers. Extra flags are appended:
gunicorn's last flag wins.
"""
import os
import re
import shlex
import subprocess
import sys

from gunicorn.config import Config

from processes import procfile_command  # tests/processes.py

# The line's first two words: the gunicorn command, then the WSGI app (quoted or not).
LINE = re.compile(r"^(?P<gunicorn>\S+)\s+(?P<app>'[^']*'|\"[^\"]*\"|\S+)(?P<flags>.*)$")


def command(app=None, extra_args=()):
    """The web line as sh source, serving `app` (e.g. "bench.hello:app") instead of LogFlow, with extra_args appended."""
    line = LINE.match(procfile_command("web"))
    if line is None:
        raise ValueError("the Procfile's web line is not `gunicorn APP FLAGS...`")
    served = shlex.quote(app) if app else line["app"]
    return " ".join([line["gunicorn"], served + line["flags"]] + [shlex.quote(arg) for arg in extra_args])


def argv(app=None, extra_args=()):
    """The argv that runs the line: sh expands its ${...}; exec makes the pid started gunicorn's master."""
    return ["sh", "-c", "exec " + command(app, extra_args)]


def environment(env, port):
    """env plus what the line needs: LOGFLOW_BIND on 127.0.0.1:port, this interpreter's gunicorn first on PATH."""
    return dict(env, LOGFLOW_BIND="127.0.0.1:%d" % port,
                PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", os.defpath))


def settings(env, app=None, extra_args=()):
    """gunicorn's configuration from the line as sh expands it in env (.worker_class_str, .workers, .threads...)."""
    # `set --` expands the words as `exec` would; printf hands them back NUL-separated.
    script = 'set -- %s; printf "%%s\\0" "$@"' % command(app, extra_args)
    words = subprocess.run(["sh", "-c", script], env=environment(env, 0), check=True,
                           capture_output=True, text=True).stdout.split("\0")[:-1]
    config = Config()
    parsed = config.parser().parse_args(words[1:])
    for name, value in vars(parsed).items():
        if value is not None and name != "args":  # as gunicorn's own application loader does
            config.set(name.lower(), value)
    return config


def describe(config):
    """One line for a report: worker class, workers x threads, and worker connections."""
    return "%s, %d workers x %d threads, --worker-connections %d" % (
        config.worker_class_str, config.workers, config.threads, config.worker_connections)

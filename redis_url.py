"""REDIS_URL's forms, and the one client each of them connects: connect(url) is the only way in.

redis://, rediss:// (TLS) and unix:// go to redis-py's from_url as they are.
The Sentinel form names the sentinels, then the primary's service name:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]
    rediss+sentinel://...  (the same over TLS, to the sentinels and to the data nodes)

The user and password before the @ are the data nodes' (their requirepass or
ACL user); sentinels with a password of their own take it from the query's
sentinel_password (and sentinel_username). A port defaults to 26379, db to 0.
Other query parameters mean what they mean in a redis:// URL (ssl_ca_certs,
socket_timeout...) and apply to the data nodes; the socket_* and ssl_* ones
to the sentinels as well. Reserved characters in a password are
percent-encoded, as in any URL: an @ after a / ? or # is refused, without
showing any of the URL.

The client asks the sentinels for the primary's address each time it opens
a connection (redis-py's SentinelConnectionPool), so every user of it (the
spool, Huey's queue and its blocking BRPOP, the counters, the heartbeats)
follows the primary through a failover without a restart: connections to a
dead primary fail and are opened again, and one still open to a demoted
primary is closed on its first READONLY answer, which redis-py turns into a
ConnectionError.

The Cluster form lists nodes to ask for the cluster's map first:

    redis+cluster://[user:password@]host1:port1[,host2:port2...][/][?options]
    rediss+cluster://...  (TLS)

Any reachable node tells the client about the others; the options are
redis-py's URL options, as for one Redis. A cluster has database 0 only.
"""
import collections
import threading
import urllib.parse

import redis
import redis.backoff
import redis.connection
import redis.retry
import redis.sentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
# REDIS_URL's schemes for a Redis Cluster, and the scheme of the same URL for one of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SENTINEL_PORT = 26379
FORM = "redis+sentinel://[:password@]host:26379[,host:26379...]/service[/db]"

SentinelForm = collections.namedtuple("SentinelForm", "sentinels service options sentinel_options")


def connect(url, **options):
    """A redis-py client of the Redis the URL names (for Sentinel: of its current primary; a ClusterClient
    for a cluster); connects lazily.

    `options` are redis-py connection arguments (socket_timeout...); the URL's query wins over them.
    """
    scheme = url.partition("://")[0]
    if scheme in CLUSTER_SCHEMES:
        first, more_nodes = parse_cluster(url)
        # RedisCluster's nodes check their connections themselves: no health_check_interval.
        return ClusterClient(first, more_nodes, {name: value for name, value in options.items()
                                                 if name != "health_check_interval"})
    if scheme not in SENTINEL_SCHEMES:
        return redis.Redis.from_url(url, **options)
    form = parse_sentinel(url)
    sentinel_options = {name: value for name, value in options.items() if name.startswith("socket_")}
    # A sentinel that does not answer is skipped for the next one at once: redis-py's default for a
    # client of its own retries 10 times with backoff, about 4 s per dead sentinel on each new connection.
    sentinel_options["retry"] = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    sentinel_options.update(form.sentinel_options)
    sentinel = redis.sentinel.Sentinel(form.sentinels, sentinel_kwargs=sentinel_options)
    return sentinel.master_for(form.service, **dict(options, **form.options))


def check(url):
    """The URL if connect() can read it; else ValueError in one line, without the URL's password."""
    scheme = url.partition("://")[0]
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel(url)
    elif scheme in CLUSTER_SCHEMES:
        parse_cluster(url)
    return url


def parse_cluster(url):
    """A Cluster URL as (the first node's own redis:// URL with the credentials and options, [(host, port)] of the others)."""
    scheme, _, rest = url.partition("://")
    parts = urllib.parse.urlsplit("//" + rest)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: end REDIS_URL with / or nothing")
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not (colon and host and port.isdigit()):
            raise ValueError("REDIS_URL's cluster nodes must each be host:port, not %r" % address[:100])
        nodes.append((host.strip("[]"), int(port)))
    # The first node in a URL of its own carries the credentials and options; the others are more ways in.
    first = "%s://%s%s%s/%s" % (CLUSTER_SCHEMES[scheme], credentials, at, hosts.split(",")[0],
                                "?" + parts.query if parts.query else "")
    return first, nodes[1:]


class ClusterClient:
    """A redis.cluster.RedisCluster made on first use, and made again until one first contact succeeds.

    RedisCluster asks a node for the slot map as it is made: made in
    configure(), a web process could not start while the cluster is down,
    where one Redis's client connects on first use (the web then answers 503).
    Every other attribute is the RedisCluster's.
    """

    def __init__(self, url, more_nodes, options):
        self.url, self.more_nodes, self.options = url, more_nodes, options
        self._client = None
        self._lock = threading.Lock()

    def register_script(self, script):
        """A script object that connects on its first call (RedisCluster's would now)."""
        return Script(self, script)

    def get_encoder(self):
        """RedisCluster's encoder for its default options, to hash scripts before any connection."""
        return redis.connection.Encoder("utf-8", "strict", False)

    def __getattr__(self, name):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = RedisCluster(url=self.url, **self.options, startup_nodes=[
                        ClusterNode(host, port) for host, port in self.more_nodes])
        return getattr(self._client, name)


def parse_sentinel(url):
    """A Sentinel URL as a SentinelForm: [(host, port)], the service, the data nodes' and the sentinels' options."""
    scheme, _, rest = url.partition("://")
    if "@" in rest and min(rest.find(mark) % (len(rest) + 1) for mark in "/?#") < rest.rfind("@"):
        # An unencoded / ? or # in the password: splitting there would show the rest of it in an error.
        raise ValueError("reserved characters in the password must be percent-encoded: %s" % FORM)
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    credentials, at, hosts = location.rpartition("@")
    sentinels = [sentinel_address(host) for host in hosts.split(",")]
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("a Sentinel URL names the primary's service after its hosts: %s" % FORM)
    if db and not db.isdigit():
        raise ValueError("the database after the service name must be a number (the 0 of /mymaster/0),"
                         " not %r" % db[:20])
    parameters = urllib.parse.parse_qs(query, keep_blank_values=True)
    sentinel_options = {"password": parameters.pop("sentinel_password", [None])[-1],
                        "username": parameters.pop("sentinel_username", [None])[-1]}
    # The data nodes' options as redis-py reads them from a plain URL of the same credentials, db and query.
    tls = scheme == "rediss+sentinel"
    plain = "%s://%s%shost/%s?%s" % ("rediss" if tls else "redis", credentials, at, db or "0",
                                      urllib.parse.urlencode(parameters, doseq=True))
    options = redis.connection.parse_url(plain)
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    if tls:
        # SentinelConnectionPool picks its TLS connection class from this flag.
        options["ssl"] = True
    sentinel_options.update((name, value) for name, value in options.items()
                            if name.startswith(("socket_", "ssl")))
    return SentinelForm(sentinels, urllib.parse.unquote(service), options,
                        {name: value for name, value in sentinel_options.items() if value is not None})


def sentinel_address(text):
    """One sentinel's "host[:port]" (an IPv6 address in brackets) as (host, port)."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else (port or None)
        if not bracket:
            host = ""
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError("a Sentinel URL lists its sentinels as host:port, separated by commas: %s" % FORM)
    # Percent-encoded, as an IPv6 zone id (fe80::1%25eth0).
    host = urllib.parse.unquote(host)
    if port is None or port == "":
        return host, SENTINEL_PORT
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("sentinel %s's port must be a number from 1 to 65535, not %r" % (host[:100], port[:20]))
    return host, int(port)

"""Alert channels: what a notification looks like on each, and one attempt to deliver it.

A notification's body is the JSON built when alerts.py decided to send it;
each channel renders that same body, so every retry sends the same thing.
Outgoing requests go only to the address checked (no redirects followed, a
deadline on each attempt), so a rule cannot be used to reach LogFlow's own
network: see public_address.
"""
import email.message
import email.utils
import hashlib
import hmac
import html
import http.client
import ipaddress
import smtplib
import socket
import ssl
import time
import urllib.parse

import orjson

CHANNELS = ("webhook", "slack", "email")
# Bytes of a receiver's answer kept for the rule's last error.
ANSWER_BYTES = 300
USER_AGENT = "LogFlow-Alerts/1"


class Refused(Exception):
    """The channel's target is not one LogFlow will send to (bad form, or a private address)."""


class DeliveryFailed(Exception):
    """One attempt failed; `retry` says whether another may succeed, `retry_after` when (seconds) if the receiver said."""

    def __init__(self, message, retry=True, retry_after=None):
        super().__init__(message)
        self.retry, self.retry_after = retry, retry_after


def check_target(channel, target, allow_private):
    """Refuse a target that cannot be sent to, by its form or where its name leads now: raise Refused saying why."""
    if channel not in CHANNELS:
        raise Refused("the channel must be one of %s, not %r" % (", ".join(CHANNELS), channel))
    if channel == "email":
        name, address = email.utils.parseaddr(target)
        if "@" not in address or address != target.strip() or any(c in address for c in "\r\n"):
            raise Refused("%r is not an email address" % target[:100])
        return
    parts = urllib.parse.urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("%r is not an http:// or https:// URL" % target[:100])
    if parts.username or parts.password:
        raise Refused("the URL must not hold a user or password: a webhook is authenticated by its signature")
    try:
        public_address(parts.hostname, parts.port or 443, allow_private)
    except DeliveryFailed as error:
        raise Refused(str(error)) from None


def public_address(host, port, allow_private):
    """The address to connect to for host: its first, once none of them is loopback or link-local.

    Checked at each attempt, on the addresses the name resolves to then, so
    that a name re-pointed at 127.0.0.1 or 169.254.169.254 (cloud metadata)
    after the rule was added is still refused.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise DeliveryFailed("cannot resolve %s: %s" % (host, error)) from None
    addresses = [info[4][0] for info in found]
    if not allow_private:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            address = getattr(address, "ipv4_mapped", None) or address
            if (address.is_loopback or address.is_link_local or address.is_unspecified
                    or address.is_multicast or address.is_reserved):
                raise Refused("%s resolves to %s, a loopback or link-local address; LogFlow does not send"
                              " alerts there unless LOGFLOW_ALLOW_PRIVATE_WEBHOOKS=1" % (host, text))
    return addresses[0]


def signature(secret, timestamp, body):
    """The X-LogFlow-Signature value: HMAC-SHA256 with the secret over "<timestamp>.<raw body>"."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address already checked, verifying the certificate of the name in the URL."""

    def __init__(self, address, hostname, port, timeout):
        super().__init__(hostname, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(url, body, headers, settings):
    """POST body to url once; returns the status, or raises DeliveryFailed."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = public_address(parts.hostname, port, settings.allow_private_webhooks)
    timeout = settings.notify_timeout_seconds
    if parts.scheme == "https":
        connection = PinnedHTTPSConnection(address, parts.hostname, port, timeout)
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    headers = dict(headers, Host=parts.netloc, **{"User-Agent": USER_AGENT, "Content-Type": "application/json"})
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(ANSWER_BYTES)
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryFailed("%s: %s" % (type(error).__name__, error) if str(error) else type(error).__name__) from None
    finally:
        connection.close()
    if 200 <= response.status < 300:
        return response.status
    said = answer.decode("utf-8", "replace").strip()
    message = "the receiver answered %d %s" % (response.status, said[:ANSWER_BYTES])
    if response.status == 429 or response.status >= 500:
        raise DeliveryFailed(message, retry_after=retry_after(response.getheader("Retry-After")))
    if 300 <= response.status < 400:
        message += " (redirects are not followed; give the final URL)"
    raise DeliveryFailed(message, retry=False)


def retry_after(value):
    """Seconds a Retry-After header asks for (a number of seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return int(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def send(rule, notification_id, body, settings):
    """Deliver one notification (its stored JSON body) on the rule's channel, once; raises DeliveryFailed or Refused."""
    if rule.channel == "webhook":
        timestamp = int(time.time())
        post(rule.target, body, {"X-LogFlow-Timestamp": str(timestamp),
                                 "X-LogFlow-Signature": signature(rule.secret, timestamp, body),
                                 "X-LogFlow-Delivery": notification_id}, settings)
    elif rule.channel == "slack":
        post(rule.target, orjson.dumps({"text": slack_text(orjson.loads(body))}), {}, settings)
    elif rule.channel == "email":
        send_email(rule.target, orjson.loads(body), settings)
    else:
        raise Refused("unknown channel %r" % rule.channel)


def headline(payload):
    """One line: what happened, to which alert of which project."""
    if payload["state"] == "test":
        return "Test of alert %s (%s): this channel works" % (payload["alert"], payload["project"])
    counted = "%d%s matching log%s in %d minutes" % (
        payload["count"], " or more" if payload.get("count_capped") else "",
        "" if payload["count"] == 1 and not payload.get("count_capped") else "s", payload["window_minutes"])
    return "%s: alert %s (%s): %s" % (payload["state"].upper(), payload["alert"], payload["project"], counted)


def sample_lines(payload):
    """The samples as short text lines: time, level, the message's first 200 characters."""
    return ["%s %s %s" % (log["timestamp"], log["level"], log["message"][:200].replace("\n", " "))
            for log in payload["samples"]]


def slack_escape(text):
    """Text for a Slack message: &, < and > escaped, so log content cannot form links or mentions."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(payload):
    """A Slack-compatible message: the headline, the rule, the samples and the link."""
    lines = ["*%s*" % slack_escape(headline(payload)), slack_escape(payload["rule"])]
    lines += ["`%s`" % slack_escape(line.replace("`", "'")) for line in sample_lines(payload)]
    lines.append("<%s|Open these logs in LogFlow>" % payload["url"].replace("|", "%7C").replace(">", "%3E"))
    return "\n".join(lines)


def send_email(address, payload, settings):
    """Send the notification by SMTP (LOGFLOW_SMTP_URL), plain text with an HTML alternative."""
    if not settings.smtp_url:
        raise DeliveryFailed("LOGFLOW_SMTP_URL is not set", retry=True)
    parts = urllib.parse.urlsplit(settings.smtp_url)
    message = email.message.EmailMessage()
    message["Subject"] = headline(payload)
    message["From"] = settings.smtp_from
    message["To"] = address
    message["Message-ID"] = "<%s@logflow>" % payload["id"]
    text = "\n".join([headline(payload), payload["rule"], ""] + sample_lines(payload) + ["", payload["url"]])
    message.set_content(text)
    items = "".join("<li><code>%s</code></li>" % html.escape(line) for line in sample_lines(payload))
    message.add_alternative("<p><strong>%s</strong></p><p>%s</p><ul>%s</ul><p><a href=\"%s\">Open these logs"
                            " in LogFlow</a></p>" % (html.escape(headline(payload)), html.escape(payload["rule"]),
                                                     items, html.escape(payload["url"])), subtype="html")
    timeout = settings.notify_timeout_seconds
    port = parts.port or (465 if parts.scheme == "smtps" else 587)
    try:
        if parts.scheme == "smtps":
            client = smtplib.SMTP_SSL(parts.hostname, port, timeout=timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(parts.hostname, port, timeout=timeout)
        with client:
            if parts.scheme == "smtp":
                client.ehlo()
                if client.has_extn("starttls"):
                    client.starttls(context=ssl.create_default_context())
                    client.ehlo()
                elif parts.password:
                    raise DeliveryFailed("%s offers no STARTTLS; LogFlow will not send the SMTP password in clear"
                                         % parts.hostname, retry=False)
            if parts.username:
                client.login(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
            client.send_message(message)
    except smtplib.SMTPResponseException as error:
        raise DeliveryFailed("the SMTP server answered %d %s" % (error.smtp_code, error.smtp_error[:200]),
                             retry=error.smtp_code >= 400 and error.smtp_code < 500) from None
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryFailed("SMTP: %s: %s" % (type(error).__name__, error)) from None

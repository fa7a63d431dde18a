"""Where the records are in a request body, found by a cheap scan of its wire format, without building them.

A 10 KB gzip can hold millions of tiny JSON values or protobuf messages;
built all at once they cost a web worker gigabytes before any limit is
checked. These scans count records and measure each one's bytes first, so
a request over the record limit is refused while it is scanned, a record
too large as sent is refused unread, and the others are read one at a time.
Pure functions, no I/O: spans are (start, end) offsets into the body.
"""
import re

# JSON: runs of anything but strings and brackets; a string; containers
# nested up to CONTAINER_DEPTH levels, each matched in C by one regular
# expression (possessive, so it never backtracks). Deeper than any record
# LogFlow can store: orjson writes no deeper than 254 levels. A value nested
# deeper makes the body unreadable, as one deeper than orjson reads (1,024)
# always did. Counting such values bracket by bracket in Python cost a step
# per byte: 10 s for a 10 KB gzip of nested brackets.
FLAT = rb"[^\"\[\]{}]++"
STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
CONTAINER_DEPTH = 256


def _containers(levels):
    pattern = rb"[\[{](?:" + FLAT + b"|" + STRING + rb")*+[\]}]"
    for _ in range(levels - 1):
        pattern = rb"[\[{](?:" + FLAT + b"|" + STRING + b"|" + pattern + rb")*+[\]}]"
    return pattern


CONTAINER_PATTERN = _containers(CONTAINER_DEPTH)
CONTAINER = re.compile(CONTAINER_PATTERN, re.S)
STRING_VALUE = re.compile(STRING, re.S)
# Numbers, true, false, null (and garbage, which the JSON parser refuses later).
SCALAR = re.compile(rb"[^\s,:\[\]{}\"]+")
WHITESPACE = re.compile(rb"[ \t\r\n]*+")
NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")


class Unreadable(ValueError):
    """The body's structure is broken: truncated, unbalanced, or not the format it claims."""


class TooMany(ValueError):
    """The body holds more records, or more entries around them, than a request may."""


def skip_whitespace(data, position):
    """The position of the first byte at or after position that is not JSON whitespace."""
    return WHITESPACE.match(data, position).end()


def value_end(data, start):
    """Where the JSON value starting at start ends; its syntax inside is left to the parser."""
    first = data[start:start + 1]
    if first == b'"':
        match = STRING_VALUE.match(data, start)
        if match is None:
            raise Unreadable("a string is not terminated")
        return match.end()
    if first not in (b"[", b"{"):
        match = SCALAR.match(data, start)
        if match is None:
            raise Unreadable("a value is missing at byte %d" % start)
        return match.end()
    match = CONTAINER.match(data, start)
    if match is None:
        raise Unreadable("the JSON is truncated, unbalanced or nested deeper than %d levels at byte %d"
                         % (CONTAINER_DEPTH, start))
    return match.end()


def array_spans(data, start, most):
    """The spans of the elements of the JSON array whose "[" is at start, and the position after its "]".

    Raises TooMany past `most` elements, as soon as it finds one more.
    """
    return array_items(data, start, most, lambda position: _span(data, position))


def _span(data, position):
    end = value_end(data, position)
    return (position, end), end


def array_items(data, start, most, read):
    """[value of read(position) for each element of the JSON array at start], and the position after its "]".

    read returns (value, end of the element); TooMany past `most` elements.
    """
    items = []
    position = skip_whitespace(data, start + 1)
    if data[position:position + 1] == b"]":
        return items, position + 1
    while True:
        if len(items) == most:
            raise TooMany(most)
        value, end = read(position)
        items.append(value)
        closed, position = _after_item(data, end, b"]")
        if closed:
            return items, position


def _after_item(data, position, close):
    """After an item of an array or object: (True, the position after close) at its end, else (False, the next item's)."""
    position = skip_whitespace(data, position)
    separator = data[position:position + 1]
    if separator == close:
        return True, position + 1
    if separator != b",":
        raise Unreadable("expected , or %s at byte %d" % (close.decode(), position))
    return False, skip_whitespace(data, position + 1)


def walk(data, start, shape, budget):
    """(what shape asks of the JSON value at start, where the value ends), each byte scanned once.

    shape "span": the value's (start, end). [inner]: an array's elements,
    each walked with inner (null: none). {name: (field, inner)}: an object's
    members so named, walked with inner, as {field: [value, ...]}; other
    members are skipped. budget is a one-item list of array elements and object
    members left to visit, shared by a whole walk (TooMany past it).
    """
    if shape == "span":
        return _span(data, start)
    head = data[start:start + 1]
    if isinstance(shape, list):
        if data[start:start + 4] == b"null":
            return [], start + 4
        if head != b"[":
            raise Unreadable("expected an array at byte %d" % start)
        items, end = array_items(data, start, budget[0], lambda position: walk(data, position, shape[0], budget))
        budget[0] -= len(items)
        return items, end
    if head != b"{":
        raise Unreadable("expected an object at byte %d" % start)
    found = {field: [] for field, _ in shape.values()}
    position = skip_whitespace(data, start + 1)
    if data[position:position + 1] == b"}":
        return found, position + 1
    while True:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooMany("members")
        if data[position:position + 1] != b'"':
            raise Unreadable("an object key is not a string at byte %d" % position)
        key_end = value_end(data, position)
        # The names looked for are short: a longer key is none of them.
        wanted = shape.get(bytes(data[position + 1:key_end - 1])) if key_end - position < 64 else None
        position = skip_whitespace(data, key_end)
        if data[position:position + 1] != b":":
            raise Unreadable("expected : at byte %d" % position)
        position = skip_whitespace(data, position + 1)
        if wanted is None:
            position = value_end(data, position)
        else:
            value, position = walk(data, position, wanted[1], budget)
            found[wanted[0]].append(value)
        closed, position = _after_item(data, position, b"}")
        if closed:
            return found, position


def line_spans(data, most):
    """The spans of the lines of data that hold more than whitespace; TooMany past `most` of them."""
    spans = []
    position = 0
    while True:
        match = NOT_WHITESPACE.search(data, position)
        if match is None:
            return spans
        start = data.rfind(b"\n", 0, match.start()) + 1
        end = data.find(b"\n", match.start())
        end = len(data) if end < 0 else end
        spans.append((start, end))
        if len(spans) > most:
            raise TooMany(most)
        position = end


# Protobuf: the wire types LogFlow's scan steps over.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def _varint(data, position):
    """The varint at position and the position after it."""
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise Unreadable("a protobuf varint is truncated or too long")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def protobuf_fields(data, start, end, budget):
    """Yield (field number, span) of each length-delimited field of the message in data[start:end].

    Other wire types are stepped over; budget is a one-item list of fields
    left to visit, shared by a whole scan.
    """
    position = start
    while position < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise TooMany("fields")
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == VARINT:
            _, position = _varint(data, position)
        elif wire_type == FIXED64:
            position += 8
        elif wire_type == FIXED32:
            position += 4
        elif wire_type == LENGTH_DELIMITED:
            length, position = _varint(data, position)
            if position + length > end:
                raise Unreadable("a protobuf field runs past its message")
            yield number, (position, position + length)
            position += length
        else:
            # Groups (3, 4) are deprecated and absent from OTLP; 6 and 7 do not exist.
            raise Unreadable("protobuf wire type %d is not expected here" % wire_type)
        if position > end:
            raise Unreadable("a protobuf field runs past its message")

"""The request parser (llhttp with the proxy's limits): records, and limits to the byte."""

from __future__ import annotations

from yatagarasu.config.schema import SecurityLimits
from yatagarasu.web.request_parser import MAX_HEADERS, RequestParser

LIMITS = SecurityLimits(max_body_size=10, max_header_size=100, max_uri_length=50)


def parsed(*pieces: bytes) -> RequestParser:
    parser = RequestParser(LIMITS)
    for piece in pieces:
        parser.feed(piece)
    return parser


def errors(parser: RequestParser) -> list[int]:
    return [r.error[0] for r in parser.ready if r.error is not None]


def head_with_fields(size: int) -> bytes:
    """A request whose header fields (their lines with CRLF) take exactly ``size`` bytes."""
    field = b"X-A: " + b"a" * (size - 7) + b"\r\n"
    return b"GET /k HTTP/1.1\r\n" + field + b"\r\n"


def test_a_request_becomes_a_record() -> None:
    parser = parsed(b"\r\nGET /a?b=c HTTP/1.0\r\nHost: p \r\nX-Two:\t2\r\nCookie: a=1\r\n\r\n")
    [record] = parser.ready
    assert (record.method, record.target, record.version) == (b"GET", b"/a?b=c", b"HTTP/1.0")
    assert record.headers == [(b"Host", b"p"), (b"X-Two", b"2"), (b"Cookie", b"a=1")]
    assert (record.head_done, record.complete, record.length, record.error) == (
        True, True, 0, None,
    )  # fmt: skip
    assert (record.cookies, record.expect) == (True, False)


def test_header_fields_up_to_the_limit_pass_one_byte_more_is_431() -> None:
    assert errors(parsed(head_with_fields(100))) == []
    assert errors(parsed(head_with_fields(101))) == [431]
    # the same while the head is incomplete: refused before its blank line arrives
    assert errors(parsed(head_with_fields(101)[:-2])) == [431]
    assert errors(parsed(head_with_fields(100)[:-2])) == []


def test_a_target_up_to_the_limit_passes_one_byte_more_is_414() -> None:
    line = b"GET /" + b"t" * 49 + b" HTTP/1.1\r\n\r\n"
    assert errors(parsed(line)) == []
    assert errors(parsed(line.replace(b"/", b"//", 1))) == [414]
    endless = parsed(b"GET /" + b"t" * 2000)  # no end of line yet
    assert errors(endless) == [414]
    assert endless.stopped


def test_a_body_over_the_limit_is_413_by_its_length_or_its_chunks() -> None:
    by_length = parsed(b"POST /k HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    assert errors(by_length) == [413]
    chunked = b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert errors(parsed(chunked + b"a\r\n" + b"x" * 10 + b"\r\n0\r\n\r\n")) == []
    assert errors(parsed(chunked + b"b\r\n" + b"x" * 11 + b"\r\n0\r\n\r\n")) == [413]


def test_too_many_fields_or_a_broken_grammar_is_400() -> None:
    limits = SecurityLimits(max_header_size=1 << 20)
    many = b"GET /k HTTP/1.1\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n"
    parser = RequestParser(limits)
    parser.feed(many)
    assert errors(parser) == [400]
    for bad in (
        b"GET /k HTTP/1.1\r\nX-A: one\r\n folded\r\n\r\n",  # obs-fold
        b"GET /k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /k HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /k HTTP/3.0\r\n\r\n",
    ):
        assert errors(parsed(bad)) == [400], bad


def test_bodies_end_where_their_length_says_and_the_next_request_follows() -> None:
    parser = parsed(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n")
    first, second = parser.ready
    assert (first.body, first.complete) == ([b"abc"], True)
    assert (second.target, second.complete, second.body) == (b"/b", True, [])


def test_after_an_error_nothing_more_is_parsed() -> None:
    parser = parsed(b"GET /k HTTP/1.1\r\nBad Field\r\n\r\n", b"GET /b HTTP/1.1\r\n\r\n")
    assert [r.error for r in parser.ready] == [(400, "malformed HTTP request")]
    parser.close()
    assert parser.ready == type(parser.ready)() and parser.stopped


def test_a_method_llhttp_does_not_know_is_parsed_with_its_own_name() -> None:
    parser = parsed(b"BREW /pot HTTP/1.1\r\nHost: p\r\n\r\nget /k HTTP/1.1\r\n\r\n")
    assert [(r.method, r.target, r.complete) for r in parser.ready] == [
        (b"BREW", b"/pot", True), (b"get", b"/k", True),
    ]  # fmt: skip
    assert errors(parsed(b"BR(EW /pot HTTP/1.1\r\n\r\n")) == [400]  # not a token

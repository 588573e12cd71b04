//! The router's HTTP/1 codec: pure functions over bytes, no I/O.
//!
//! It decides a request's framing once, from the raw head, and refuses (400) anything
//! two HTTP parsers could read differently — the request-smuggling vectors of RFC 9112
//! §6.3 and §11.2: `Content-Length` next to `Transfer-Encoding`, repeated or listed or
//! signed lengths, a `Transfer-Encoding` that does not end in a single `chunked`, bare
//! LF line ends, obs-fold, control bytes, a missing or repeated `Host`. It writes the
//! head sent upstream (hop-by-hop headers and those named in `Connection` removed,
//! forwarding headers added), judges a response head and writes the client's, and
//! follows a body's framing byte by byte ([`BodyFramer`]) so that only bytes whose
//! framing was validated are ever passed on.
//!
//! The I/O around it is `engine`; the fuzz target is the `codec` property test in
//! `tests/`.

use http::header::{self, HeaderMap, HeaderName};

/// Header lines parsed on the stack; heads with more are parsed again with
/// [`MAX_HEADERS_HEAP`].
const MAX_HEADERS: usize = 48;
/// Most header lines in a head (hyper's client allowed 100 in responses).
pub(crate) const MAX_HEADERS_HEAP: usize = 128;
/// Longest chunk-size line (size and extensions) and longest trailer line accepted in
/// a request body; longer is refused (an unbounded line is a denial of service and a
/// smuggling vector when parsers disagree on where it ends).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section of a request body.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Most `Connection` options a request may name.
const MAX_CONNECTION_OPTIONS: usize = 16;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Responses only: the body ends when the backend closes.
    UntilClose,
}

/// Why a request is answered by the router itself instead of being forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 400: malformed or ambiguous; the connection closes (the rest cannot be framed).
    Bad(&'static str),
    /// 413: a declared body over the app's limit.
    BodyTooLarge,
    /// 431: more header lines than [`MAX_HEADERS_HEAP`].
    HeadTooLarge,
    /// 417: an `Expect` other than `100-continue`.
    Expectation,
}

impl Refusal {
    /// Status line and body of the answer.
    pub(crate) fn answer(self) -> (&'static str, &'static str) {
        match self {
            Refusal::Bad(msg) => ("400 Bad Request", msg),
            Refusal::BodyTooLarge => ("413 Payload Too Large", "request body too large\n"),
            Refusal::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "request header fields too large\n",
            ),
            Refusal::Expectation => (
                "417 Expectation Failed",
                "expectation failed: only 100-continue is supported\n",
            ),
        }
    }
}

/// A request head the engine forwards.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReqHead {
    /// Length of the head in the buffer.
    pub len: usize,
    pub head_method: bool,
    /// Safe to send twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The client connection ends after this response (`Connection: close`, or
    /// HTTP/1.0 without keep-alive).
    pub close: bool,
    /// An HTTP/1.0 client: answered without chunked framing and without 1xx heads.
    pub http10: bool,
    pub body: Framing,
    /// `Expect: 100-continue`: the router answers `100 Continue` itself before it
    /// reads the body (the header is not forwarded).
    pub expect_continue: bool,
    /// Asks to switch protocols (`Connection: upgrade` and `Upgrade`): sent on a
    /// fresh connection with its upgrade headers; on `101` both sides are spliced.
    pub upgrade: bool,
    /// The protocol asked for is WebSocket (a drain closes it with 1001).
    pub websocket: bool,
}

/// What a request head is, for the engine.
#[derive(Debug)]
pub(crate) enum Parsed {
    Done(ReqHead),
    /// The head has not fully arrived.
    Partial,
    Refused(Refusal),
}

/// Values the engine adds to every forwarded head.
pub(crate) struct Forwarding<'a> {
    /// The client's address (`X-Forwarded-For`).
    pub peer_ip: &'a [u8],
    /// This hop's `Forwarded` element.
    pub forwarded: &'a [u8],
}

/// Parses a request head with room for `MAX_HEADERS` header lines on the stack, or
/// [`MAX_HEADERS_HEAP`] on the heap.
fn with_request<T>(
    b: &[u8],
    f: impl FnOnce(&httparse::Request<'_, '_>, httparse::Result<usize>) -> T,
) -> T {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let r = req.parse(b);
    if !matches!(r, Err(httparse::Error::TooManyHeaders)) {
        return f(&req, r);
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS_HEAP];
    let mut req = httparse::Request::new(&mut headers);
    let r = req.parse(b);
    f(&req, r)
}

/// Judges the request head at the start of `b`. For one it forwards, `upstream` is
/// called with the parsed head and the `Connection` options it named (to write what
/// is sent on, and read routing inputs, without parsing it again).
pub(crate) fn parse_request(
    b: &[u8],
    max_body: u64,
    upstream: impl FnOnce(&httparse::Request<'_, '_>, &ReqHead, &[&[u8]]),
) -> Parsed {
    with_request(b, |req, r| {
        let len = match r {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Refused(Refusal::HeadTooLarge);
            }
            Err(_) => {
                return Parsed::Refused(Refusal::Bad("bad request: malformed request head\n"));
            }
        };
        match judge_request(req, &b[..len], max_body) {
            Judged::Forward(head, options) => {
                upstream(req, &head, &options[..]);
                Parsed::Done(head)
            }
            Judged::Refused(r) => Parsed::Refused(r),
        }
    })
}

#[expect(
    clippy::large_enum_variant,
    reason = "made once per head on the stack and consumed at once; boxing would allocate per request"
)]
enum Judged<'h> {
    Forward(ReqHead, Options<'h>),
    Refused(Refusal),
}

/// The `Connection` options of a head (besides `close` and `keep-alive`).
struct Options<'h> {
    names: [&'h [u8]; MAX_CONNECTION_OPTIONS],
    len: usize,
}

impl<'h> std::ops::Deref for Options<'h> {
    type Target = [&'h [u8]];
    fn deref(&self) -> &Self::Target {
        &self.names[..self.len]
    }
}

fn bad(msg: &'static str) -> Judged<'static> {
    Judged::Refused(Refusal::Bad(msg))
}

fn judge_request<'h>(req: &httparse::Request<'_, 'h>, head: &[u8], max_body: u64) -> Judged<'h> {
    // httparse accepts a bare LF as a line end; another parser may not (RFC 9112 §2.2).
    if memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r') {
        return bad("bad request: a line of the head ends in a bare LF\n");
    }
    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return bad("bad request: unsupported HTTP version\n"),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return bad("bad request: malformed request line\n");
    };
    if method == "CONNECT" {
        // Authority-form: a tunnel through the proxy, which a reverse proxy does not
        // offer.
        return bad("bad request: CONNECT is not supported\n");
    }
    let origin = target.starts_with('/') || (target == "*" && method == "OPTIONS");
    if !origin && split_absolute(target).is_none() {
        return bad("bad request: the request target is not origin-form or absolute-form\n");
    }
    let mut close = http10;
    let mut hosts = 0u32;
    let mut length: Option<u64> = None;
    let mut lengths = 0u32;
    let mut te_lines = 0u32;
    let mut chunked = 0u32;
    let mut te_last_chunked = false;
    let mut expect_continue = false;
    let mut upgrade = false;
    let mut websocket = false;
    let mut upgrade_option = false;
    let mut options = Options {
        names: [b""; MAX_CONNECTION_OPTIONS],
        len: 0,
    };
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if n.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            let v = h.value.trim_ascii();
            let parsed = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match parsed {
                Some(l) => length = Some(l),
                None => return bad("bad request: invalid Content-Length\n"),
            }
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te_lines += 1;
            for coding in h.value.split(|&c| c == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    // Valid list syntax, but backends disagree on whether
                    // `, chunked,` ends in chunked: never pass it on.
                    return bad("bad request: empty element in Transfer-Encoding\n");
                }
                if chunked > 0 {
                    // Nothing may follow chunked, and it is applied once.
                    return bad("bad request: Transfer-Encoding must end in one chunked\n");
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked += 1;
                    te_last_chunked = true;
                } else if !coding.iter().all(|&c| is_token(c)) {
                    return bad("bad request: invalid Transfer-Encoding\n");
                }
            }
        } else if n.eq_ignore_ascii_case(b"expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Judged::Refused(Refusal::Expectation);
            }
        } else if n.eq_ignore_ascii_case(b"upgrade") {
            // h2c is not offered: the head is served as HTTP/1.1 and the header dropped.
            let v = h.value.trim_ascii();
            upgrade = !v.eq_ignore_ascii_case(b"h2c");
            websocket = v.eq_ignore_ascii_case(b"websocket");
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.is_empty() {
                    continue;
                }
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if http10 {
                        close = false;
                    }
                } else {
                    if t.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_option = true;
                    }
                    if options.len == MAX_CONNECTION_OPTIONS {
                        return bad("bad request: too many Connection options\n");
                    }
                    options.names[options.len] = t;
                    options.len += 1;
                }
            }
        }
    }
    let one_host = if http10 { hosts <= 1 } else { hosts == 1 };
    if !one_host {
        return bad("bad request: an HTTP/1.1 request has exactly one Host header\n");
    }
    if lengths > 1 {
        return bad("bad request: repeated Content-Length\n");
    }
    let body = if te_lines > 0 {
        if http10 {
            return bad("bad request: Transfer-Encoding in an HTTP/1.0 request\n");
        }
        if lengths > 0 {
            return bad("bad request: both Content-Length and Transfer-Encoding\n");
        }
        if !te_last_chunked {
            return bad("bad request: Transfer-Encoding must end in one chunked\n");
        }
        Framing::Chunked
    } else {
        match length {
            None | Some(0) => Framing::Empty,
            Some(l) if l > max_body => return Judged::Refused(Refusal::BodyTooLarge),
            Some(l) => Framing::Length(l),
        }
    };
    let upgrade = upgrade && upgrade_option && !http10;
    if upgrade && body != Framing::Empty {
        return bad("bad request: upgrade request with a body\n");
    }
    let head = ReqHead {
        len: head.len(),
        head_method: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        close,
        http10,
        body,
        expect_continue: expect_continue && body != Framing::Empty,
        upgrade,
        websocket: upgrade && websocket,
    };
    Judged::Forward(head, options)
}

/// An absolute-form target (`http://host:port/path?query`, RFC 9112 §3.2.2) split
/// into its authority and its origin form (`/` when the path is empty, the query
/// kept). `None` when it is not a well-formed `http` or `https` URI with a host (a
/// user name and password in it are refused too: RFC 9110 §4.2.4).
pub(crate) fn split_absolute(target: &str) -> Option<(&str, std::borrow::Cow<'_, str>)> {
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, origin) = rest.split_at(end);
    if authority.is_empty()
        || authority.contains('@')
        || origin.contains('#')
        || authority.parse::<http::uri::Authority>().is_err()
    {
        return None;
    }
    let origin = if origin.starts_with('/') {
        std::borrow::Cow::Borrowed(origin)
    } else {
        std::borrow::Cow::Owned(format!("/{origin}"))
    };
    Some((authority, origin))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The origin form of a request target: itself, or the path and query of an
/// absolute-form target.
pub(crate) fn origin_form(target: &str) -> std::borrow::Cow<'_, str> {
    if target.starts_with('/') {
        return std::borrow::Cow::Borrowed(target);
    }
    match split_absolute(target) {
        Some((_, origin)) => origin,
        None => std::borrow::Cow::Borrowed(target),
    }
}

/// RFC 9110 `tchar`.
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
/// `Transfer-Encoding` is not here: a chunked body is passed on as framed, so its
/// header stays.
fn hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"http2-settings",
    ];
    NAMES.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Writes the head sent upstream: the client's, with hop-by-hop headers, those the
/// client named in `Connection` and `Expect` removed, and the forwarding headers
/// added (`X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`, `X-Forwarded-Host`).
/// Every request goes on as HTTP/1.1, with a `Host`.
pub(crate) fn upstream_request(
    req: &httparse::Request<'_, '_>,
    head: &ReqHead,
    options: &[&[u8]],
    fwd: &Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    let target = req.path.unwrap_or("/");
    // An absolute-form target goes on in origin form, its authority as the Host.
    let absolute = if target.starts_with('/') {
        None
    } else {
        split_absolute(target)
    };
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    match &absolute {
        Some((_, origin)) => out.extend_from_slice(origin.as_bytes()),
        None => out.extend_from_slice(target.as_bytes()),
    }
    // The router's own version (RFC 9110 2.5), whatever the client's: an HTTP/1.0
    // client's requests then share pooled upstream connections too. A chunked answer
    // to one is passed on without its chunking (see `parse_response`).
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff: Option<&[u8]> = None;
    let mut forwarded: Option<&[u8]> = None;
    let mut proto = false;
    let mut host: Option<&[u8]> = None;
    let mut xfh = false;
    for h in req.headers.iter() {
        let n = h.name.as_bytes();
        let keep_upgrade = head.upgrade && n.eq_ignore_ascii_case(b"upgrade");
        if !keep_upgrade
            && (hop_by_hop(n)
                || n.eq_ignore_ascii_case(b"expect")
                || options.iter().any(|o| n.eq_ignore_ascii_case(o)))
        {
            continue;
        }
        if n.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.get_or_insert(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case(b"forwarded") {
            forwarded.get_or_insert(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case(b"x-forwarded-proto") {
            proto = true;
        } else if n.eq_ignore_ascii_case(b"host") {
            if absolute.is_some() {
                continue;
            }
            host.get_or_insert(h.value);
        } else if n.eq_ignore_ascii_case(b"x-forwarded-host") {
            xfh = true;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((authority, _)) = &absolute {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        host = Some(authority.as_bytes());
    } else if host.is_none() {
        // HTTP/1.1 needs a Host; an HTTP/1.0 request may have none, and its target
        // then has no authority: an empty one (RFC 9112 3.2).
        out.extend_from_slice(b"host: \r\n");
    }
    list_header(out, b"x-forwarded-for", xff, fwd.peer_ip);
    list_header(out, b"forwarded", forwarded, fwd.forwarded);
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
    if !xfh && let Some(h) = host {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn list_header(out: &mut Vec<u8>, name: &[u8], prev: Option<&[u8]>, ours: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    if let Some(p) = prev {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours);
    out.extend_from_slice(b"\r\n");
}

/// A head as `http` types (method, target, header map), parsed again from bytes the
/// codec already judged: only for the rare request that is recorded or mirrored.
pub(crate) fn request_parts(head: &[u8]) -> Option<(http::Method, http::Uri, http::HeaderMap)> {
    with_request(head, |req, r| {
        r.ok()?;
        let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
        let uri = req.path?.parse().ok()?;
        Some((method, uri, header_map(req.headers)))
    })
}

/// A response head as `http` types, parsed again (see [`request_parts`]).
pub(crate) fn response_parts(head: &[u8]) -> Option<(http::StatusCode, http::HeaderMap)> {
    with_response(head, |resp, r| {
        r.ok()?;
        let status = http::StatusCode::from_u16(resp.code?).ok()?;
        Some((status, header_map(resp.headers)))
    })
}

fn header_map(headers: &[httparse::Header<'_>]) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// The data of a whole body as framed in `raw` (chunks joined, trailers dropped).
pub(crate) fn body_data(framing: Framing, raw: &[u8]) -> Vec<u8> {
    if framing != Framing::Chunked {
        return raw.to_vec();
    }
    let mut data = Vec::with_capacity(raw.len());
    BodyFramer::response(Framing::Chunked).accept_data(raw, &mut data);
    data
}

/// Hop-by-hop headers, never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names instead of a hashed look-up per hop-by-hop name
    // (standard names compare as small integers); most heads carry none of them.
    let mut present = 0u8;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `HOP_BY_HOP[0]` is `Connection`.
    if present & 1 != 0 {
        // Headers the sender named in `Connection` are hop-by-hop too. Rare beyond
        // `keep-alive`/`close`, so the allocation is only paid when present.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case("close") && !n.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(n);
        }
    }
}

/// A response head, as judged.
#[derive(Debug)]
pub(crate) struct RespHead {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend will close (or is HTTP/1.0 without keep-alive).
    pub upstream_close: bool,
    pub event_stream: bool,
    /// `Connection` names headers besides `close` and `keep-alive` (hop-by-hop too).
    pub connection_options: bool,
}

#[derive(Debug)]
pub(crate) enum RespParsed {
    Done(RespHead),
    /// An informational (1xx) head of this length. [`parse_response`] has written it
    /// for the client when it is passed on (see there); it is skipped otherwise.
    Informational(usize),
    Partial,
    Bad,
}

/// Parses a response head with room for `MAX_HEADERS` header lines on the stack, or
/// [`MAX_HEADERS_HEAP`] on the heap when that is not enough (many cookies).
fn with_response<T>(
    b: &[u8],
    f: impl FnOnce(&httparse::Response<'_, '_>, httparse::Result<usize>) -> T,
) -> T {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let r = resp.parse(b);
    if !matches!(r, Err(httparse::Error::TooManyHeaders)) {
        return f(&resp, r);
    }
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS_HEAP];
    let mut resp = httparse::Response::new(&mut headers);
    let r = resp.parse(b);
    f(&resp, r)
}

/// Judges a response head to `req`; for a final one, writes the client's head but
/// its end into `send` from the same parse (see [`write_client_head`]). A `101` is
/// final for an upgrade request (its `Upgrade` and `Connection: upgrade` kept), and
/// bad otherwise. An interim head (`102 Processing`, `103 Early Hints`...) is written
/// whole into `send` to be passed on (RFC 9110 15.2: a proxy forwards 1xx), except
/// `100 Continue` (the router answers `Expect` itself, and removes it from the
/// request) and any to an HTTP/1.0 client, which cannot take one.
pub(crate) fn parse_response(b: &[u8], req: &ReqHead, send: &mut Vec<u8>) -> RespParsed {
    with_response(b, |resp, r| {
        if let (Ok(httparse::Status::Complete(len)), Some(code @ 102..=199)) = (r, resp.code)
            && !req.http10
        {
            debug_assert_ne!(code, 101);
            write_client_head(resp, Relay::AsSent, true, send);
            send.extend_from_slice(b"\r\n");
            return RespParsed::Informational(len);
        }
        if req.upgrade && resp.code == Some(101) {
            let Ok(httparse::Status::Complete(len)) = r else {
                return judge_response(resp, r, req.head_method);
            };
            write_client_head(resp, Relay::AsSent, true, send);
            let upgrade = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("upgrade"));
            if let Some(u) = upgrade {
                send.extend_from_slice(b"upgrade: ");
                send.extend_from_slice(u.value);
                send.extend_from_slice(b"\r\n");
            }
            send.extend_from_slice(b"connection: upgrade\r\n");
            return RespParsed::Done(RespHead {
                len,
                status: 101,
                framing: Framing::Empty,
                upstream_close: true,
                event_stream: false,
                connection_options: true,
            });
        }
        let judged = judge_response(resp, r, req.head_method);
        if let RespParsed::Done(h) = &judged {
            let relay = match h.framing {
                Framing::Chunked if req.http10 => Relay::Dechunked,
                Framing::Chunked => Relay::Chunked,
                _ => Relay::AsSent,
            };
            write_client_head(resp, relay, h.connection_options, send);
        }
        judged
    })
}

/// Judges a response head and, for a final one, gives its status and headers as
/// `http` types from the same parse (for [`crate::upstream::call`]).
pub(crate) fn parse_response_typed(
    b: &[u8],
    head_method: bool,
) -> (RespParsed, Option<(http::StatusCode, HeaderMap)>) {
    with_response(b, |resp, r| {
        let judged = judge_response(resp, r, head_method);
        let typed = match &judged {
            RespParsed::Done(_) => resp
                .code
                .and_then(|c| http::StatusCode::from_u16(c).ok())
                .map(|status| (status, header_map(resp.headers))),
            _ => None,
        };
        (judged, typed)
    })
}

fn judge_response(
    resp: &httparse::Response<'_, '_>,
    r: httparse::Result<usize>,
    head_method: bool,
) -> RespParsed {
    let len = match r {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RespParsed::Partial,
        Err(_) => return RespParsed::Bad,
    };
    let status = resp.code.unwrap_or(502);
    if (100..200).contains(&status) {
        if status == 101 {
            return RespParsed::Bad;
        }
        return RespParsed::Informational(len);
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut close = resp.version == Some(0);
    let mut event_stream = false;
    let mut connection_options = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"content-length") {
            let v = h.value.trim_ascii();
            let Some(l) = std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return RespParsed::Bad;
            };
            if length.is_some_and(|p| p != l) {
                return RespParsed::Bad;
            }
            length = Some(l);
        } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            chunked = h
                .value
                .rsplit(|&c| c == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if n.eq_ignore_ascii_case(b"connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    if resp.version == Some(0) {
                        close = false;
                    }
                } else if !t.is_empty() {
                    connection_options = true;
                }
            }
        } else if n.eq_ignore_ascii_case(b"content-type") {
            event_stream = h.value.starts_with(b"text/event-stream");
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(l) => Framing::Length(l),
            None => Framing::UntilClose,
        }
    };
    if te && length.is_some() {
        // Both: ambiguous; never reuse that connection.
        close = true;
    }
    RespParsed::Done(RespHead {
        len,
        status,
        framing,
        upstream_close: close || matches!(framing, Framing::UntilClose),
        event_stream,
        connection_options,
    })
}

/// How a response body goes to the client, for its framing headers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    /// As the backend framed it.
    AsSent,
    /// Chunked, as the backend sent it.
    Chunked,
    /// Chunked by the backend, passed on to an HTTP/1.0 client as plain data ended
    /// by the close.
    Dechunked,
}

/// The client's response head but its end: the backend's, without hop-by-hop headers
/// (the chunked `Transfer-Encoding` stays: the body is passed through as it is
/// framed, unless `relay` dechunks it). The caller adds `Connection: close` when this
/// is the connection's last response, then the blank line.
///
/// A `Content-Length` next to a chunked `Transfer-Encoding` is dropped (RFC 9112 6.3:
/// an intermediary must not forward both).
fn write_client_head(
    resp: &httparse::Response<'_, '_>,
    relay: Relay,
    connection_options: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Headers the backend named in `Connection` are hop-by-hop too.
    let mut named: [&[u8]; MAX_CONNECTION_OPTIONS] = [b""; MAX_CONNECTION_OPTIONS];
    let mut n_named = 0;
    for h in resp.headers.iter().filter(|_| connection_options) {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&c| c == b',') {
                let t = t.trim_ascii();
                if !t.is_empty() && n_named < MAX_CONNECTION_OPTIONS {
                    named[n_named] = t;
                    n_named += 1;
                }
            }
        }
    }
    let named = &named[..n_named];
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if hop_by_hop(n)
            || (relay != Relay::AsSent && n.eq_ignore_ascii_case(b"content-length"))
            || (relay == Relay::Dechunked && n.eq_ignore_ascii_case(b"transfer-encoding"))
            || named.iter().any(|o| n.eq_ignore_ascii_case(o))
        {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Follows a body's framing while it is copied through unchanged: says how many of
/// the bytes it is shown belong to the body, and whether the framing is broken.
/// Strict (requests): bare LF, control bytes in chunk extensions, and chunk lines or
/// trailers over their limits are errors. Lenient (responses): bare LF is taken as a
/// line end.
#[derive(Debug)]
pub(crate) struct BodyFramer {
    framing: Framing,
    strict: bool,
    /// Bytes left in the body (`Length`) or in the current chunk's data (`Chunked`).
    left: u64,
    chunk: ChunkState,
    /// A chunk-size line being read: the size so far.
    size: u64,
    digits: u8,
    /// Bytes of the current chunk line or trailer line.
    line: usize,
    /// Bytes of the trailer section so far.
    trailers: usize,
    /// Data bytes (without framing) seen so far.
    data: u64,
    bad: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

impl BodyFramer {
    /// Follows a response body (lenient).
    pub(crate) fn response(framing: Framing) -> Self {
        Self::new(framing, false)
    }

    /// Follows a request body (strict).
    pub(crate) fn request(framing: Framing) -> Self {
        Self::new(framing, true)
    }

    fn new(framing: Framing, strict: bool) -> Self {
        BodyFramer {
            framing,
            strict,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
            data: 0,
            bad: false,
        }
    }

    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// The whole body has been seen.
    pub(crate) fn done(&self) -> bool {
        match self.framing {
            Framing::Empty => true,
            Framing::Length(_) => self.left == 0,
            Framing::Chunked => self.chunk == ChunkState::Done,
            Framing::UntilClose => false,
        }
    }

    /// The framing is broken: nothing from the first bad byte on may be passed on.
    pub(crate) fn bad(&self) -> bool {
        self.bad
    }

    /// Body data bytes (without chunk framing) seen so far.
    pub(crate) fn data(&self) -> u64 {
        match self.framing {
            Framing::Chunked => self.data,
            Framing::Length(n) => n - self.left,
            _ => self.data,
        }
    }

    /// At a point where the body could end cleanly (a chunk boundary).
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.framing, Framing::Chunked)
            && self.chunk == ChunkState::Size
            && self.digits == 0
    }

    /// How many of `b` belong to the body (all of them unless the body ends inside,
    /// or its framing breaks: then the bytes before the first bad one, and
    /// [`BodyFramer::bad`] is set).
    pub(crate) fn accept(&mut self, b: &[u8]) -> usize {
        self.accept_into(b, None)
    }

    /// [`BodyFramer::accept`], appending the body's data (chunks joined, without
    /// their framing and trailers) to `data`.
    pub(crate) fn accept_data(&mut self, b: &[u8], data: &mut Vec<u8>) -> usize {
        self.accept_into(b, Some(data))
    }

    fn accept_into(&mut self, b: &[u8], data: Option<&mut Vec<u8>>) -> usize {
        match self.framing {
            Framing::Empty => 0,
            Framing::UntilClose => {
                self.data += b.len() as u64;
                if let Some(d) = data {
                    d.extend_from_slice(b);
                }
                b.len()
            }
            Framing::Length(_) => {
                let n = (b.len() as u64).min(self.left);
                self.left -= n;
                if let Some(d) = data {
                    d.extend_from_slice(&b[..n as usize]);
                }
                n as usize
            }
            Framing::Chunked => self.accept_chunked(b, data),
        }
    }

    fn fail(&mut self, at: usize) -> usize {
        self.bad = true;
        self.chunk = ChunkState::Done;
        at
    }

    fn accept_chunked(&mut self, b: &[u8], mut sink: Option<&mut Vec<u8>>) -> usize {
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match self.chunk {
                ChunkState::Done => return i,
                ChunkState::Data => {
                    let n = ((b.len() - i) as u64).min(self.left);
                    if let Some(d) = sink.as_deref_mut() {
                        d.extend_from_slice(&b[i..i + n as usize]);
                    }
                    self.left -= n;
                    self.data += n;
                    i += n as usize;
                    if self.left == 0 {
                        self.chunk = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match c {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (c as char).to_digit(16).unwrap_or(0);
                        self.digits = self.digits.saturating_add(1);
                        if self.digits > 15 {
                            return self.fail(i);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        self.line += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.chunk = ChunkState::Ext;
                        self.line += 1;
                    }
                    b'\r' if self.digits > 0 => self.chunk = ChunkState::SizeLf,
                    b'\n' if self.digits > 0 && !self.strict => self.size_line_end(),
                    _ => return self.fail(i),
                },
                ChunkState::Ext => match c {
                    b'\r' => self.chunk = ChunkState::SizeLf,
                    b'\n' if !self.strict => self.size_line_end(),
                    _ => {
                        self.line += 1;
                        if self.strict
                            && (self.line > MAX_CHUNK_LINE || (c < b' ' && c != b'\t') || c == 0x7f)
                        {
                            return self.fail(i);
                        }
                    }
                },
                ChunkState::SizeLf => {
                    if c != b'\n' {
                        return self.fail(i);
                    }
                    self.size_line_end();
                }
                ChunkState::DataCr => match c {
                    b'\r' => self.chunk = ChunkState::DataLf,
                    b'\n' if !self.strict => self.chunk = ChunkState::Size,
                    _ => return self.fail(i),
                },
                ChunkState::DataLf => {
                    if c != b'\n' {
                        return self.fail(i);
                    }
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    self.trailers += 1;
                    match c {
                        b'\r' => self.chunk = ChunkState::TrailerLf,
                        b'\n' if !self.strict => self.trailer_line_end(),
                        _ => {
                            self.line += 1;
                            if self.strict
                                && (self.line > MAX_CHUNK_LINE
                                    || self.trailers > MAX_TRAILERS
                                    || (c < b' ' && c != b'\t')
                                    || c == 0x7f)
                            {
                                return self.fail(i);
                            }
                        }
                    }
                }
                ChunkState::TrailerLf => {
                    if c != b'\n' {
                        return self.fail(i);
                    }
                    self.trailer_line_end();
                }
            }
            i += 1;
        }
        i
    }

    fn size_line_end(&mut self) {
        if self.size == 0 {
            self.chunk = ChunkState::Trailer;
        } else {
            self.left = self.size;
            self.chunk = ChunkState::Data;
        }
        self.line = 0;
        self.size = 0;
        self.digits = 0;
    }

    fn trailer_line_end(&mut self) {
        if self.line > 0 {
            self.line = 0;
            self.chunk = ChunkState::Trailer;
        } else {
            self.chunk = ChunkState::Done;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked_end(input: &[u8]) -> (usize, bool) {
        let mut b = BodyFramer::response(Framing::Chunked);
        let n = b.accept(input);
        (n, b.done())
    }

    /// A GET (or HEAD) head, as judged.
    fn request(head_method: bool) -> ReqHead {
        ReqHead {
            len: 0,
            head_method,
            idempotent: true,
            close: false,
            http10: false,
            body: Framing::Empty,
            expect_continue: false,
            upgrade: false,
            websocket: false,
        }
    }

    fn parse(s: &str) -> Parsed {
        parse_request(s.as_bytes(), 1 << 20, |_, _, _| {})
    }

    #[test]
    fn chunked_bodies_end_where_their_framing_says() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\nEXTRA";
        assert_eq!(chunked_end(body), (body.len() - 5, true));
        assert_eq!(chunked_end(b"0\r\n\r\n"), (5, true));
        assert_eq!(chunked_end(b"a\r\n0123456789\r\n"), (15, false));
        // Byte by byte gives the same end, strict or not.
        for strict in [false, true] {
            let mut b = BodyFramer::new(Framing::Chunked, strict);
            let mut taken = 0;
            for c in body.iter() {
                taken += b.accept(std::slice::from_ref(c));
            }
            assert!(b.done() && !b.bad());
            assert_eq!(taken, body.len() - 5);
            assert_eq!(b.data(), 5);
        }
    }

    #[test]
    fn body_data_joins_chunks() {
        let raw = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nt: 1\r\n\r\n";
        assert_eq!(body_data(Framing::Chunked, raw), b"hello world");
        assert_eq!(body_data(Framing::Length(3), b"abc"), b"abc");
    }

    #[test]
    fn bad_chunk_framing_is_noticed() {
        let mut b = BodyFramer::response(Framing::Chunked);
        b.accept(b"zz\r\n");
        assert!(b.bad());
        // Strict: a bare LF, a control byte in an extension, an overlong line.
        for body in [
            b"1\na\r\n0\r\n\r\n".to_vec(),
            b"1;a\nb\r\na\r\n0\r\n\r\n".to_vec(),
            b"1\r\na\n0\r\n\r\n".to_vec(),
            [
                b"1;".as_slice(),
                &[b'x'; MAX_CHUNK_LINE + 1],
                b"\r\na\r\n0\r\n\r\n",
            ]
            .concat(),
        ] {
            let mut b = BodyFramer::request(Framing::Chunked);
            let n = b.accept(&body);
            assert!(b.bad(), "{:?}", String::from_utf8_lossy(&body));
            assert!(n < body.len());
        }
        // Lenient: a bare LF is a line end.
        let mut b = BodyFramer::response(Framing::Chunked);
        b.accept(b"1\na\n0\n\n");
        assert!(b.done() && !b.bad());
    }

    #[test]
    fn request_framing_is_decided_once() {
        let body = |s: &str| match parse(s) {
            Parsed::Done(h) => h.body,
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
            Framing::Length(3)
        );
        assert_eq!(
            body("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            body("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Framing::Empty
        );
        let refused = |s: &str| matches!(parse(s), Parsed::Refused(Refusal::Bad(_)));
        for s in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX A: 1\r\n\r\n",
        ] {
            assert!(refused(s), "{s:?}");
        }
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"),
            Parsed::Refused(Refusal::BodyTooLarge)
        ));
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n"),
            Parsed::Refused(Refusal::Expectation)
        ));
    }

    #[test]
    fn upgrades_and_absolute_targets_are_forwarded() {
        assert!(matches!(
            parse("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Parsed::Refused(Refusal::Bad(_))
        ));
        assert!(matches!(
            parse("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
            Parsed::Done(_)
        ));
        for bad in [
            "GET ftp://a/ HTTP/1.1",
            "GET http://u:p@a/ HTTP/1.1",
            "GET a/b HTTP/1.1",
        ] {
            assert!(
                matches!(
                    parse(&format!("{bad}\r\nHost: a\r\n\r\n")),
                    Parsed::Refused(_)
                ),
                "{bad}"
            );
        }
        let upgrade = |s: &str| match parse(s) {
            Parsed::Done(h) => (h.upgrade, h.websocket),
            other => panic!("{s:?}: {other:?}"),
        };
        assert_eq!(
            upgrade(
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            ),
            (true, true)
        );
        // h2c is not offered; Upgrade without the Connection option is no upgrade.
        assert_eq!(
            upgrade(
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade, http2-settings\r\n\r\n"
            ),
            (false, false)
        );
        assert_eq!(
            upgrade("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
            (false, false)
        );
        assert!(matches!(
            parse(
                "POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx"
            ),
            Parsed::Refused(Refusal::Bad(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        match parse("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET") {
            Parsed::Done(h) => {
                assert!(h.close && h.idempotent && !h.http10);
                assert_eq!(h.len, 47);
            }
            other => panic!("a plain GET is forwarded: {other:?}"),
        }
        match parse("GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n") {
            Parsed::Done(h) => assert!(!h.close && h.http10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_connection_named_headers() {
        let s = "POST /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\n\
                 Keep-Alive: 5\r\nTE: trailers\r\nExpect: 100-continue\r\nX-Kept: 1\r\n\
                 Content-Length: 1\r\n\r\nz";
        let mut out = Vec::new();
        let p = parse_request(s.as_bytes(), 10, |req, head, options| {
            let fwd = Forwarding {
                peer_ip: b"10.0.0.1",
                forwarded: b"for=10.0.0.1;proto=http",
            };
            upstream_request(req, head, options, &fwd, &mut out);
        });
        assert!(matches!(p, Parsed::Done(h) if h.expect_continue));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p HTTP/1.1\r\nHost: a\r\nX-Kept: 1\r\nContent-Length: 1\r\n\
             x-forwarded-for: 10.0.0.1\r\nforwarded: for=10.0.0.1;proto=http\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_goes_on_in_origin_form_with_its_authority_as_host() {
        let mut out = Vec::new();
        parse_request(
            b"GET http://App.example:8080?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            10,
            |req, head, options| {
                let fwd = Forwarding {
                    peer_ip: b"10.0.0.1",
                    forwarded: b"for=10.0.0.1",
                };
                upstream_request(req, head, options, &fwd, &mut out);
            },
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("GET /?q=1 HTTP/1.1\r\nhost: App.example:8080\r\n"),
            "{out}"
        );
        assert!(
            out.contains("x-forwarded-host: App.example:8080\r\n"),
            "{out}"
        );
        assert!(!out.contains("other"), "{out}");
        assert_eq!(origin_form("https://a/b?c"), "/b?c");
        assert_eq!(origin_form("/x"), "/x");
    }

    #[test]
    fn response_framing() {
        let f = |s: &str, head: bool| match parse_response(
            s.as_bytes(),
            &request(head),
            &mut Vec::new(),
        ) {
            RespParsed::Done(h) => (h.framing, h.upstream_close),
            _ => panic!("not a complete response: {s}"),
        };
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
            (Framing::Length(5), false)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
            (Framing::Empty, false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, true)
        );
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            (Framing::Empty, false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), true)
        );
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &request(false),
                &mut Vec::new()
            ),
            RespParsed::Informational(25)
        ));
        // Other interim heads are written for the client, hop-by-hop headers removed;
        // to an HTTP/1.0 client, nothing.
        let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nKeep-Alive: timeout=5\r\n\r\n";
        let mut out = Vec::new();
        assert!(matches!(
            parse_response(hints, &request(false), &mut out),
            RespParsed::Informational(n) if n == hints.len()
        ));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        );
        let mut old = request(false);
        old.http10 = true;
        let mut out = Vec::new();
        assert!(matches!(
            parse_response(hints, &old, &mut out),
            RespParsed::Informational(_)
        ));
        assert!(out.is_empty());
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                &request(false),
                &mut Vec::new()
            ),
            RespParsed::Bad
        ));
    }

    #[test]
    fn client_head_drops_hop_by_hop_headers_and_a_length_next_to_chunked() {
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v1\r\ncontent-length: 2\r\n\r\n",
            &request(false),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-version: v1\r\ncontent-length: 2\r\n"
        );
        let mut out = Vec::new();
        parse_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            &request(false),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
        );
        // A `100 Continue` from the backend writes nothing.
        let mut out = Vec::new();
        parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", &request(false), &mut out);
        assert!(out.is_empty());
    }
}

/// The codec's fuzz target, on the stable toolchain: well-formed requests, then
/// random mutations (bytes replaced, inserted or removed, with a bias to the bytes
/// framing depends on), fed whole and in random splits. The codec must never panic,
/// must decide the same whatever the splits, and must forward only what an
/// independent strict reading of RFC 9112 (written plainly below, sharing no code
/// with the codec) accepts, with the same framing.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const MAX_BODY: u64 = 1 << 20;

    /// The strict reading: `Some((head length, framing))` for a head to forward,
    /// `None` for one to refuse. `b` holds a complete head.
    fn oracle_head(b: &[u8]) -> Option<(usize, Framing)> {
        let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = &b[..end - 4];
        let mut lines = Vec::new();
        let mut rest = head;
        loop {
            match rest.windows(2).position(|w| w == b"\r\n") {
                Some(i) => {
                    lines.push(&rest[..i]);
                    rest = &rest[i + 2..];
                }
                None => {
                    lines.push(rest);
                    break;
                }
            }
        }
        let line_ok = |l: &[u8]| !l.contains(&b'\n') && !l.contains(&b'\r');
        if !lines.iter().all(|l| line_ok(l)) {
            return None;
        }
        let request_line: Vec<&[u8]> = lines[0].split(|&c| c == b' ').collect();
        let [method, target, version] = request_line[..] else {
            return None;
        };
        if method.is_empty() || !method.iter().all(|&c| is_token(c)) {
            return None;
        }
        if !target.starts_with(b"/") || target.iter().any(|&c| c <= b' ' || c == 0x7f) {
            return None;
        }
        let http10 = match version {
            b"HTTP/1.1" => false,
            b"HTTP/1.0" => true,
            _ => return None,
        };
        let (mut hosts, mut lengths, mut te) = (0, Vec::new(), Vec::new());
        for l in &lines[1..] {
            let colon = l.iter().position(|&c| c == b':')?;
            let (name, value) = (&l[..colon], &l[colon + 1..]);
            if name.is_empty() || !name.iter().all(|&c| is_token(c)) {
                return None;
            }
            if value.iter().any(|&c| (c < b' ' && c != b'\t') || c == 0x7f) {
                return None;
            }
            let value = value.trim_ascii();
            let name = name.to_ascii_lowercase();
            match &name[..] {
                b"host" => hosts += 1,
                b"content-length" => lengths.push(value.to_vec()),
                b"transfer-encoding" => te.push(value.to_vec()),
                // Upgrades, expectations and long Connection lists are judged
                // elsewhere; the fuzzed inputs do not use them.
                b"upgrade" | b"expect" | b"connection" => return None,
                _ => {}
            }
        }
        if (http10 && hosts > 1) || (!http10 && hosts != 1) || lengths.len() > 1 {
            return None;
        }
        let framing = if !te.is_empty() {
            let codings: Vec<Vec<u8>> = te
                .iter()
                .flat_map(|v| {
                    v.split(|&c| c == b',')
                        .map(|c| c.trim_ascii().to_ascii_lowercase())
                })
                .collect();
            let chunked_last_once = codings.last().is_some_and(|c| c == b"chunked")
                && codings.iter().filter(|c| *c == b"chunked").count() == 1
                && codings
                    .iter()
                    .all(|c| !c.is_empty() && c.iter().all(|&x| is_token(x)));
            if http10 || !lengths.is_empty() || !chunked_last_once {
                return None;
            }
            Framing::Chunked
        } else if let Some(l) = lengths.first() {
            if l.is_empty() || l.len() > 19 || !l.iter().all(u8::is_ascii_digit) {
                return None;
            }
            match std::str::from_utf8(l).ok()?.parse::<u64>().ok()? {
                0 => Framing::Empty,
                n if n > MAX_BODY => return None,
                n => Framing::Length(n),
            }
        } else {
            Framing::Empty
        };
        Some((end, framing))
    }

    /// The strict reading of a chunked body: the length of the complete body at the
    /// start of `b`, or `None` when it is malformed or incomplete.
    fn oracle_chunked(b: &[u8]) -> Option<usize> {
        let mut at = 0;
        let line = |at: usize| -> Option<(&[u8], usize)> {
            let i = b[at..].windows(2).position(|w| w == b"\r\n")?;
            let l = &b[at..at + i];
            (!l.contains(&b'\n') && l.len() <= MAX_CHUNK_LINE).then_some((l, at + i + 2))
        };
        loop {
            let (l, next) = line(at)?;
            let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
            if digits == 0 || digits > 15 {
                return None;
            }
            let ext = &l[digits..];
            if !ext.is_empty() && !matches!(ext[0], b';' | b' ' | b'\t') {
                return None;
            }
            if ext.iter().any(|&c| (c < b' ' && c != b'\t') || c == 0x7f) {
                return None;
            }
            let size = usize::from_str_radix(std::str::from_utf8(&l[..digits]).ok()?, 16).ok()?;
            at = next;
            if size == 0 {
                loop {
                    let (t, next) = line(at)?;
                    at = next;
                    if t.is_empty() {
                        return Some(at);
                    }
                    if t.iter().any(|&c| (c < b' ' && c != b'\t') || c == 0x7f) {
                        return None;
                    }
                }
            }
            if b.len() < at + size + 2 || &b[at + size..at + size + 2] != b"\r\n" {
                return None;
            }
            at += size + 2;
        }
    }

    /// A well-formed request: head and body.
    fn request() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]);
        let path = "/[a-z0-9/?=&]{0,12}";
        let extra = prop::collection::vec(("[A-Za-z-]{1,8}", "[ -~]{0,12}"), 0..4);
        let body = prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..40),
                "(;[a-z]{1,5}(=[a-z0-9]{1,5})?)?",
            ),
            0..4,
        );
        let chunked = any::<bool>();
        let trailer = prop::option::of("[a-z]{1,6}: [a-z0-9]{0,6}");
        (method, path, extra, body, chunked, trailer).prop_map(
            |(method, path, extra, chunks, chunked, trailer)| {
                let mut h = format!("{method} {path} HTTP/1.1\r\nHost: app.example\r\n");
                for (n, v) in &extra {
                    h.push_str(&format!("X-{n}: {}\r\n", v.trim()));
                }
                let data: Vec<u8> = chunks.iter().flat_map(|(d, _)| d.clone()).collect();
                let mut body = Vec::new();
                if chunked {
                    h.push_str("Transfer-Encoding: chunked\r\n\r\n");
                    for (d, ext) in chunks.iter().filter(|(d, _)| !d.is_empty()) {
                        body.extend_from_slice(format!("{:x}{ext}\r\n", d.len()).as_bytes());
                        body.extend_from_slice(d);
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n");
                    if let Some(t) = trailer {
                        body.extend_from_slice(t.as_bytes());
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"\r\n");
                } else {
                    h.push_str(&format!("Content-Length: {}\r\n\r\n", data.len()));
                    body = data;
                }
                let mut b = h.into_bytes();
                b.extend_from_slice(&body);
                // A pipelined request after it.
                b.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: app.example\r\n\r\n");
                b
            },
        )
    }

    /// A mutation: at a fraction of the length, replace, insert or remove a byte,
    /// usually one framing depends on.
    fn mutation() -> impl Strategy<Value = (f64, u8, u8)> {
        let byte = prop_oneof![
            4 => prop::sample::select(b"\r\n \t:,;0123456789abcdefxX\"\0+-".to_vec()),
            1 => any::<u8>(),
        ];
        (0.0..1.0f64, 0u8..3, byte)
    }

    fn mutate(mut b: Vec<u8>, muts: &[(f64, u8, u8)]) -> Vec<u8> {
        for &(at, kind, byte) in muts {
            let i = ((b.len() as f64) * at) as usize;
            match kind {
                0 if i < b.len() => b[i] = byte,
                1 => b.insert(i.min(b.len()), byte),
                _ if i < b.len() => {
                    b.remove(i);
                }
                _ => {}
            }
        }
        b
    }

    /// The codec's decision on the head at the start of `b`, fed in the pieces that
    /// `cuts` mark: `None` while the head is incomplete.
    fn decide(b: &[u8], cuts: &[usize]) -> Option<Result<ReqHead, ()>> {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (b.len() + 1)).collect();
        ends.push(b.len());
        ends.sort_unstable();
        for end in ends {
            match parse_request(&b[..end], MAX_BODY, |_, _, _| {}) {
                Parsed::Partial => continue,
                Parsed::Done(h) => return Some(Ok(h)),
                Parsed::Refused(_) => return Some(Err(())),
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn codec_forwards_only_what_it_fully_validated(
            req in request(),
            muts in prop::collection::vec(mutation(), 0..4),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let b = mutate(req, &muts);
            let whole = decide(&b, &[]);
            // The same decision whatever the splits.
            let split = decide(&b, &cuts);
            prop_assert_eq!(
                whole.as_ref().map(|r| r.as_ref().map(|h| (h.len, h.body)).ok()),
                split.as_ref().map(|r| r.as_ref().map(|h| (h.len, h.body)).ok())
            );
            let Some(Ok(head)) = whole else {
                return Ok(());
            };
            // Forwarded: the strict reading agrees on where the head ends and how
            // the body is framed.
            prop_assert_eq!(oracle_head(&b), Some((head.len, head.body)), "{:?}", String::from_utf8_lossy(&b));
            // The body: the framer passes on only a prefix of what the strict
            // reading accepts, and all of it exactly when the body is complete.
            let body = &b[head.len..];
            let mut framer = BodyFramer::request(head.body);
            let mut taken = 0;
            let mut at = 0;
            let mut ends: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            ends.push(body.len());
            ends.sort_unstable();
            for end in ends {
                if end > at {
                    taken += framer.accept(&body[at..end]);
                    at = end;
                }
                if framer.bad() || framer.done() {
                    break;
                }
            }
            if head.body == Framing::Chunked {
                match oracle_chunked(body) {
                    Some(n) => {
                        prop_assert!(framer.done() && !framer.bad(), "{:?}", String::from_utf8_lossy(body));
                        prop_assert_eq!(taken, n);
                    }
                    None => prop_assert!(!framer.done() || framer.bad(), "{:?}", String::from_utf8_lossy(body)),
                }
            } else if let Framing::Length(n) = head.body {
                prop_assert_eq!(taken as u64, n.min(body.len() as u64));
            }
        }
    }
}

//! Spots request heads with ambiguous framing in the raw bytes a client sends.
//!
//! hyper drops `Content-Length` when `Transfer-Encoding` is also present and keeps one of
//! several equal `Content-Length` lines, so the proxy never sees that a request could be
//! framed two ways. RFC 9112 §6.3 says such a message ought to be handled as an error; we
//! answer it with 400, as nginx does. This scanner follows HTTP/1.1 request framing (as
//! hyper does) over the raw bytes to tell which head was the first ambiguous one.

use memchr::memchr;

/// Bytes of a line that are ever judged: a framing header's name and a short value, or a
/// chunk size. Longer lines are skipped, not copied.
const LINE_CAP: usize = 64;
/// A line split across reads is carried up to the judged bytes plus its CR.
const CARRY: usize = LINE_CAP + 1;

/// Follows request framing over the bytes read from one client connection.
#[derive(Debug, Clone)]
pub(crate) struct FramingScanner {
    carry: Carry,
    framer: Framer,
}

impl Default for FramingScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl FramingScanner {
    pub(crate) fn new() -> Self {
        Self {
            carry: Carry {
                buf: [0; CARRY],
                len: 0,
                overflow: false,
                cr: false,
            },
            framer: Framer {
                state: State::Head,
                in_head: false,
                head: Head::default(),
                heads_seen: 0,
                first_ambiguous: None,
            },
        }
    }

    /// Scans the next bytes read from the client; reads may split anywhere.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.framer.state {
                State::Stopped => return,
                State::Body(left) => {
                    let (rest, left) = skip(bytes, left);
                    bytes = rest;
                    self.framer.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::ChunkData(left) => {
                    let (rest, left) = skip(bytes, left);
                    bytes = rest;
                    self.framer.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers { .. } => {
                    let Some(end) = memchr(b'\n', bytes) else {
                        self.carry.push(bytes);
                        return;
                    };
                    self.line(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                }
            }
        }
    }

    /// Judges a line, `raw` being what this read holds of it before its LF.
    fn line(&mut self, raw: &[u8]) {
        if self.carry.len == 0 {
            // The usual case: the whole line is in this read, judge it in place.
            let cr = raw.last() == Some(&b'\r');
            let kept = &raw[..raw.len().min(CARRY)];
            self.framer.on_line(Line::new(kept, raw.len() > CARRY, cr));
        } else {
            self.carry.push(raw);
            let c = &self.carry;
            self.framer
                .on_line(Line::new(&c.buf[..c.len], c.overflow, c.cr));
            self.carry.clear();
        }
    }

    /// Index (0-based, in order on this connection) of the first ambiguous request head,
    /// known once that head's final empty line has been fed.
    pub(crate) fn first_ambiguous_head(&self) -> Option<u64> {
        self.framer.first_ambiguous
    }

    /// Request heads read to their end, the ambiguous one included.
    #[cfg(test)]
    pub(crate) fn heads_seen(&self) -> u64 {
        self.framer.heads_seen
    }
}

/// Where in the request stream the next byte belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Request line and header lines, or empty lines before a request line.
    Head,
    /// `Content-Length` body bytes still to come.
    Body(u64),
    ChunkSize,
    /// Chunk data bytes still to come.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// After the last chunk; `in_line` while a trailer line has not met its CRLF.
    Trailers {
        in_line: bool,
    },
    /// For good: ambiguity found, or framing we do not follow (tunnels, what hyper rejects).
    Stopped,
}

/// The start of a line that began in an earlier read.
#[derive(Debug, Clone)]
struct Carry {
    buf: [u8; CARRY],
    len: usize,
    /// The line is longer than `buf`.
    overflow: bool,
    /// The last byte seen so far is a CR.
    cr: bool,
}

impl Carry {
    fn push(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else { return };
        self.cr = last == b'\r';
        let n = bytes.len().min(CARRY - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self.overflow |= n < bytes.len();
    }

    fn clear(&mut self) {
        self.len = 0;
        self.overflow = false;
        self.cr = false;
    }
}

/// One line, as far as it is judged.
#[derive(Clone, Copy)]
struct Line<'a> {
    /// At most `LINE_CAP` bytes from the start, without the final CR when `whole`.
    text: &'a [u8],
    /// `text` is the entire line.
    whole: bool,
    /// The line ended in CRLF rather than a bare LF.
    crlf: bool,
}

impl<'a> Line<'a> {
    /// `raw`: the first `CARRY` bytes of the line before its LF; `overflow`: there were
    /// more; `cr`: its last byte is a CR. Both read paths go through here so that they
    /// judge a line the same wherever the reads split it.
    fn new(raw: &'a [u8], overflow: bool, cr: bool) -> Self {
        let content = match raw {
            [rest @ .., b'\r'] if !overflow => rest,
            _ => raw,
        };
        Line {
            text: &content[..content.len().min(LINE_CAP)],
            whole: !overflow && content.len() <= LINE_CAP,
            crlf: cr,
        }
    }

    fn is_empty(&self) -> bool {
        self.whole && self.text.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Framer {
    state: State,
    /// The current head's request line was seen; before it, empty lines are skipped.
    in_head: bool,
    head: Head,
    heads_seen: u64,
    first_ambiguous: Option<u64>,
}

impl Framer {
    fn on_line(&mut self, line: Line<'_>) {
        self.state = match self.state {
            State::Head => return self.head_line(line),
            State::ChunkSize => match chunk_size(line) {
                Some(0) => State::Trailers { in_line: false },
                Some(n) => State::ChunkData(n),
                None => State::Stopped,
            },
            // hyper accepts exactly CRLF after chunk data.
            State::ChunkEnd if line.is_empty() && line.crlf => State::ChunkSize,
            State::ChunkEnd => State::Stopped,
            // hyper ends a trailer line only at CRLF (a bare LF is part of the line), and
            // the body at a CRLF that starts a line.
            State::Trailers { in_line: false } if line.is_empty() && line.crlf => State::Head,
            State::Trailers { .. } => State::Trailers {
                in_line: !line.crlf,
            },
            s @ (State::Body(_) | State::ChunkData(_) | State::Stopped) => s,
        };
    }

    fn head_line(&mut self, line: Line<'_>) {
        let text = line.text;
        if !self.in_head {
            // RFC 9112 §2.2: empty lines before a request line are ignored (httparse too).
            if !line.is_empty() {
                self.in_head = true;
                self.head = Head {
                    bare_lf: !line.crlf,
                    ..Head::default()
                };
            }
            return;
        }
        // A line of the head ending in a bare LF: some parsers end the line there,
        // others read on (RFC 9112 §2.2 lets a recipient do either), so the framing
        // is ambiguous.
        self.head.bare_lf |= !line.crlf;
        // A line that is not whole is never empty: it has LINE_CAP bytes.
        let Some(&first) = text.first() else {
            return self.end_head();
        };
        // Most header lines are none of these; look at one byte before comparing names.
        match first | 0x20 {
            b'c' => {
                if let Some(v) = value_of(text, b"content-length") {
                    self.head.content_length(v, line.whole);
                }
            }
            b't' => {
                if let Some(v) = value_of(text, b"transfer-encoding") {
                    self.head.transfer_encoding(v, line.whole);
                }
            }
            _ => {}
        }
    }

    fn end_head(&mut self) {
        let index = self.heads_seen;
        self.heads_seen += 1;
        self.in_head = false;
        let head = self.head;
        self.state = if head.is_ambiguous() {
            self.first_ambiguous = Some(index);
            State::Stopped
        } else if head.unknown_length {
            // A body we cannot measure.
            State::Stopped
        } else {
            match (head.transfer_encoding, head.content_length) {
                (Some(Coding::Chunked), _) => State::ChunkSize,
                // hyper answers 400 when the last coding is not chunked.
                (Some(Coding::Other | Coding::Unknown), _) => State::Stopped,
                (None, Some(n)) if n > 0 => State::Body(n),
                (None, _) => State::Head,
            }
        };
    }
}

/// What one head says about its framing.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    content_length_lines: u8,
    content_length: Option<u64>,
    /// A `Content-Length` value that is not plain digits.
    bad_length: bool,
    /// A `Content-Length` value too long or too large to judge.
    unknown_length: bool,
    /// The last coding of the last `Transfer-Encoding` line, as hyper reads it.
    transfer_encoding: Option<Coding>,
    /// A line of the head ended in a bare LF.
    bare_lf: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Chunked,
    Other,
    /// The line was too long to find its last coding.
    Unknown,
}

impl Head {
    fn content_length(&mut self, value: &[u8], whole: bool) {
        self.content_length_lines = self.content_length_lines.saturating_add(1);
        if !whole {
            self.unknown_length = true;
        } else if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            self.bad_length = true;
        } else {
            let n = value.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match n {
                Some(n) => self.content_length = Some(n),
                None => self.unknown_length = true,
            }
        }
    }

    fn transfer_encoding(&mut self, value: &[u8], whole: bool) {
        // hyper: the last coding of the last line decides; it must be `chunked`.
        let coding = if !whole {
            Coding::Unknown
        } else {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
            if trim(last).eq_ignore_ascii_case(b"chunked") {
                Coding::Chunked
            } else {
                Coding::Other
            }
        };
        self.transfer_encoding = Some(coding);
    }

    fn is_ambiguous(&self) -> bool {
        self.bad_length
            || self.content_length_lines > 1
            || (self.content_length_lines > 0 && self.transfer_encoding.is_some())
            || self.bare_lf
    }
}

/// The value of a header line named `name` (lowercase), trimmed of spaces and tabs.
fn value_of<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (n, rest) = text.split_at_checked(name.len())?;
    let value = rest.strip_prefix(b":")?;
    n.eq_ignore_ascii_case(name).then(|| trim(value))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The size on a chunk-size line (`1a;name=value`), or None where hyper would fail or
/// the size runs past what was kept of the line.
fn chunk_size(line: Line<'_>) -> Option<u64> {
    // hyper wants CRLF here; a bare LF is an error to it.
    if !line.crlf {
        return None;
    }
    let text = line.text;
    let digits = text
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(text.len());
    match text.get(digits) {
        Some(b';' | b' ' | b'\t') => {}
        None if line.whole => {}
        _ => return None,
    }
    if digits == 0 {
        return None;
    }
    text[..digits].iter().try_fold(0u64, |n, &b| {
        let d = char::from(b).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })
}

/// Skips up to `left` body bytes: returns the rest of `bytes` and what is still to skip.
fn skip(bytes: &[u8], left: u64) -> (&[u8], u64) {
    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
    (&bytes[n..], left - n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Verdict = (Option<u64>, u64, State);

    fn verdict(s: &FramingScanner) -> Verdict {
        (s.first_ambiguous_head(), s.heads_seen(), s.framer.state)
    }

    fn fed(parts: &[&[u8]]) -> FramingScanner {
        let mut s = FramingScanner::new();
        for p in parts {
            s.feed(p);
        }
        s
    }

    /// Scans `input` whole, byte by byte, split in two at every position and, when short,
    /// in three at every pair of positions; all must agree. Returns the verdict.
    fn scan(input: &[u8]) -> Verdict {
        let want = verdict(&fed(&[input]));
        let mut s = FramingScanner::new();
        for b in input {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(verdict(&s), want, "byte by byte");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(verdict(&fed(&[a, b])), want, "split at {i}");
        }
        if input.len() <= 300 {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let parts = [&input[..i], &input[i..j], &input[j..]];
                    assert_eq!(verdict(&fed(&parts)), want, "split at {i}, {j}");
                }
            }
        }
        want
    }

    /// Asserts the first ambiguous head and the heads seen, however `input` is split.
    fn check(input: &[u8], ambiguous: Option<u64>, heads: u64) -> State {
        let (got, seen, state) = scan(input);
        let shown = String::from_utf8_lossy(input);
        assert_eq!(got, ambiguous, "first ambiguous head of {shown:?}");
        assert_eq!(seen, heads, "heads seen in {shown:?}");
        state
    }

    const GET: &[u8] = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\
        User-Agent: curl/8.5.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nAccept-Language: en\r\n\
        Connection: keep-alive\r\n\r\n";
    const CL_TE: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\
        Transfer-Encoding: chunked\r\n\r\n";
    const DUP_CL: &[u8] = b"POST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn pipelined_gets_are_not_ambiguous() {
        assert!(GET.len() > 140);
        let state = check(&cat(&[GET, GET, GET]), None, 3);
        assert_eq!(state, State::Head);
        check(b"", None, 0);
        // An unfinished head is not counted.
        check(&cat(&[GET, b"GET / HTTP/1.1\r\nHost: a\r\n"]), None, 1);
    }

    #[test]
    fn content_length_with_transfer_encoding_in_either_order() {
        check(CL_TE, Some(0), 1);
        let te_cl = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\
            Content-Length: 4\r\n\r\n";
        check(te_cl, Some(0), 1);
        check(&cat(&[GET, CL_TE, GET]), Some(1), 2);
        // Ambiguous even when the coding is not chunked or the value not a number.
        check(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\n",
            Some(0),
            1,
        );
        check(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding:\r\n\r\n",
            Some(0),
            1,
        );
    }

    #[test]
    fn duplicate_content_length_even_when_equal() {
        check(DUP_CL, Some(0), 1);
        check(&cat(&[GET, GET, DUP_CL, GET]), Some(2), 3);
        check(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            Some(0),
            1,
        );
    }

    #[test]
    fn content_length_that_is_not_plain_digits() {
        for value in [
            &b"+5"[..],
            b"5, 5",
            b"5,5",
            b"",
            b" \t ",
            b"5 5",
            b"-1",
            b"0x5",
            b"5\x0b",
        ] {
            let input = cat(&[
                b"POST / HTTP/1.1\r\nContent-Length:",
                value,
                b"\r\n\r\nxxxxx",
            ]);
            check(&input, Some(0), 1);
        }
        // Spaces and tabs around the value are optional whitespace; leading zeros are digits.
        let ok = b"POST / HTTP/1.1\r\nContent-Length: \t 005\t \r\n\r\nhello";
        assert_eq!(check(ok, None, 1), State::Head);
        check(&cat(&[ok, GET]), None, 2);
    }

    #[test]
    fn chunked_body_is_followed_to_the_next_head() {
        // Extensions, upper-case hex, data that looks like framing, and trailers.
        let post = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            5;name=value\r\n0\r\n\r\n\r\n\
            1A ; a=\"b;c\"\r\nContent-Length: 1\r\n\r\nxxxxx\r\n\
            3\t\r\nabc\r\n\
            0;last\r\nX-Checksum: abc\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(check(post, None, 1), State::Head);
        check(&cat(&[post, CL_TE]), Some(1), 2);
        check(&cat(&[post, GET, DUP_CL]), Some(2), 3);
        // No trailers, and a CRLF between requests (skipped like any leading empty line).
        let bare = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\r\n";
        check(&cat(&[bare, bare, DUP_CL]), Some(2), 3);
    }

    #[test]
    fn long_chunk_extension_keeps_framing() {
        let mut post = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;".to_vec();
        post.extend_from_slice(&[b'x'; 300]);
        post.extend_from_slice(b"\r\nabcd\r\n0\r\n\r\n");
        check(&cat(&[&post, DUP_CL]), Some(1), 2);
    }

    #[test]
    fn content_length_body_that_looks_like_a_head() {
        let body = cat(&[DUP_CL, CL_TE]);
        let post = cat(&[
            format!(
                "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            &body,
        ]);
        assert_eq!(check(&cat(&[&post, GET]), None, 2), State::Head);
        check(&cat(&[&post, GET, CL_TE]), Some(2), 3);
        // A zero length means no body at all.
        check(
            &cat(&[b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", DUP_CL]),
            Some(1),
            2,
        );
    }

    #[test]
    fn long_lines_between_framing_headers_are_skipped() {
        let cookie = cat(&[b"Cookie: session=", &[b'a'; 4096], b"\r\n"]);
        let head = cat(&[
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\n",
            &cookie,
            b"Content-Length: 0\r\n\r\n",
        ]);
        check(&head, Some(0), 1);
        let fine = cat(&[b"GET / HTTP/1.1\r\n", &cookie, b"Content-Length: 0\r\n\r\n"]);
        assert_eq!(check(&cat(&[&fine, &fine]), None, 2), State::Head);
        // A long request line and long headers that start like the framing ones.
        let mut long = b"GET /".to_vec();
        long.extend_from_slice(&[b'p'; 500]);
        long.extend_from_slice(b" HTTP/1.1\r\nContent-Type: text/plain; charset=");
        long.extend_from_slice(&[b'c'; 200]);
        long.extend_from_slice(b"\r\nTrace-Id: ");
        long.extend_from_slice(&[b't'; 200]);
        long.extend_from_slice(b"\r\nUser-Agent: ");
        long.extend_from_slice(&[b'u'; 200]);
        long.extend_from_slice(b"\r\n\r\n");
        check(&cat(&[&long, DUP_CL]), Some(1), 2);
    }

    #[test]
    fn framing_header_too_long_to_judge() {
        let long_cl = cat(&[b"Content-Length: ", &[b'0'; 60], b"5\r\n"]);
        let alone = cat(&[b"POST / HTTP/1.1\r\n", &long_cl, b"\r\nhello"]);
        assert_eq!(check(&cat(&[&alone, DUP_CL]), None, 1), State::Stopped);
        // Still a second framing header, whatever its value.
        let with_te = cat(&[
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
            &long_cl,
            b"\r\n",
        ]);
        check(&with_te, Some(0), 1);

        let long_te = b"Transfer-Encoding: gzip, gzip, gzip, gzip, gzip, gzip, gzip, chunked\r\n";
        let alone = cat(&[b"POST / HTTP/1.1\r\n", long_te, b"\r\n0\r\n\r\n"]);
        assert_eq!(check(&cat(&[&alone, DUP_CL]), None, 1), State::Stopped);
        let with_cl = cat(&[
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\n",
            long_te,
            b"\r\n",
        ]);
        check(&with_cl, Some(0), 1);

        // Too large for u64.
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(check(&cat(&[huge, DUP_CL]), None, 1), State::Stopped);
    }

    #[test]
    fn upgrade_and_connect_requests_are_framed_like_any_other() {
        // A refused upgrade (no 101) leaves the connection serving requests, so the
        // scan goes on; after a real upgrade hyper dispatches nothing more, so what the
        // scanner then makes of tunnel bytes does not matter.
        let ws =
            b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        check(&cat(&[GET, ws, DUP_CL, CL_TE]), Some(2), 3);
        let connect = b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n";
        check(&cat(&[connect, DUP_CL]), Some(1), 2);
        // An ambiguous upgrade request is still reported.
        let bad_ws = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        check(bad_ws, Some(0), 1);
        // Browsers send this on every navigation; it is not an upgrade.
        let uir = b"GET / HTTP/1.1\r\nUpgrade-Insecure-Requests: 1\r\n\r\n";
        check(&cat(&[uir, DUP_CL]), Some(1), 2);
        // Methods are case-sensitive: `connect` is not CONNECT.
        check(&cat(&[b"connect / HTTP/1.1\r\n\r\n", DUP_CL]), Some(1), 2);
    }

    #[test]
    fn bad_chunk_framing_stops_the_scan() {
        let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
        ] {
            let input = cat(&[head, body, DUP_CL]);
            assert_eq!(check(&input, None, 1), State::Stopped, "{body:?}");
        }
        // A long chunk size whose digits run past what is kept.
        let long = cat(&[head, &[b'0'; 100], b"5\r\nhello\r\n0\r\n\r\n", DUP_CL]);
        assert_eq!(check(&long, None, 1), State::Stopped);
        // The last coding must be chunked.
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(check(&cat(&[gzip, DUP_CL]), None, 1), State::Stopped);
    }

    #[test]
    fn header_names_are_case_insensitive() {
        check(
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\nCONTENT-LENGTH: 1\r\n\r\n",
            Some(0),
            1,
        );
        check(
            b"POST / HTTP/1.1\r\ntRANSFER-eNCODING: CHUNKED\r\ncOnTeNt-LeNgTh: 0\r\n\r\n",
            Some(0),
            1,
        );
        let chunked = b"POST / HTTP/1.1\r\nTRANSFER-ENCODING:Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        check(&cat(&[chunked, DUP_CL]), Some(1), 2);
        // An upgrade request is framed like any other.
        check(
            &cat(&[b"GET / HTTP/1.1\r\nUPGRADE: h2c\r\n\r\n", DUP_CL]),
            Some(1),
            2,
        );
        // Names must match whole.
        let near = b"POST / HTTP/1.1\r\nContent-Length-Extra: 1\r\nContent-Lengths: 1\r\n\
            Transfer-Encodings: chunked\r\nContent-Length: 0\r\n\r\n";
        check(&cat(&[near, DUP_CL]), Some(1), 2);
    }

    #[test]
    fn bare_lf_line_ends_are_ambiguous() {
        // A head with bare LF line ends is ambiguous from its first line.
        let get = b"GET / HTTP/1.1\nHost: a\n\n";
        check(&cat(&[GET, get, GET]), Some(1), 2);
        // One header line ending in a bare LF is enough.
        let mixed = b"POST / HTTP/1.1\r\nContent-Length: 3\n\r\nabc";
        check(&cat(&[GET, mixed, GET]), Some(1), 2);
        // So is a bare LF ending the head.
        check(&cat(&[b"GET / HTTP/1.1\r\nHost: a\r\n\n", GET]), Some(0), 1);
    }

    #[test]
    fn empty_lines_before_a_request_line_are_skipped() {
        check(&cat(&[b"\r\n\n\r\n", GET, b"\r\n", DUP_CL]), Some(1), 2);
        check(b"\r\n\r\n\n", None, 0);
    }

    #[test]
    fn trailers_end_where_hyper_ends_them() {
        // hyper ends trailer lines only at CRLF, so everything up to the CRLF CRLF below is
        // trailer to it, and the bytes that look like a request are not a head.
        let post = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\n\
            GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(check(post, None, 1), State::Head);
        check(&cat(&[post, DUP_CL]), Some(1), 2);
    }

    #[test]
    fn nothing_changes_after_an_ambiguous_head() {
        let mut s = fed(&[GET, DUP_CL]);
        assert_eq!(verdict(&s), (Some(1), 2, State::Stopped));
        s.feed(CL_TE);
        s.feed(GET);
        assert_eq!(verdict(&s), (Some(1), 2, State::Stopped));
    }

    const PIECES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"POST /p HTTP/1.1\n",
        b"CONNECT h:1 HTTP/1.1\r\n",
        b"Host: h\r\n",
        b"Content-Length: 3\r\n",
        b"content-length:0\n",
        b"Content-Length: 3, 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Upgrade: websocket\r\n",
        b"Cookie: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"abc",
        b"5;x=y\r\n",
        b"0\r\n",
        b"hello",
        b"\x00\xff",
    ];

    proptest! {
        #[test]
        fn any_split_agrees(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..30),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let input = pieces.concat();
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for &to in &at {
                parts.push(&input[from..to]);
                from = to;
            }
            parts.push(&input[from..]);
            prop_assert_eq!(verdict(&fed(&parts)), verdict(&fed(&[&input])));
        }

        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let whole = verdict(&fed(&[&bytes]));
            let halves = bytes.split_at(bytes.len() / 2);
            prop_assert_eq!(verdict(&fed(&[halves.0, halves.1])), whole);
        }
    }
}

//! Just enough HTTP/1.1 for the broker's three calls: one request per
//! connection (`Connection: close`), a response framed by `Content-Length`,
//! chunked encoding or the end of the stream, and every buffer that may
//! hold the token or secret bytes wiped when dropped. No I/O of its own
//! beyond `Read`/`Write`, so the framing is tested on byte slices.

use std::io::{self, Read, Write};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::schedule::MAX_RETRY_AFTER;

/// The largest response read; leases are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A response: status, the one header the sidecar acts on, and the body.
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// `Retry-After` in seconds, when the server sent one.
    pub retry_after: Option<Duration>,
    /// The body, wiped from memory when dropped.
    pub body: Zeroizing<Vec<u8>>,
}

/// Why no response could be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Reading or writing the connection failed (timeouts included).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's bytes are not an HTTP/1.1 response the client can read.
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    /// The response is larger than [`MAX_RESPONSE_BYTES`].
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The connection ended before the response did.
    #[error("connection closed before the response was complete")]
    Truncated,
}

/// Serialises a request with a bearer token and an optional JSON body.
/// The result holds the token: it is wiped when dropped.
pub fn encode_request(
    method: &str,
    path: &str,
    host: &str,
    bearer: &[u8],
    json_body: Option<&[u8]>,
) -> Zeroizing<Vec<u8>> {
    let body = json_body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-sidecar/{}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if json_body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    let capacity = head.len() + "Authorization: Bearer \r\n\r\n".len() + bearer.len() + body.len();
    let mut request = Zeroizing::new(Vec::with_capacity(capacity));
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(b"Authorization: Bearer ");
    request.extend_from_slice(bearer);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    request
}

/// Writes `request` and reads the response.
pub fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> Result<Response, HttpError> {
    stream.write_all(request)?;
    stream.flush()?;
    read_response(stream)
}

/// How the body of a response ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    retry_after: Option<Duration>,
    len: usize,
    framing: Framing,
}

/// Reads one response from `stream`.
pub fn read_response(stream: &mut impl Read) -> Result<Response, HttpError> {
    let mut buffer = Zeroizing::new(Vec::with_capacity(8 * 1024));
    let mut head: Option<Head> = None;
    loop {
        if head.is_none() {
            head = parse_head(&buffer)?;
        }
        if let Some(parsed) = &head
            && let Some(body) = complete_body(parsed, &buffer[parsed.len..])?
        {
            return Ok(Response {
                status: parsed.status,
                retry_after: parsed.retry_after,
                body,
            });
        }
        let read = match read_more(stream, &mut buffer) {
            Ok(read) => read,
            // rustls reports a peer that closes without close_notify so.
            Err(HttpError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(error) => return Err(error),
        };
        if read == 0 {
            return match head {
                Some(Head {
                    status,
                    retry_after,
                    len,
                    framing: Framing::UntilClose,
                }) => Ok(Response {
                    status,
                    retry_after,
                    body: Zeroizing::new(buffer[len..].to_vec()),
                }),
                _ => Err(HttpError::Truncated),
            };
        }
    }
}

/// Appends what `stream` has to `buffer`, growing it by copying into a new
/// allocation so that no freed allocation keeps secret bytes.
fn read_more(stream: &mut impl Read, buffer: &mut Zeroizing<Vec<u8>>) -> Result<usize, HttpError> {
    if buffer.len() >= MAX_RESPONSE_BYTES {
        return Err(HttpError::TooLarge);
    }
    if buffer.capacity() - buffer.len() < 4096 {
        let capacity = (buffer.capacity() * 2).clamp(8 * 1024, MAX_RESPONSE_BYTES + 4096);
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(buffer);
        *buffer = grown;
    }
    let filled = buffer.len();
    let room = (buffer.capacity() - filled).min(MAX_RESPONSE_BYTES + 1 - filled);
    buffer.resize(filled + room, 0);
    let read = stream.read(&mut buffer[filled..]);
    buffer.truncate(filled + *read.as_ref().unwrap_or(&0));
    Ok(read?)
}

fn parse_head(buffer: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(HttpError::Malformed(error.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| HttpError::Malformed("no status code".into()))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let retry_after = header("retry-after")
        .and_then(|value| value.parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    let chunked = header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().ends_with("chunked"));
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = header("content-length") {
        Framing::Length(
            length
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {length:?}")))?,
        )
    } else {
        Framing::UntilClose
    };
    if let Framing::Length(length) = framing
        && length > MAX_RESPONSE_BYTES
    {
        return Err(HttpError::TooLarge);
    }
    Ok(Some(Head {
        status,
        retry_after,
        len,
        framing,
    }))
}

/// The body if all of it is in `bytes`.
fn complete_body(head: &Head, bytes: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, HttpError> {
    match head.framing {
        Framing::Length(length) if bytes.len() >= length => {
            Ok(Some(Zeroizing::new(bytes[..length].to_vec())))
        }
        Framing::Length(_) | Framing::UntilClose => Ok(None),
        Framing::Chunked => decode_chunked(bytes),
    }
}

/// Decodes a chunked body; `None` while it is incomplete.
pub fn decode_chunked(mut bytes: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, HttpError> {
    let mut body = Zeroizing::new(Vec::with_capacity(bytes.len()));
    loop {
        let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&bytes[..line_end]);
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size_text:?}")))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            // Trailers, if any, end with an empty line.
            let mut rest = bytes;
            loop {
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                if end == 0 {
                    return Ok(Some(body));
                }
                rest = &rest[end + 2..];
            }
        }
        if size > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        if bytes.len() < size + 2 {
            return Ok(None);
        }
        if &bytes[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out its bytes a few at a time, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn read(bytes: &[u8], step: usize) -> Result<Response, HttpError> {
        read_response(&mut Trickle(bytes, step))
    }

    #[test]
    fn a_content_length_body_is_read_across_small_reads() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\":\"b\"}\r\nextra";
        for step in [1, 3, 1000] {
            let response = read(raw, step).unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body.as_slice(), b"{\"a\":\"b\"}\r\n");
        }
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: 1\r\n\r\n";
        for step in [1, 7, 1000] {
            assert_eq!(read(raw, step).unwrap().body.as_slice(), b"Wikipedia");
        }
        assert!(matches!(
            decode_chunked(b"zz\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(decode_chunked(b"4\r\nWi").unwrap().is_none());
    }

    #[test]
    fn a_body_without_length_ends_with_the_connection() {
        let response = read(b"HTTP/1.1 503 Unavailable\r\nRetry-After: 7\r\n\r\ndown", 2).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(response.body.as_slice(), b"down");
    }

    #[test]
    fn an_absurd_retry_after_is_clamped_and_a_malformed_one_ignored() {
        let retry_after = |value: &str| {
            let raw = format!(
                "HTTP/1.1 503 Unavailable\r\nRetry-After: {value}\r\nContent-Length: 0\r\n\r\n"
            );
            read(raw.as_bytes(), 1000).unwrap().retry_after
        };
        assert_eq!(retry_after(&u64::MAX.to_string()), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&i64::MAX.to_string()), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("0"), Some(Duration::ZERO));
        for bad in [
            "-1",
            "99999999999999999999999",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "",
        ] {
            assert_eq!(retry_after(bad), None, "{bad}");
        }
    }

    #[test]
    fn no_content_has_no_body_and_truncation_is_an_error() {
        let response = read(b"HTTP/1.1 204 No Content\r\n\r\n", 5).unwrap();
        assert_eq!(response.status, 204);
        assert!(response.body.is_empty());
        assert!(matches!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 5),
            Err(HttpError::Truncated)
        ));
        assert!(matches!(
            read(b"HTTP/1.1 200", 5),
            Err(HttpError::Truncated)
        ));
        assert!(matches!(
            read(b"garbage\r\n\r\n", 50),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_responses_are_refused() {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE_BYTES + 1
        );
        assert!(matches!(
            read(raw.as_bytes(), 100),
            Err(HttpError::TooLarge)
        ));
        let mut endless = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        endless.resize(MAX_RESPONSE_BYTES + 100, b'x');
        assert!(matches!(
            read(&endless, 64 * 1024),
            Err(HttpError::TooLarge)
        ));
    }

    #[test]
    fn requests_carry_the_token_length_and_close() {
        let request = encode_request("POST", "/v1/leases", "b:8443", b"tok", Some(b"{}"));
        let text = String::from_utf8(request.to_vec()).unwrap();
        assert!(text.starts_with("POST /v1/leases HTTP/1.1\r\nHost: b:8443\r\n"));
        assert!(text.contains("Authorization: Bearer tok\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{}"));
    }
}

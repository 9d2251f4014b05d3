//! The small parts of HTTP/1.1 a stream needs, without I/O: the response head, the chunked
//! transfer coding, and the bench marker carried in every published event.

/// Largest response head accepted, in bytes.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;

/// What the response head says, as far as the load generator cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    /// `Retry-After` in seconds, when present and numeric.
    pub retry_after: Option<u64>,
}

/// Parses a response head (status line and headers, without the blank line).
pub fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let mut out = Head { status, chunked: false, retry_after: None };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("retry-after") {
            out.retry_after = value.parse().ok();
        }
    }
    Some(out)
}

/// Position just past the blank line ending the head, if the bytes hold one.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// A sans-IO decoder for `Transfer-Encoding: chunked`.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    size: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions up to the end of the size line.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The last chunk was read; trailers and anything after are ignored.
    Done,
}

/// The chunked framing was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

impl Chunked {
    /// Decodes `input`, handing each run of payload bytes to `out`.
    pub fn decode(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<(), ChunkError> {
        use ChunkState::*;
        while !input.is_empty() {
            match self.state {
                Size => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let digit = (b as char).to_digit(16).ok_or(ChunkError)? as usize;
                            self.size = self.size.checked_mul(16).and_then(|s| s.checked_add(digit)).ok_or(ChunkError)?;
                        }
                        b';' | b' ' | b'\t' => self.state = Ext,
                        b'\r' => self.state = SizeLf,
                        _ => return Err(ChunkError),
                    }
                }
                Ext => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\r' {
                        self.state = SizeLf;
                    }
                }
                SizeLf => {
                    if input[0] != b'\n' {
                        return Err(ChunkError);
                    }
                    input = &input[1..];
                    self.state = if self.size == 0 { Done } else { Data };
                }
                Data => {
                    let n = self.size.min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.size -= n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                }
                DataCr => {
                    if input[0] != b'\r' {
                        return Err(ChunkError);
                    }
                    input = &input[1..];
                    self.state = DataLf;
                }
                DataLf => {
                    if input[0] != b'\n' {
                        return Err(ChunkError);
                    }
                    input = &input[1..];
                    self.state = Size;
                }
                Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// The terminating zero-size chunk was read: the body is over.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The marker every published event carries in its data: `"bench":"<seq>:<publish ns>"`.
pub fn marker(seq: u64, ts_ns: u64) -> String {
    format!("\"bench\":\"{seq}:{ts_ns}\"")
}

/// Finds the bench marker in an event's data: `(sequence, publish time in ns)`.
pub fn parse_marker(data: &str) -> Option<(u64, u64)> {
    const KEY: &str = "\"bench\":\"";
    let start = data.find(KEY)? + KEY.len();
    let rest = &data[start..];
    let end = rest.find('"')?;
    let (seq, ts) = rest[..end].split_once(':')?;
    Some((seq.parse().ok()?, ts.parse().ok()?))
}

/// Nanoseconds since the UNIX epoch, the clock both publisher and receivers read.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_parsed() {
        let h = parse_head(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 5\r\nTransfer-Encoding: chunked").unwrap();
        assert_eq!(h, Head { status: 429, chunked: true, retry_after: Some(5) });
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(19));
        assert!(parse_head(b"garbage").is_none());
    }

    #[test]
    fn chunked_survives_any_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            d.decode(&body[..split], |b| out.extend_from_slice(b)).unwrap();
            d.decode(&body[split..], |b| out.extend_from_slice(b)).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.is_done());
        }
        assert!(Chunked::default().decode(b"zz\r\n", |_| {}).is_err());
    }

    #[test]
    fn marker_round_trips_inside_json() {
        let data = format!("{{\"type\":\"activity\",\"data\":{{\"metadata\":{{{}}}}}}}", marker(42, 1_700_000_000_123_456_789));
        assert_eq!(parse_marker(&data), Some((42, 1_700_000_000_123_456_789)));
        assert_eq!(parse_marker("{\"type\":\"ping\"}"), None);
    }
}

//! A lean Redis client for the online read: a read's command written in one go, and
//! its reply parsed in place, as byte ranges of one buffer, instead of a `redis::Value` and
//! an allocation per field. redis-rs's combinator-based parser and its allocations were about a
//! quarter of an uncached read's client time (perf of `bench ingest`'s reads); the read gets one
//! reply shape only: per command, an array of bulk strings and nulls (`MGET`).
//!
//! Connections come from a small pool. One is taken for a whole exchange and put back only after
//! every reply was read, so a read abandoned midway (a deadline) drops its connection instead of
//! leaving half a reply for the next read.

use std::{ops::Range, path::PathBuf, sync::Mutex, time::Duration};

use redis::{ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use crate::{Error, RedisConfig, Result};

/// Idle connections kept for reuse; more are opened while reads overlap, and closed after.
const MAX_IDLE: usize = 32;

/// Where and how to connect.
#[derive(Debug)]
enum Address {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// A pool of connections to one Redis.
#[derive(Debug)]
pub(crate) struct Pool {
    url: String,
    address: Address,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    /// For connecting, and for a whole exchange.
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

#[derive(Debug)]
struct Connection {
    stream: Stream,
    buffer: Vec<u8>,
}

/// The replies of one exchange: per reply, the ranges of its elements in the read buffer
/// (`None`: a null).
pub(crate) struct Replies<'a> {
    buffer: &'a [u8],
    elements: Vec<Option<Range<usize>>>,
    /// Where each reply's elements start in `elements`, and one past the last.
    starts: Vec<usize>,
}

impl<'a> Replies<'a> {
    /// The elements of reply `i`.
    pub(crate) fn reply(&self, i: usize) -> impl Iterator<Item = Option<&'a [u8]>> + '_ {
        self.elements[self.starts[i]..self.starts[i + 1]].iter().map(|e| e.clone().map(|r| &self.buffer[r]))
    }

    /// The number of elements of reply `i`.
    pub(crate) fn len(&self, i: usize) -> usize {
        self.starts[i + 1] - self.starts[i]
    }
}

impl Pool {
    /// A pool for the configured Redis; connects once, so an unreachable Redis fails here.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self> {
        let pool = Self::lazy(config)?;
        let connection = pool.open().await.map_err(|source| pool.error(source))?;
        pool.put_back(connection);
        Ok(pool)
    }

    /// A pool that connects when first used (every exchange opens a connection when none is
    /// idle), so a Redis that is down now is used once it answers. Fails only on a bad URL.
    pub(crate) fn lazy(config: &RedisConfig) -> Result<Self> {
        let problem = |detail: String| Error::Redis {
            url: config.url.clone(),
            source: RedisError::from((ErrorKind::InvalidClientConfig, "unsupported Redis URL", detail)),
        };
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|source| Error::Redis { url: config.url.clone(), source })?;
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Address::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Address::Unix(path.clone()),
            other => return Err(problem(format!("{other:?}: the read client speaks plain TCP or a Unix socket"))),
        };
        let settings = info.redis_settings();
        Ok(Self {
            url: config.url.clone(),
            address,
            db: settings.db(),
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            timeout: config.connect_timeout(),
            idle: Mutex::default(),
        })
    }

    /// Sends `commands` (packed RESP, `count` commands) and hands their replies to `parse`.
    pub(crate) async fn exchange<T>(
        &self,
        commands: &[u8],
        count: usize,
        parse: impl FnOnce(&Replies<'_>) -> T,
    ) -> Result<T> {
        let taken = self.idle.lock().expect("the pool lock is never poisoned: nothing panics holding it").pop();
        let exchange = async {
            let pooled = match taken {
                Some(mut pooled) => match pooled.send(commands, count).await {
                    Ok(replies) => Some((pooled, replies)),
                    // An idle connection Redis has closed (a restart, a timeout of its own): the
                    // others are likely closed too. Reads are safe to repeat, on a new one.
                    Err(e) if e.kind() == ErrorKind::Io => {
                        self.idle.lock().expect("the pool lock is never poisoned: nothing panics holding it").clear();
                        None
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let (mut connection, replies) = match pooled {
                Some(done) => done,
                None => {
                    let mut fresh = self.open().await?;
                    let replies = fresh.send(commands, count).await?;
                    (fresh, replies)
                }
            };
            let (elements, starts) = replies;
            let parsed = parse(&Replies { buffer: &connection.buffer, elements, starts });
            connection.buffer.clear();
            Ok::<_, RedisError>((parsed, connection))
        };
        let (parsed, connection) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.map_err(|source| self.error(source))?,
            Err(_) => {
                let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply within the timeout");
                return Err(self.error(timeout.into()));
            }
        };
        self.put_back(connection);
        Ok(parsed)
    }

    fn put_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().expect("the pool lock is never poisoned: nothing panics holding it");
        if idle.len() < MAX_IDLE {
            idle.push(connection);
        }
    }

    /// Opens a connection: authenticates and selects the database when the URL says so.
    async fn open(&self) -> std::result::Result<Connection, RedisError> {
        let connecting = async {
            let stream = match &self.address {
                Address::Tcp(host, port) => {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Stream::Tcp(stream)
                }
                Address::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            };
            std::io::Result::Ok(stream)
        };
        let stream = tokio::time::timeout(self.timeout, connecting).await.map_err(|_| {
            RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))
        })??;
        let mut connection = Connection { stream, buffer: Vec::with_capacity(64 * 1024) };
        let mut handshake = Vec::new();
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = &self.username {
                auth.arg(username);
            }
            handshake.push(auth.arg(password).get_packed_command());
        }
        if self.db != 0 {
            handshake.push(redis::cmd("SELECT").arg(self.db).get_packed_command());
        }
        for command in handshake {
            connection.stream.write_all(&command).await?;
            connection.read_replies(1).await?;
            connection.buffer.clear();
        }
        Ok(connection)
    }

    fn error(&self, source: RedisError) -> Error {
        Error::Redis { url: self.url.clone(), source }
    }

    /// A reply of the right shape that does not answer what was asked.
    pub(crate) fn unexpected(&self, detail: String) -> Error {
        self.error(protocol_error(detail))
    }
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(bytes).await,
            Self::Unix(s) => s.write_all(bytes).await,
        }
    }

    async fn read_more(&mut self, buffer: &mut Vec<u8>) -> std::io::Result<usize> {
        if buffer.capacity() - buffer.len() < 16 * 1024 {
            buffer.reserve(buffer.capacity().max(64 * 1024));
        }
        match self {
            Self::Tcp(s) => s.read_buf(buffer).await,
            Self::Unix(s) => s.read_buf(buffer).await,
        }
    }
}

/// A read's replies: every element's range in the buffer, and where each reply's elements start.
type Ranges = (Vec<Option<Range<usize>>>, Vec<usize>);

impl Connection {
    /// Writes `commands` and reads their `count` replies.
    async fn send(&mut self, commands: &[u8], count: usize) -> std::result::Result<Ranges, RedisError> {
        self.stream.write_all(commands).await?;
        self.read_replies(count).await
    }

    /// Reads `count` replies into the buffer; returns their elements and where each starts.
    async fn read_replies(&mut self, count: usize) -> std::result::Result<Ranges, RedisError> {
        let mut elements = Vec::new();
        let mut starts = Vec::with_capacity(count + 1);
        let mut at = 0;
        while starts.len() < count {
            let before = elements.len();
            match parse_reply(&self.buffer, at, &mut elements)? {
                Some(end) => {
                    starts.push(before);
                    at = end;
                }
                None => {
                    elements.truncate(before);
                    if self.stream.read_more(&mut self.buffer).await? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
            }
        }
        starts.push(elements.len());
        Ok((elements, starts))
    }
}

/// Appends the header of a command of `n` arguments (an array of bulk strings) to `out`; each
/// argument follows with [`bulk`].
pub(crate) fn array(out: &mut Vec<u8>, n: usize) {
    header(out, b'*', n);
}

/// Appends one argument of a command.
pub(crate) fn bulk(out: &mut Vec<u8>, arg: &[u8]) {
    header(out, b'$', arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// A type byte and a decimal count, by hand: `write!` was 3-4% of an uncached read's client
/// time.
fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push(kind);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// One line at `at`: its content and where the next begins (`None`: not all of it is here).
fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buffer.get(at..)?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let content = rest[..end].strip_suffix(b"\r")?;
    Some((content, at + end + 1))
}

fn protocol_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected reply from Redis", detail))
}

/// A length or count: decimal digits, `-1` for a null.
fn number(digits: &[u8]) -> std::result::Result<i64, RedisError> {
    let (sign, magnitude) = match digits.split_first() {
        Some((b'-', rest)) => (-1, rest),
        _ => (1, digits),
    };
    // 18 digits cannot overflow an i64.
    if magnitude.is_empty() || magnitude.len() > 18 || !magnitude.iter().all(u8::is_ascii_digit) {
        return Err(protocol_error(format!("not a length: {:?}", String::from_utf8_lossy(digits))));
    }
    Ok(sign * magnitude.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')))
}

/// Parses one reply starting at `at`, pushing its elements: `Ok(Some(end))` when complete,
/// `Ok(None)` when more bytes are needed. A server error (`-ERR …`) or another shape is an error.
fn parse_reply(
    buffer: &[u8],
    at: usize,
    elements: &mut Vec<Option<Range<usize>>>,
) -> std::result::Result<Option<usize>, RedisError> {
    let Some((header, mut next)) = line(buffer, at) else { return Ok(None) };
    let (kind, rest) = header.split_first().ok_or_else(|| protocol_error("an empty line".into()))?;
    match kind {
        b'+' | b':' => {
            // A status (`+OK` of AUTH and SELECT) or an integer: kept as one element.
            elements.push(Some(at + 1..next - 2));
            Ok(Some(next))
        }
        b'-' => Err(RedisError::from((
            ErrorKind::Extension,
            "Redis refused a read",
            String::from_utf8_lossy(rest).into_owned(),
        ))),
        b'*' => {
            let n = number(rest)?;
            for _ in 0..n.max(0) {
                let Some((element, after)) = line(buffer, next) else { return Ok(None) };
                match element.split_first() {
                    Some((b'$', length)) => {
                        let length = number(length)?;
                        if length < 0 {
                            elements.push(None);
                            next = after;
                        } else {
                            let end = after + length as usize;
                            if buffer.len() < end + 2 {
                                return Ok(None);
                            }
                            elements.push(Some(after..end));
                            next = end + 2;
                        }
                    }
                    Some((b'_', _)) => {
                        elements.push(None);
                        next = after;
                    }
                    _ => {
                        return Err(protocol_error(format!("an array element {:?}", String::from_utf8_lossy(element))));
                    }
                }
            }
            Ok(Some(next))
        }
        _ => Err(protocol_error(format!("a reply starting {:?}", String::from_utf8_lossy(header)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8], count: usize) -> std::result::Result<Option<Vec<Vec<Option<String>>>>, RedisError> {
        let mut elements = Vec::new();
        let mut starts = Vec::new();
        let mut at = 0;
        while starts.len() < count {
            let before = elements.len();
            match parse_reply(bytes, at, &mut elements)? {
                Some(end) => {
                    starts.push(before);
                    at = end;
                }
                None => return Ok(None),
            }
        }
        starts.push(elements.len());
        let replies = Replies { buffer: bytes, elements, starts };
        Ok(Some(
            (0..count)
                .map(|i| replies.reply(i).map(|e| e.map(|b| String::from_utf8_lossy(b).into_owned())).collect())
                .collect(),
        ))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        array(&mut out, 3);
        for arg in [b"MGET".as_slice(), b"p:a:x", b""] {
            bulk(&mut out, arg);
        }
        array(&mut out, 1);
        bulk(&mut out, &[b'k'; 1234]);
        assert_eq!(&out[..31], b"*3\r\n$4\r\nMGET\r\n$5\r\np:a:x\r\n$0\r\n\r\n");
        assert_eq!(&out[31..44], b"*1\r\n$1234\r\nkk");
        assert_eq!(number(b"-1").unwrap(), -1);
        assert_eq!(number(b"120").unwrap(), 120);
        for bad in [&b""[..], b"-", b"1a", b"+1", b"9999999999999999999"] {
            assert!(number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arrays_of_bulk_strings_and_nulls_parse_in_place() {
        let bytes = b"*3\r\n$2\r\nab\r\n$-1\r\n$0\r\n\r\n*0\r\n*1\r\n$4\r\na\r\nb\r\n";
        let parsed = parse_all(bytes, 3).unwrap().unwrap();
        assert_eq!(parsed[0], [Some("ab".into()), None, Some(String::new())]);
        assert!(parsed[1].is_empty());
        assert_eq!(parsed[2], [Some("a\r\nb".into())], "a bulk string is read by its length, not its lines");
    }

    #[test]
    fn a_reply_cut_anywhere_asks_for_more() {
        let bytes = b"*2\r\n$3\r\nabc\r\n$-1\r\n";
        for cut in 0..bytes.len() {
            assert!(parse_all(&bytes[..cut], 1).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse_all(bytes, 1).unwrap().is_some());
    }

    #[test]
    fn server_errors_and_other_shapes_are_errors() {
        let error = parse_all(b"-WRONGTYPE Operation against a key\r\n", 1).unwrap_err().to_string();
        assert!(error.contains("WRONGTYPE"), "{error}");
        assert!(parse_all(b"$3\r\nabc\r\n", 1).is_err());
        assert!(parse_all(b"*1\r\n:5\r\n", 1).is_err());
        assert!(parse_all(b"*x\r\n", 1).is_err());
    }
}

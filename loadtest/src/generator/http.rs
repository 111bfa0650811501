//! A minimal HTTP/1.1 client over one keep-alive TCP connection: enough for adrank's API
//! (responses with `content-length`), with nothing between the generator and the socket.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Why a request did not get a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    Connect,
    Timeout,
    /// The connection broke, or the response was not HTTP/1.1 with a content length.
    Protocol,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Connection {
    addr: std::net::SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
    out: Vec<u8>,
}

impl Connection {
    pub(crate) fn new(addr: std::net::SocketAddr) -> Self {
        Self { addr, host: addr.to_string(), stream: None, buffer: Vec::with_capacity(16 * 1024), out: Vec::new() }
    }

    /// Sends one POST and reads its response; returns the status and the body. Reconnects
    /// when needed.
    pub(crate) async fn post(&mut self, path: &str, body: &[u8], timeout: Duration) -> Result<(u16, &[u8]), Failure> {
        match tokio::time::timeout(timeout, self.exchange(path, body)).await {
            Ok(Ok((status, content))) => Ok((status, &self.buffer[content])),
            Ok(Err(failure)) => {
                self.stream = None;
                Err(failure)
            }
            Err(_) => {
                // The response may still arrive on this socket: never reuse it.
                self.stream = None;
                Err(Failure::Timeout)
            }
        }
    }

    /// The status and where the body lies in the buffer.
    async fn exchange(&mut self, path: &str, body: &[u8]) -> Result<(u16, std::ops::Range<usize>), Failure> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(|_| Failure::Connect)?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        // Head and body in one write: one syscall, one segment on the wire.
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.out.extend_from_slice(self.host.as_bytes());
        self.out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        self.out.extend_from_slice(body.len().to_string().as_bytes());
        self.out.extend_from_slice(b"\r\n\r\n");
        self.out.extend_from_slice(body);
        stream.write_all(&self.out).await.map_err(|_| Failure::Protocol)?;
        self.buffer.clear();
        loop {
            if let Some((status, head_len, content_length)) = parse_head(&self.buffer)? {
                let total = head_len + content_length;
                while self.buffer.len() < total {
                    read_more(stream, &mut self.buffer).await?;
                }
                return Ok((status, head_len..total));
            }
            read_more(stream, &mut self.buffer).await?;
        }
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), Failure> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => Err(Failure::Protocol),
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// `(status, head length, content length)` once the head is complete.
fn parse_head(buffer: &[u8]) -> Result<Option<(u16, usize, usize)>, Failure> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&buffer[..end]).map_err(|_| Failure::Protocol)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Protocol)?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or(Failure::Protocol)?;
    Ok(Some((status, end + 4, length)))
}

//! One gRPC connection (HTTP/2, tonic) for `adrank.v1.Ranking/Rank`, carrying request bodies
//! the source already encoded as protobuf: the generator measures the server, not an encoder.

use std::time::Duration;

use adrank_contracts::grpc::{RANK_PATH, http_status};
use bytes::{Buf as _, BufMut as _, Bytes};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

use super::http::Failure;

/// Messages passed through as the bytes they already are.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One HTTP/2 connection, one call at a time (as an HTTP/1.1 keep-alive connection).
#[derive(Debug)]
pub(crate) struct Connection {
    endpoint: Endpoint,
    client: Option<tonic::client::Grpc<Channel>>,
    reply: Bytes,
}

impl Connection {
    pub(crate) fn new(addr: std::net::SocketAddr) -> Self {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address is a valid URI authority")
            .tcp_nodelay(true);
        Self { endpoint, client: None, reply: Bytes::new() }
    }

    /// Calls `Rank` with `body` (an encoded `RankRequest`); returns the status as its HTTP
    /// equivalent and the reply's bytes (empty for an error status). Reconnects when needed.
    pub(crate) async fn rank(&mut self, body: &Bytes, timeout: Duration) -> Result<(u16, &[u8]), Failure> {
        match tokio::time::timeout(timeout, self.call(body, timeout)).await {
            Ok(Ok(status)) => Ok((status, &self.reply)),
            Ok(Err(failure)) => {
                self.client = None;
                Err(failure)
            }
            Err(_) => {
                self.client = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn call(&mut self, body: &Bytes, timeout: Duration) -> Result<u16, Failure> {
        if self.client.is_none() {
            let channel = self.endpoint.connect().await.map_err(|_| Failure::Connect)?;
            self.client = Some(tonic::client::Grpc::new(channel));
        }
        let client = self.client.as_mut().expect("connected above");
        client.ready().await.map_err(|_| Failure::Protocol)?;
        let mut request = tonic::Request::new(body.clone());
        request.set_timeout(timeout);
        match client.unary(request, PathAndQuery::from_static(RANK_PATH), Raw).await {
            Ok(reply) => {
                self.reply = reply.into_inner();
                Ok(200)
            }
            Err(status) => {
                self.reply = Bytes::new();
                // A transport error surfaces as UNKNOWN or UNAVAILABLE with no reply from the
                // server: the connection is not to be trusted again.
                if status.code() == tonic::Code::Unknown {
                    return Err(Failure::Protocol);
                }
                Ok(http_status(status.code()))
            }
        }
    }
}

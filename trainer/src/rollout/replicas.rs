//! Each rollout arm's requests as the serving replicas counted them, read from their `/metrics`
//! (the series of contracts::arm_requests) and summed across replicas.

use std::{collections::BTreeMap, time::Duration};

use adrank_contracts::arm_requests::{self, ArmRequests, ArmStep};
use adrank_registry::{Arm, Rollout};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;

/// The most a replica's `/metrics` may weigh.
const MAX_BODY: usize = 64 << 20;

/// A replica's metrics address: plain HTTP, as `adrank serve` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    authority: String,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// `http://host[:port]/path`; anything else is refused with the reason.
    pub fn parse(address: &str) -> Result<Self, String> {
        let url = url::Url::parse(address).map_err(|e| format!("`{address}` is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!("`{address}`: expected an http:// address of a replica's /metrics"));
        }
        let host = url.host_str().ok_or_else(|| format!("`{address}` names no host"))?.to_string();
        let port = url.port().unwrap_or(80);
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        let authority = format!("{host}:{port}");
        // `Url` keeps IPv6 hosts in brackets, as a socket address wants them written.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Self { authority, host, port, path: format!("{}{query}", url.path()) })
    }

    /// The same server's page at `path` (`/readyz` beside `/metrics`).
    pub fn at(&self, path: &str) -> Self {
        Self { path: path.to_string(), ..self.clone() }
    }

    /// The page, or why there is none.
    pub async fn get(&self) -> Result<String, String> {
        self.request(false).await
    }

    /// The page whatever the status code (a `/readyz` that says 503 and why).
    pub async fn get_any_status(&self) -> Result<String, String> {
        self.request(true).await
    }

    async fn request(&self, any_status: bool) -> Result<String, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("no HTTP: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(&self.path)
            .header(header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("no answer: {e}"))?;
        if !any_status && response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the page: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the page is not UTF-8".to_string())
    }
}

/// What the replicas said at one look: their series summed, and who did not answer (why).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub arms: BTreeMap<ArmStep, ArmRequests>,
    pub unanswered: Vec<String>,
}

impl Scrape {
    /// Reads every address at once, each within `timeout`.
    pub async fn read(addresses: &[String], timeout: Duration) -> Self {
        let mut reads = tokio::task::JoinSet::new();
        for address in addresses {
            let address = address.clone();
            reads.spawn(async move {
                let page = match Endpoint::parse(&address) {
                    Ok(endpoint) => tokio::time::timeout(timeout, endpoint.get())
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}"))),
                    Err(e) => Err(e),
                };
                (address, page.and_then(|page| arm_requests::parse(&page)))
            });
        }
        let mut scrape = Self::default();
        while let Some(joined) = reads.join_next().await {
            match joined {
                Ok((_, Ok(arms))) => {
                    for (key, figures) in arms {
                        scrape.arms.entry(key).or_default().add(&figures);
                    }
                }
                Ok((address, Err(why))) => scrape.unanswered.push(format!("{address}: {why}")),
                Err(e) => scrape.unanswered.push(format!("a read failed: {e}")),
            }
        }
        scrape.unanswered.sort();
        scrape
    }

    /// The rollout's arms as judged: production over every step so far (its answers do not
    /// depend on the split), the candidate at its current step (its load does).
    pub fn arms(&self, rollout: &Rollout) -> (ArmRequests, ArmRequests) {
        let (mut production, mut candidate) = (ArmRequests::default(), ArmRequests::default());
        for (key, figures) in &self.arms {
            if key.rollout != rollout.id {
                continue;
            }
            if key.arm == Arm::Production.as_str() {
                production.add(figures);
            } else if key.arm == Arm::Candidate.as_str() && key.step == rollout.step {
                candidate.add(figures);
            }
        }
        (production, candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_addresses() {
        let endpoint = Endpoint::parse("http://127.0.0.1:8080/metrics").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port, endpoint.path.as_str()), ("127.0.0.1", 8080, "/metrics"));
        let endpoint = Endpoint::parse("http://[::1]/metrics?x=1").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port, endpoint.path.as_str()), ("::1", 80, "/metrics?x=1"));
        assert!(Endpoint::parse("https://a/metrics").unwrap_err().contains("http://"));
        assert!(Endpoint::parse("127.0.0.1:8080").is_err());
    }
}

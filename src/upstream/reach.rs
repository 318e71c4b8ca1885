//! Whether the platform answers at all: a TCP connect to the upstream's host and port, at most
//! once per [`TTL`], shared by every caller (`/readyz`, `/metrics`). Cheap and cached, and only
//! reported — readiness stays about this process, because a check that depends on the one shared
//! upstream would take every replica out of the load balancer at once.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a probe's answer is reused.
pub const TTL: Duration = Duration::from_secs(10);
/// How long a probe may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The last probe's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    pub reachable: bool,
    /// Seconds since the probe ran.
    pub checked_secs_ago: u64,
    /// Why not, when not reachable (no address, no secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Reachability {
    /// `host:port` of the upstream base URL, or why it has none.
    target: Result<String, String>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Reachability {
    pub fn new(base_url: &str) -> Self {
        let target = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .ok_or_else(|| "the upstream base URL has no host".to_owned());
        Self {
            target,
            last: Mutex::new(None),
        }
    }

    /// The cached answer, probing first when it is older than [`TTL`]. Concurrent callers share
    /// one probe.
    pub async fn check(&self) -> Reach {
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().filter(|(at, _)| at.elapsed() < TTL).cloned();
        let (at, result) = match fresh {
            Some(v) => v,
            None => {
                let result = self.probe().await;
                *last = Some((Instant::now(), result.clone()));
                (Instant::now(), result)
            }
        };
        Reach {
            reachable: result.is_ok(),
            checked_secs_ago: at.elapsed().as_secs(),
            error: result.err(),
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let target = self.target.clone()?;
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect failed: {}", e.kind())),
            Err(_) => Err(format!(
                "no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_a_listening_port_and_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let up = Reachability::new(&format!("http://{open}"));
        assert!(up.check().await.reachable);

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let down = Reachability::new(&format!("http://{closed}/"));
        let reach = down.check().await;
        assert!(!reach.reachable);
        assert!(reach.error.unwrap().contains("connect failed"));
        assert!(!Reachability::new("not a url").check().await.reachable);
    }
}

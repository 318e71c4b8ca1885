//! Slow and idle clients: unfinished headers and bodies, idle kept-alive connections and the
//! connection caps. Each test talks raw TCP, so it controls exactly what is sent.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{start_with, Env, KEY};

/// How long a connection the gateway should close may take to be closed: the configured
/// timeouts are far shorter, this is slack for a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";

fn addr(env: &Env) -> String {
    env.gateway.trim_start_matches("http://").to_owned()
}

/// A connection that has sent `bytes` (and nothing more, for now).
async fn open(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp
}

/// Reads until the gateway closes the connection (end of stream or a reset) and returns what
/// came and how long the gateway took; fails if it is still open after [`SLACK`].
async fn until_closed(mut tcp: TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(SLACK, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "still open after {:?}; received {:?}",
        since.elapsed(),
        String::from_utf8_lossy(&got)
    );
    (got, since.elapsed())
}

/// Reads one whole answer (head and `Content-Length` body) and returns it as text.
async fn read_answer(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(SLACK, tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("readable");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// A connection that was served one request and is now idle (kept alive).
async fn served_and_idle(addr: &str) -> TcpStream {
    let mut tcp = open(addr, HEALTHZ).await;
    let answer = read_answer(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tcp
}

#[tokio::test]
async fn unfinished_headers_and_bodies_are_closed() {
    let timeout = Duration::from_millis(300);
    let env = start_with(|c| {
        c.server.header_read_timeout = timeout;
        c.server.body_read_timeout = timeout;
    })
    .await;
    let addr = addr(&env);
    let started = Instant::now();
    let mut headers = Vec::new();
    for _ in 0..50 {
        headers.push(
            open(
                &addr,
                b"POST /v1/images/generations HTTP/1.1\r\nHost: gateway\r\nAuthori",
            )
            .await,
        );
    }
    let head = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"prompt\": \"{}",
        "a".repeat(1000)
    );
    let mut bodies = Vec::new();
    for _ in 0..50 {
        bodies.push(open(&addr, head.as_bytes()).await);
    }

    // The gateway still serves everyone else.
    let a = env
        .generate(json!({"model": "sparkpix", "prompt": "p", "size": "512x512"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let headers =
        futures_util::future::join_all(headers.into_iter().map(|t| until_closed(t, started))).await;
    let bodies =
        futures_util::future::join_all(bodies.into_iter().map(|t| until_closed(t, started))).await;
    for (got, _) in &headers {
        assert!(
            got.is_empty(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(got)
        );
    }
    for (got, _) in &bodies {
        let text = String::from_utf8_lossy(got);
        assert!(
            text.starts_with("HTTP/1.1 400") && text.contains("invalid_request_error"),
            "an OpenAI-shaped 400, then closed: {text}"
        );
    }
    let slowest = |all: &[(Vec<u8>, Duration)]| all.iter().map(|(_, d)| *d).max().unwrap();
    eprintln!(
        "50 unfinished headers closed within {:?}, 50 unfinished bodies within {:?} (timeouts {timeout:?})",
        slowest(&headers),
        slowest(&bodies)
    );
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let env = start_with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let addr = addr(&env);
    let idle = futures_util::future::join_all((0..10).map(|_| served_and_idle(&addr))).await;
    let since = Instant::now();
    let closed =
        futures_util::future::join_all(idle.into_iter().map(|t| until_closed(t, since))).await;
    assert!(
        closed.iter().all(|(got, _)| got.is_empty()),
        "no more bytes"
    );
    eprintln!(
        "10 idle kept-alive connections closed within {:?}",
        closed.iter().map(|(_, d)| *d).max().unwrap()
    );
}

#[tokio::test]
async fn a_body_sent_in_pieces_within_the_gap_limit_is_served() {
    let gap = Duration::from_millis(300);
    let env = start_with(|c| c.server.body_read_timeout = gap).await;
    let body = serde_json::to_vec(&json!({"model": "sparkpix", "prompt": "p", "size": "512x512"}))
        .unwrap();
    // Eight pieces, 100 ms apart: longer than the gap limit in all, never a gap that long.
    let pieces: Vec<Vec<u8>> = body
        .chunks(body.len().div_ceil(8))
        .map(<[u8]>::to_vec)
        .collect();
    let stream = futures_util::stream::unfold(pieces.into_iter(), |mut rest| async move {
        let piece = rest.next()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(piece), rest))
    });
    let started = Instant::now();
    let res = env
        .post_raw("/v1/images/generations")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let a = Env::read(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(started.elapsed() > gap, "the upload outlasted one gap");
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    let env = start_with(|c| {
        c.server.max_connections_per_ip = 5;
        // Held connections stay open for the test's length.
        c.server.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = addr(&env);
    // Five connections, each served once: all five are counted.
    let held = futures_util::future::join_all((0..5).map(|_| served_and_idle(&addr))).await;

    let mut sixth = TcpStream::connect(&addr).await.unwrap();
    // The gateway may already have closed it: a failed write is a refusal too.
    let _ = sixth.write_all(HEALTHZ).await;
    let (got, took) = until_closed(sixth, Instant::now()).await;
    assert!(
        got.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    eprintln!("the 6th connection from one address was closed after {took:?}");

    // Once they are gone, the address is served again (as soon as the gateway has seen them
    // close).
    drop(held);
    let deadline = Instant::now() + SLACK;
    loop {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        if tcp.write_all(HEALTHZ).await.is_ok() {
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(SLACK, tcp.read(&mut buf)).await {
                if buf[..n].starts_with(b"HTTP/1.1 200") {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "still refused after {SLACK:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn accepting_waits_at_the_connection_cap() {
    let env = start_with(|c| {
        c.server.max_connections = 3;
        c.server.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = addr(&env);
    let mut held = futures_util::future::join_all((0..3).map(|_| served_and_idle(&addr))).await;

    // The kernel completes the handshake, but the gateway does not accept it yet.
    let mut waiting = open(&addr, HEALTHZ).await;
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "no answer while at the cap: {early:?}");

    // One closes: the waiting connection is accepted and served.
    drop(held.pop());
    let answer = read_answer(&mut waiting).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

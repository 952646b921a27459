//! The API against clients that never log in and only hold on: idle, half-sent headers and
//! slow bodies are cut at their configured times, connections are capped per client address
//! (another address is still served), and the API stays reachable throughout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use palisade_tests::Controller;

/// The limits the test's controller runs with: short, so that the test is quick.
const LIMITS: &str = "api_header_timeout = \"2s\"\napi_body_timeout = \"2s\"\n\
                      api_idle_timeout = \"2s\"\napi_max_connections = 64\n\
                      api_max_connections_per_address = 4\n";
/// Beyond the configured time, what a loaded machine may add before a close is seen.
const SLACK: Duration = Duration::from_secs(4);

fn controller(extra: &str) -> (Controller, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, format!("{LIMITS}{extra}")).unwrap();
    let ctl = Controller::start_with(&["--config", path.to_str().unwrap()]);
    (ctl, dir)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A connection from `from` (any 127/8 address is loopback).
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    });
    let s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the server closes; what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on `s`, and the response's head and body (read by its Content-Length).
fn exchange(s: &mut TcpStream, request: &str) -> String {
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// Writes `byte` on (a clone of) `s` every `every`, until the server closes or 20 s passed.
fn trickle(s: &TcpStream, byte: &'static [u8], every: Duration) -> std::thread::JoinHandle<()> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(every);
            if w.write_all(byte).is_err() {
                break;
            }
        }
    })
}

fn status_request(token: &str) -> String {
    format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

#[test]
fn idle_half_sent_and_slow_connections_are_cut_at_their_configured_times() {
    let (ctl, _dir) = controller("");

    // Silent from the start.
    let mut idle = connect(ctl.api);
    let t = Instant::now();
    assert_eq!(read_to_close(&mut idle), "");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(2) + SLACK,
        "idle connection closed after {took:?}"
    );

    // Idle after a request (keep-alive).
    let mut kept = connect(ctl.api);
    let reply = exchange(&mut kept, &status_request(&ctl.admin_token));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let t = Instant::now();
    assert_eq!(read_to_close(&mut kept), "");
    assert!(
        t.elapsed() < Duration::from_secs(2) + SLACK,
        "{:?}",
        t.elapsed()
    );

    // Headers dripped a byte at a time, never finished.
    let mut drip = connect(ctl.api);
    drip.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: controller\r\nX-Slow: ")
        .unwrap();
    let t = Instant::now();
    let dripper = trickle(&drip, b"a", Duration::from_millis(200));
    read_to_close(&mut drip);
    let closed = t.elapsed();
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(2) + SLACK,
        "half-sent headers closed after {closed:?}"
    );
    drop(drip);
    dripper.join().unwrap();

    // A body that comes too slowly is cut with a JSON 408 and the connection closed.
    let mut slow = connect(ctl.api);
    slow.write_all(
        format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":",
            ctl.admin_token
        )
        .as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let mut sent = String::new();
    // A byte every 300 ms: never idle, never complete.
    let writer = trickle(&slow, b" ", Duration::from_millis(300));
    sent.push_str(&read_to_close(&mut slow));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(2) + SLACK,
        "slow body cut after {took:?}"
    );
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(
        sent.to_ascii_lowercase().contains("connection: close"),
        "{sent}"
    );
    assert!(sent.contains("\"code\":\"request_timeout\""), "{sent}");
    drop(slow);
    writer.join().unwrap();

    // Still reachable.
    let mut again = connect(ctl.api);
    let reply = exchange(&mut again, &status_request(&ctl.admin_token));
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[test]
fn past_the_per_address_cap_a_connection_is_closed_at_once_and_other_addresses_are_served() {
    let (ctl, _dir) = controller("");
    let held: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", ctl.api)).collect();
    // The server counts a connection once it has accepted it: a request on each proves that.
    let mut held = held;
    for s in &mut held {
        let reply = exchange(s, &status_request(&ctl.admin_token));
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    let mut over = connect_from("127.0.0.1", ctl.api);
    let t = Instant::now();
    let _ = over.write_all(status_request(&ctl.admin_token).as_bytes());
    assert_eq!(read_to_close(&mut over), "", "served past the cap");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let mut other = connect_from("127.0.0.2", ctl.api);
    let reply = exchange(&mut other, &status_request(&ctl.admin_token));
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "another address: {reply}"
    );

    drop(held);
    let reply =
        palisade_tests::eventually(Duration::from_secs(10), "127.0.0.1 served again", || {
            let mut s = connect_from("127.0.0.1", ctl.api);
            let _ = s.write_all(status_request(&ctl.admin_token).as_bytes());
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                _ => None,
            }
        });
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let log = ctl.log();
    assert!(
        log.contains("API connection refused: this address's connection limit is reached"),
        "{log}"
    );
}

#[test]
fn a_caller_without_the_permission_is_refused_before_its_body_is_read() {
    // A long body time limit: a refusal that waited for the body would be seen.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "api_body_timeout = \"60s\"\n").unwrap();
    let ctl = Controller::start_with(&["--config", path.to_str().unwrap()]);
    let (status, v) = ctl.api(
        "POST",
        "/api/v1/users",
        Some(&ctl.admin_token),
        Some(serde_json::json!({"name": "vera", "role": "viewer"})),
    );
    assert_eq!(status, 201, "{v}");
    let viewer = v["token"]
        .as_str()
        .expect("the new user's token")
        .to_owned();

    for (auth, status, code) in [
        (
            format!("Authorization: Bearer {viewer}\r\n"),
            "403",
            "forbidden",
        ),
        (String::new(), "401", "unauthorized"),
    ] {
        let mut s = connect(ctl.api);
        s.write_all(
            format!(
                "POST /api/v1/rules HTTP/1.1\r\nHost: controller\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{{\"rules\":"
            )
            .as_bytes(),
        )
        .unwrap();
        let t = Instant::now();
        let reply = exchange(&mut s, "");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "refused after {:?}",
            t.elapsed()
        );
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        assert!(reply.contains(&format!("\"code\":\"{code}\"")), "{reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    // The admin may: its upload is read (and here refused for what it holds, not who sent it).
    let (status, v) = ctl.api(
        "POST",
        "/api/v1/rules",
        Some(&ctl.admin_token),
        Some(serde_json::json!({})),
    );
    assert_eq!(status, 400, "{v}");
}

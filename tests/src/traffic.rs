//! Real traffic between lab hosts: echo servers (TCP and UDP, IPv4 and IPv6) inside a host's
//! network namespace, and probes that try TCP connects, UDP round trips and pings from
//! another. Sockets are made on threads that entered the namespace with `setns`, so no helper
//! program is needed.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use crate::lab::LabHost;

/// The port every echo server listens on (TCP and UDP).
pub const ECHO_PORT: u16 = 9000;
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// Runs `f` on a thread inside `host`'s network namespace.
pub fn in_netns<T: Send + 'static>(host: &LabHost, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = host.netns_path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open the namespace");
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("probe thread")
}

/// Starts TCP and UDP echo servers on `[::]:ECHO_PORT` (IPv4 too) in `host`'s namespace; they
/// live as long as the test process.
pub fn serve_echo(host: &LabHost) {
    let (tcp, udp) = in_netns(host, || {
        let tcp = TcpListener::bind(("::", ECHO_PORT)).expect("tcp echo bind");
        let udp = UdpSocket::bind(("::", ECHO_PORT)).expect("udp echo bind");
        (tcp, udp)
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    let _ = s.write_all(&buf[..n]);
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// Starts a TCP echo server on `port` in `host`'s namespace that keeps each connection open
/// and echoes whatever comes until the peer closes it: a long-lived connection (a remote
/// shell) to test against. It lives as long as the test process.
pub fn serve_echo_held(host: &LabHost, port: u16) {
    let tcp = in_netns(host, move || {
        TcpListener::bind(("::", port)).expect("held echo bind")
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Opens a TCP connection from `from` to `to` (a [`serve_echo_held`] server) and keeps it:
/// the socket stays in `from`'s namespace.
pub fn hold(from: &LabHost, to: SocketAddr) -> TcpStream {
    in_netns(from, move || {
        TcpStream::connect_timeout(&to, PROBE_TIMEOUT).expect("open the held connection")
    })
}

/// Whether bytes sent over a held connection come back.
pub fn echoes(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Whether a TCP connection from `from` to `to`'s echo server gets its bytes back.
pub fn tcp(from: &LabHost, to: IpAddr) -> bool {
    in_netns(from, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(to, ECHO_PORT), PROBE_TIMEOUT)
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
    })
}

/// Whether a UDP datagram from `from` to `to`'s echo server comes back.
pub fn udp(from: &LabHost, to: IpAddr) -> bool {
    in_netns(from, move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let mut buf = [0u8; 4];
        s.send_to(b"ping", SocketAddr::new(to, ECHO_PORT)).is_ok()
            && s.recv_from(&mut buf).is_ok()
            && &buf == b"ping"
    })
}

/// Whether one ICMP echo from `from` to `to` is answered.
pub fn ping(from: &LabHost, to: IpAddr) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", &from.netns, "ping", "-c", "1", "-W", "1"])
        .arg(to.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What gets through from `from` to each of `to`'s addresses, as (label, reached) for every
/// probe: `tcp4`, `udp4`, `icmp4`, `tcp6`, `udp6`, `icmp6`.
pub fn reach(from: &LabHost, to: &LabHost) -> Vec<(&'static str, bool)> {
    let (v4, v6) = (IpAddr::V4(to.v4), IpAddr::V6(to.v6));
    vec![
        ("tcp4", tcp(from, v4)),
        ("udp4", udp(from, v4)),
        ("icmp4", ping(from, v4)),
        ("tcp6", tcp(from, v6)),
        ("udp6", udp(from, v6)),
        ("icmp6", ping(from, v6)),
    ]
}

/// Panics unless every probe from `from` to `to` gets through (`open`) or none does.
#[track_caller]
pub fn assert_reach(from: &LabHost, to: &LabHost, open: bool) {
    let got = reach(from, to);
    let wrong: Vec<_> = got.iter().filter(|(_, r)| *r != open).collect();
    assert!(
        wrong.is_empty(),
        "{} -> {}: expected every probe {}, got {got:?}",
        from.name,
        to.name,
        if open { "through" } else { "blocked" }
    );
}

/// Our table in `host`'s namespace, as nft lists it (`None` if absent).
pub fn nft_table(host: &LabHost) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &host.netns,
            "nft",
            "list",
            "table",
            "inet",
            "palisade",
        ])
        .output()
        .expect("run nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nft ARGS` in `host`'s namespace; panics if it fails.
pub fn nft(host: &LabHost, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &host.netns, "nft"])
        .args(args)
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

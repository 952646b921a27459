//! Network exceptions of a selective isolation, parsed from the operator's text
//! (`198.51.100.0/24 tcp 443 out`) so that a bad one is refused when it is requested.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Both,
}

/// Traffic a selective isolation still allows: to/from a network, optionally one protocol and
/// port, in one or both directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub addr: IpAddr,
    pub prefix: u8,
    pub proto: Option<Proto>,
    pub port: Option<u16>,
    pub direction: Direction,
}

impl Exception {
    /// Parses `CIDR [tcp|udp|icmp [PORT]] [in|out|both]`; the direction defaults to both.
    pub fn parse(text: &str) -> Result<Exception, String> {
        let bad = |why: &str| format!("invalid exception {text:?}: {why}");
        let mut words = text.split_whitespace();
        let net = words.next().ok_or_else(|| bad("empty"))?;
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IPv4 or IPv6 address or CIDR first"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("prefix must be 0 to {max}")))?,
            None => max,
        };
        if prefix == 0 {
            return Err(bad(
                "a /0 exception would allow everything; use release from isolation",
            ));
        }
        let mut e = Exception {
            addr: network(addr, prefix),
            prefix,
            proto: None,
            port: None,
            direction: Direction::Both,
        };
        for w in words {
            match w {
                "tcp" | "udp" | "icmp" if e.proto.is_none() => {
                    e.proto = Some(match w {
                        "tcp" => Proto::Tcp,
                        "udp" => Proto::Udp,
                        _ => Proto::Icmp,
                    })
                }
                "in" | "out" | "both" => {
                    e.direction = match w {
                        "in" => Direction::In,
                        "out" => Direction::Out,
                        _ => Direction::Both,
                    }
                }
                port if e.port.is_none() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    let p: u16 = port
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| bad("port must be 1 to 65535"))?;
                    if !matches!(e.proto, Some(Proto::Tcp | Proto::Udp)) {
                        return Err(bad("a port needs tcp or udp before it"));
                    }
                    e.port = Some(p);
                }
                other => return Err(bad(&format!("unexpected {other:?}"))),
            }
        }
        Ok(e)
    }
}

/// `addr` with the host bits below `prefix` cleared.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(p) = self.proto {
            f.write_str(match p {
                Proto::Tcp => " tcp",
                Proto::Udp => " udp",
                Proto::Icmp => " icmp",
            })?;
        }
        if let Some(port) = self.port {
            write!(f, " {port}")?;
        }
        f.write_str(match self.direction {
            Direction::In => " in",
            Direction::Out => " out",
            Direction::Both => " both",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_parse_and_normalise() {
        let e = Exception::parse("198.51.100.7/24 tcp 443 out").unwrap();
        assert_eq!(e.to_string(), "198.51.100.0/24 tcp 443 out");
        assert_eq!(
            Exception::parse("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128 both"
        );
        assert_eq!(
            Exception::parse("192.0.2.0/28 icmp in")
                .unwrap()
                .to_string(),
            "192.0.2.0/28 icmp in"
        );
    }

    #[test]
    fn bad_exceptions_say_what_is_wrong() {
        for (text, why) in [
            ("", "empty"),
            ("example.com", "IPv4 or IPv6"),
            ("198.51.100.0/33", "prefix must be 0 to 32"),
            ("0.0.0.0/0", "would allow everything"),
            ("198.51.100.0/24 443", "needs tcp or udp"),
            ("198.51.100.0/24 icmp 8", "needs tcp or udp"),
            ("198.51.100.0/24 tcp 0", "1 to 65535"),
            ("198.51.100.0/24 tcp 99999", "1 to 65535"),
            ("198.51.100.0/24 sctp", "unexpected \"sctp\""),
        ] {
            let err = Exception::parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}

//! The network planner: desired isolation and containment in, the complete ruleset of our own
//! nftables table out (applied atomically with `nft -f -` by the Linux applier,
//! `host::linux::net`). Pure, so every case is a golden test.
//!
//! While isolated, nothing is accepted for being part of a known connection as such: there is
//! no blanket `ct state established,related accept`, which would keep every connection opened
//! before the isolation (an attacker's shell) alive. A packet passes only if it matches an
//! allowed flow itself — the controller, DHCP, neighbour discovery and the exceptions, each in
//! its direction — or is the *reply* (`ct direction reply`) of a connection such a rule
//! allowed: the exception read backwards (peer as the source, its port as the source port).
//! This holds for connections that existed before the rules went in, so no conntrack entry
//! needs flushing, and it keeps no state of its own (a connection marked as allowed by one
//! isolation could outlive it into the next). ICMP errors about an excepted connection come
//! from routers, not the peer, and are not passed; the controller's link needs none (QUIC
//! finds its path MTU itself).

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use palisade_common::net::{Direction, Exception, Proto};

/// Our table; we never touch another.
pub const TABLE: &str = "palisade";

#[derive(Debug, Clone, Default)]
pub struct NetPlan {
    /// The controller's addresses, resolved and pinned before the rules go in.
    pub controller: Vec<SocketAddr>,
    /// `Some` while isolated: the exceptions of a selective isolation (empty: full).
    pub isolation: Option<Vec<Exception>>,
    /// Peers this device must not talk to (containment by the other agents).
    pub contained: Vec<IpAddr>,
    /// Their MAC addresses, where known: inbound frames from them are dropped.
    pub contained_macs: Vec<String>,
}

/// The `nft -f` script that replaces our table in one transaction (or removes it when there
/// is nothing to enforce). Base chains hook at `priority filter` (0), after conntrack (-200),
/// so that `ct state` is known when our rules look at it: at conntrack's own priority the
/// order is undefined, and replies to an allowed inbound flow were dropped.
pub fn script(plan: &NetPlan) -> String {
    let mut out = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if plan.isolation.is_none() && plan.contained.is_empty() && plan.contained_macs.is_empty() {
        return out;
    }
    let (v4, v6): (Vec<_>, Vec<_>) = plan.contained.iter().partition(|a| a.is_ipv4());
    let _ = writeln!(out, "table inet {TABLE} {{");
    set(&mut out, "contained_v4", "ipv4_addr", &v4);
    set(&mut out, "contained_v6", "ipv6_addr", &v6);
    if !plan.contained_macs.is_empty() {
        let _ = writeln!(
            out,
            "  set contained_mac {{\n    type ether_addr\n    elements = {{ {} }}\n  }}",
            plan.contained_macs.join(", ")
        );
    }
    for (chain, hook, peer) in [("input", "input", "saddr"), ("output", "output", "daddr")] {
        let policy = if plan.isolation.is_some() {
            "drop"
        } else {
            "accept"
        };
        let _ = writeln!(
            out,
            "  chain {chain} {{\n    type filter hook {hook} priority filter; policy {policy};"
        );
        let _ = writeln!(
            out,
            "    {}lo accept",
            if chain == "input" {
                "iifname "
            } else {
                "oifname "
            }
        );
        if !v4.is_empty() {
            let _ = writeln!(out, "    ip {peer} @contained_v4 drop");
        }
        if !v6.is_empty() {
            let _ = writeln!(out, "    ip6 {peer} @contained_v6 drop");
        }
        if chain == "input" && !plan.contained_macs.is_empty() {
            // Only inbound: a frame's destination MAC is not known yet at the output hook.
            let _ = writeln!(out, "    ether saddr @contained_mac drop");
        }
        if let Some(exceptions) = &plan.isolation {
            let inbound = chain == "input";
            for c in &plan.controller {
                let (fam, port_dir) = (
                    if c.is_ipv4() { "ip" } else { "ip6" },
                    if inbound { "sport" } else { "dport" },
                );
                let _ = writeln!(
                    out,
                    "    {fam} {peer} {} udp {port_dir} {} accept",
                    c.ip(),
                    c.port()
                );
            }
            // DHCP (its servers answer from addresses the client did not send to, so both
            // ways are stateless) and the neighbour discovery IPv6 cannot live without.
            let dhcp: [&str; 2] = if inbound {
                [
                    "meta nfproto ipv4 udp sport 67 udp dport 68",
                    "ip6 saddr fe80::/10 udp sport 547 udp dport 546",
                ]
            } else {
                [
                    "meta nfproto ipv4 udp sport 68 udp dport 67",
                    "ip6 daddr { fe80::/10, ff02::1:2 } udp sport 546 udp dport 547",
                ]
            };
            for rule in dhcp {
                let _ = writeln!(out, "    {rule} accept");
            }
            let _ = writeln!(
                out,
                "    icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
            );
            let (wanted, opposite) = if inbound {
                (Direction::In, Direction::Out)
            } else {
                (Direction::Out, Direction::In)
            };
            let towards = |e: &Exception, d| e.direction == d || e.direction == Direction::Both;
            for e in exceptions.iter().filter(|e| towards(e, wanted)) {
                let _ = writeln!(out, "    {} accept", exception(e, peer, "dport"));
            }
            // Replies to the connections the other chain's exceptions allowed.
            for e in exceptions.iter().filter(|e| towards(e, opposite)) {
                let _ = writeln!(
                    out,
                    "    ct direction reply {} accept",
                    exception(e, peer, "sport")
                );
            }
        }
        let _ = writeln!(out, "  }}");
    }
    if plan.isolation.is_some() {
        let _ = writeln!(
            out,
            "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n  }}"
        );
    }
    let _ = writeln!(out, "}}");
    out
}

fn set(out: &mut String, name: &str, ty: &str, addrs: &[&IpAddr]) {
    let _ = write!(out, "  set {name} {{\n    type {ty}\n");
    if !addrs.is_empty() {
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "    elements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(out, "  }}");
}

/// One exception as a rule body: the remote network (`peer`: the source inbound, the
/// destination outbound), then protocol and port (`port`: `dport` for the connection's own
/// packets, where it is our service port inbound and the remote's outbound; `sport` for its
/// replies).
fn exception(e: &Exception, peer: &str, port_field: &str) -> String {
    let fam = if e.addr.is_ipv4() { "ip" } else { "ip6" };
    let mut rule = format!("{fam} {peer} {}/{}", e.addr, e.prefix);
    match (e.proto, e.port) {
        (Some(Proto::Icmp), _) => rule.push_str(if e.addr.is_ipv4() {
            " meta l4proto icmp"
        } else {
            " meta l4proto ipv6-icmp"
        }),
        (Some(p), port) => {
            let proto = if p == Proto::Tcp { "tcp" } else { "udp" };
            match port {
                Some(port) => {
                    let _ = write!(rule, " {proto} {port_field} {port}");
                }
                None => {
                    let _ = write!(rule, " meta l4proto {proto}");
                }
            }
        }
        (None, _) => {}
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctl() -> Vec<SocketAddr> {
        vec![
            "198.51.100.1:7443".parse().unwrap(),
            "[2001:db8:100::1]:7443".parse().unwrap(),
        ]
    }

    #[test]
    fn nothing_to_enforce_removes_our_table_only() {
        assert_eq!(
            script(&NetPlan::default()),
            "table inet palisade\ndelete table inet palisade\n"
        );
    }

    /// The rules every isolation starts with, after `lo` and any containment drops.
    const ISOLATED_IN: &str = "    ip saddr 198.51.100.1 udp sport 7443 accept
    ip6 saddr 2001:db8:100::1 udp sport 7443 accept
    meta nfproto ipv4 udp sport 67 udp dport 68 accept
    ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept
    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
";
    const ISOLATED_OUT: &str = "    ip daddr 198.51.100.1 udp dport 7443 accept
    ip6 daddr 2001:db8:100::1 udp dport 7443 accept
    meta nfproto ipv4 udp sport 68 udp dport 67 accept
    ip6 daddr { fe80::/10, ff02::1:2 } udp sport 546 udp dport 547 accept
    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
";

    #[test]
    fn full_isolation_golden() {
        let plan = NetPlan {
            controller: ctl(),
            isolation: Some(vec![]),
            contained: vec![],
            contained_macs: vec![],
        };
        let expected = format!(
            "\
table inet palisade
delete table inet palisade
table inet palisade {{
  set contained_v4 {{
    type ipv4_addr
  }}
  set contained_v6 {{
    type ipv6_addr
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname lo accept
{ISOLATED_IN}  }}
  chain output {{
    type filter hook output priority filter; policy drop;
    oifname lo accept
{ISOLATED_OUT}  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
  }}
}}
"
        );
        assert_eq!(script(&plan), expected);
    }

    #[test]
    fn no_connection_passes_an_isolation_for_being_established() {
        // Only replies of allowed flows: a shell opened before the isolation dies with it.
        let s = script(&NetPlan {
            controller: ctl(),
            isolation: Some(vec![Exception::parse("192.0.2.0/24 tcp 443 out").unwrap()]),
            ..NetPlan::default()
        });
        assert!(!s.contains("ct state"), "{s}");
        assert!(
            s.lines()
                .filter(|l| l.contains("accept") && l.contains("ct "))
                .all(|l| l.trim_start().starts_with("ct direction reply ")),
            "{s}"
        );
    }

    #[test]
    fn selective_isolation_golden_allows_each_exception_and_its_replies_only() {
        let exceptions = vec![
            Exception::parse("192.0.2.0/24 tcp 443 out").unwrap(),
            Exception::parse("2001:db8:5::/48 icmp in").unwrap(),
            Exception::parse("198.51.100.64/26 udp both").unwrap(),
            Exception::parse("192.0.2.9/32 out").unwrap(),
        ];
        let plan = NetPlan {
            controller: ctl(),
            isolation: Some(exceptions),
            contained: vec![],
            contained_macs: vec![],
        };
        let expected = format!(
            "\
table inet palisade
delete table inet palisade
table inet palisade {{
  set contained_v4 {{
    type ipv4_addr
  }}
  set contained_v6 {{
    type ipv6_addr
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname lo accept
{ISOLATED_IN}    ip6 saddr 2001:db8:5::/48 meta l4proto ipv6-icmp accept
    ip saddr 198.51.100.64/26 meta l4proto udp accept
    ct direction reply ip saddr 192.0.2.0/24 tcp sport 443 accept
    ct direction reply ip saddr 198.51.100.64/26 meta l4proto udp accept
    ct direction reply ip saddr 192.0.2.9/32 accept
  }}
  chain output {{
    type filter hook output priority filter; policy drop;
    oifname lo accept
{ISOLATED_OUT}    ip daddr 192.0.2.0/24 tcp dport 443 accept
    ip daddr 198.51.100.64/26 meta l4proto udp accept
    ip daddr 192.0.2.9/32 accept
    ct direction reply ip6 daddr 2001:db8:5::/48 meta l4proto ipv6-icmp accept
    ct direction reply ip daddr 198.51.100.64/26 meta l4proto udp accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
  }}
}}
"
        );
        assert_eq!(script(&plan), expected);
    }

    #[test]
    fn isolation_with_containment_golden_drops_contained_peers_before_any_exception() {
        let plan = NetPlan {
            controller: ctl(),
            isolation: Some(vec![Exception::parse("198.51.100.0/24 tcp 22 in").unwrap()]),
            contained: vec![
                "198.51.100.10".parse().unwrap(),
                "2001:db8:100::a".parse().unwrap(),
            ],
            contained_macs: vec!["02:00:5e:10:00:01".into()],
        };
        let expected = format!(
            "\
table inet palisade
delete table inet palisade
table inet palisade {{
  set contained_v4 {{
    type ipv4_addr
    elements = {{ 198.51.100.10 }}
  }}
  set contained_v6 {{
    type ipv6_addr
    elements = {{ 2001:db8:100::a }}
  }}
  set contained_mac {{
    type ether_addr
    elements = {{ 02:00:5e:10:00:01 }}
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname lo accept
    ip saddr @contained_v4 drop
    ip6 saddr @contained_v6 drop
    ether saddr @contained_mac drop
{ISOLATED_IN}    ip saddr 198.51.100.0/24 tcp dport 22 accept
  }}
  chain output {{
    type filter hook output priority filter; policy drop;
    oifname lo accept
    ip daddr @contained_v4 drop
    ip6 daddr @contained_v6 drop
{ISOLATED_OUT}    ct direction reply ip daddr 198.51.100.0/24 tcp sport 22 accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
  }}
}}
"
        );
        assert_eq!(script(&plan), expected);
    }
    #[test]
    fn containment_golden_drops_both_directions_without_isolating() {
        let plan = NetPlan {
            controller: ctl(),
            isolation: None,
            contained: vec![
                "198.51.100.10".parse().unwrap(),
                "2001:db8:100::a".parse().unwrap(),
            ],
            contained_macs: vec!["02:00:5e:10:00:01".into()],
        };
        let expected = "\
table inet palisade
delete table inet palisade
table inet palisade {
  set contained_v4 {
    type ipv4_addr
    elements = { 198.51.100.10 }
  }
  set contained_v6 {
    type ipv6_addr
    elements = { 2001:db8:100::a }
  }
  set contained_mac {
    type ether_addr
    elements = { 02:00:5e:10:00:01 }
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname lo accept
    ip saddr @contained_v4 drop
    ip6 saddr @contained_v6 drop
    ether saddr @contained_mac drop
  }
  chain output {
    type filter hook output priority filter; policy accept;
    oifname lo accept
    ip daddr @contained_v4 drop
    ip6 daddr @contained_v6 drop
  }
}
";
        assert_eq!(script(&plan), expected);
    }
}

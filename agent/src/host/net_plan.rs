//! The network planner: desired isolation and containment in, the complete ruleset of our own
//! nftables table out (applied atomically with `nft -f` by the Linux applier, which is not
//! written yet). Pure, so every case is a golden test.

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
            let _ = writeln!(out, "    ct state established,related accept");
            for c in &plan.controller {
                let (fam, port_dir) = (
                    if c.is_ipv4() { "ip" } else { "ip6" },
                    if chain == "input" { "sport" } else { "dport" },
                );
                let _ = writeln!(
                    out,
                    "    {fam} {peer} {} udp {port_dir} {} accept",
                    c.ip(),
                    c.port()
                );
            }
            // DHCP and the neighbour discovery IPv6 cannot live without.
            let dhcp = if chain == "input" {
                "udp dport { 68, 546 }"
            } else {
                "udp dport { 67, 547 }"
            };
            let _ = writeln!(out, "    {dhcp} accept");
            let _ = writeln!(
                out,
                "    icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
            );
            let wanted = if chain == "input" {
                Direction::In
            } else {
                Direction::Out
            };
            for e in exceptions
                .iter()
                .filter(|e| e.direction == wanted || e.direction == Direction::Both)
            {
                let _ = writeln!(out, "    {} accept", exception(e, peer));
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

/// One exception as a rule body: the remote network (source inbound, destination outbound),
/// then protocol and port.
fn exception(e: &Exception, peer: &str) -> String {
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
                    // Inbound: our service port; outbound: the remote's. Both are the dport.
                    let _ = write!(rule, " {proto} dport {port}");
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

    #[test]
    fn full_isolation_golden() {
        let plan = NetPlan {
            controller: ctl(),
            isolation: Some(vec![]),
            contained: vec![],
            contained_macs: vec![],
        };
        let expected = "\
table inet palisade
delete table inet palisade
table inet palisade {
  set contained_v4 {
    type ipv4_addr
  }
  set contained_v6 {
    type ipv6_addr
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname lo accept
    ct state established,related accept
    ip saddr 198.51.100.1 udp sport 7443 accept
    ip6 saddr 2001:db8:100::1 udp sport 7443 accept
    udp dport { 68, 546 } accept
    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
  }
  chain output {
    type filter hook output priority filter; policy drop;
    oifname lo accept
    ct state established,related accept
    ip daddr 198.51.100.1 udp dport 7443 accept
    ip6 daddr 2001:db8:100::1 udp dport 7443 accept
    udp dport { 67, 547 } accept
    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
  }
}
";
        assert_eq!(script(&plan), expected);
    }

    #[test]
    fn selective_isolation_adds_only_its_exceptions_in_their_direction() {
        let exceptions = vec![
            Exception::parse("192.0.2.0/24 tcp 443 out").unwrap(),
            Exception::parse("2001:db8:5::/48 icmp in").unwrap(),
        ];
        let s = script(&NetPlan {
            controller: ctl(),
            isolation: Some(exceptions),
            contained: vec![],
            contained_macs: vec![],
        });
        let input = &s[s.find("chain input").unwrap()..s.find("chain output").unwrap()];
        let output = &s[s.find("chain output").unwrap()..s.find("chain forward").unwrap()];
        assert!(
            output.contains("ip daddr 192.0.2.0/24 tcp dport 443 accept"),
            "{s}"
        );
        assert!(!input.contains("192.0.2.0/24"), "{s}");
        assert!(
            input.contains("ip6 saddr 2001:db8:5::/48 meta l4proto ipv6-icmp accept"),
            "{s}"
        );
        assert!(!output.contains("2001:db8:5::"), "{s}");
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

//! The end-to-end tier: the real binaries on loopback, no root needed. Each module is one
//! area; the benchmarks' smoke runs (small knobs, see `palisade_tests::bench::smoke`) are here
//! too, so `cargo test` builds one binary for the tier instead of one per file.

mod fuzz;
mod lifecycle;
mod scan;
mod schema;
mod security;
mod tidy;
mod web_api;

/// `cargo bench --bench NAME` runs these with full knobs; here each runs once, small.
#[path = "../../benches"]
mod bench_smoke {
    mod action_center;
    mod agent_idle;
    mod approve_latency;
    mod fleet;
    mod scan;

    #[test]
    fn action_center() {
        action_center::main();
    }

    #[test]
    fn agent_idle() {
        agent_idle::main();
    }

    #[test]
    fn approve_latency() {
        approve_latency::main();
    }

    #[test]
    fn fleet() {
        fleet::main();
    }

    #[test]
    fn scan() {
        scan::main();
    }
}

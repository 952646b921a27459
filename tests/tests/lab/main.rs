//! The lab tier: root, network and mount namespaces, real nftables, fanotify, tmpfs, the
//! packages in a throwaway Debian root. Without root (or a tool `.ci/run` installs) these
//! tests fail; they never skip.

mod chaos;
mod disk_full;
mod exec_lab;
mod isolation;
mod namespaces;
mod package;
mod packaging;
mod quarantine;
mod scan_differential;

/// `cargo bench --bench isolate_latency` runs it with full knobs; here it runs once, small.
#[path = "../../benches"]
mod bench_smoke {
    mod isolate_latency;

    #[test]
    fn isolate_latency() {
        isolate_latency::main();
    }
}

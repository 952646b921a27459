//! What the controller's benchmarks share: how they were started, and their knobs.

/// Whether this benchmark binary runs as a smoke test. `cargo bench` passes `--bench`: measure
/// with the full knobs. `cargo test` runs every bench target too (`test = true` in the manifest)
/// without it: a short run with small knobs, which checks that the benchmark still works and
/// measures nothing. (The tests crate's `bench` module has the same rule for its benchmarks.)
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A numeric knob from the environment, or its default: `full` under `cargo bench`, `smoke`
/// under `cargo test`.
pub fn knob(name: &str, full: usize, smoke: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) if self::smoke() => smoke,
        Err(_) => full,
    }
}

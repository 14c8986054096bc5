//! The integration suites, as both `cargo xtask test` and its `--vm` run
//! them.

/// The package of the integration tests (BPF_PROG_TEST_RUN and network
/// namespaces).
pub const TESTS_PACKAGE: &str = "balancer-tests";

/// The network-namespace suites that run the daemon: run in XDP mode (the
/// default), then again with `mode = "tc"`.
pub const TC_SUITES: &[&str] = &[
    "gateway",
    "control",
    "table",
    "ipv6",
    "odd_packets",
    "socketio",
    "flood",
    "cluster",
    "replicate",
    "proxy",
];

/// The suites whose clients are Socket.IO in Node (`tests/socketio`): they
/// need `node` and the suite's npm packages, in the VM too.
pub const NODE_SUITES: &[&str] = &["socketio", "flood", "cluster", "proxy"];

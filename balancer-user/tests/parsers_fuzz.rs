//! Property tests of the two parsers that take input from outside: the
//! config file and the control socket's request line. Whatever the input,
//! they return (never panic), and a refusal is one line.
//!
//! `cargo test --release -p balancer-user --test parsers_fuzz` runs 10,000
//! cases of each (part of `cargo xtask test`, under a second);
//! `PROPTEST_CASES=1000000` runs a million (about a minute).
//! Failing inputs are kept in `proptest-regressions/` as seeds.

use std::str::FromStr;

use balancer_user::{
    config::{Config, EXAMPLE_CONFIG},
    control::server::parse,
};
use proptest::prelude::*;

/// A valid request of every kind, for mutation.
const REQUESTS: &[&str] = &[
    r#"{"request":"status"}"#,
    r#"{"request":"backend_add","service":"chat","address":"198.18.1.14:3000","weight":2}"#,
    r#"{"request":"backend_remove","service":"chat","address":"198.18.1.11:3000"}"#,
    r#"{"request":"backend_drain","service":"chat","address":"[2001:db8::11]:3000"}"#,
    r#"{"request":"lookup","service":"chat","client":"198.18.0.7","port":40000}"#,
    r#"{"request":"flows","service":null,"limit":10}"#,
    r#"{"request":"detach"}"#,
];

/// `text` with `n` bytes replaced, inserted or deleted at random places.
fn mutated(text: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let len = text.len();
    prop::collection::vec((0..len.max(1), any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
        let mut bytes = text.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let at = at.min(bytes.len());
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

fn one_line(e: &str) {
    assert!(!e.contains('\n'), "a refusal must be one line: {e:?}");
    assert!(!e.is_empty());
}

/// 10,000 cases unless `PROPTEST_CASES` says otherwise.
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn request_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse(&bytes) {
            one_line(&e);
        }
    }

    #[test]
    fn request_parser_takes_mutated_requests(
        bytes in prop::sample::select(REQUESTS).prop_flat_map(mutated)
    ) {
        if let Err(e) = parse(&bytes) {
            one_line(&e);
        }
    }

    #[test]
    fn config_parser_takes_any_text(text in "\\PC{0,400}") {
        if let Err(e) = Config::from_str(&text) {
            one_line(&e.to_string());
        }
    }

    #[test]
    fn config_parser_takes_mutated_configs(bytes in mutated(EXAMPLE_CONFIG)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Config::from_str(&text) {
            one_line(&e.to_string());
        }
    }
}

#[test]
fn the_seeds_are_valid() {
    for r in REQUESTS {
        parse(r.as_bytes()).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    Config::from_str(EXAMPLE_CONFIG).expect("the example config parses");
}

#[test]
fn quoted_input_with_control_characters_stays_on_one_line() {
    // A TOML key and a value holding a newline, echoed back in the error.
    for text in [
        "\"a\\nb\" = 1\n",
        "[interfaces]\nclients = \"eth\\n0\"\nmode = \"x\\ny\"\n",
        "[[services]]\nname = \"bad\\nname\"\nvip = \"198.18.0.100:80\"\n",
    ] {
        let e = Config::from_str(text).expect_err(text).to_string();
        one_line(&e);
    }
    let e = parse(br#"{"request":"backend_dra\n","service":"chat","address":"x"}"#).unwrap_err();
    one_line(&e);
}

//! The command/response table (`tests/apdu_table.json`): every refusal's status word, run against
//! in-memory cards in the named states.
//! The success paths, byte for byte, are the golden transcripts of `apdu_transcripts.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

/// `*` matches any run of hex digits, `?` any one digit.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    match p.first() {
        None => t.is_empty(),
        Some(b'*') => (0..=t.len()).any(|i| glob(&pattern[1..], &text[i..])),
        Some(b'?') => !t.is_empty() && glob(&pattern[1..], &text[1..]),
        Some(c) => t.first() == Some(c) && glob(&pattern[1..], &text[1..]),
    }
}

#[test]
fn command_response_table() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/apdu_table.json"
    ))
    .unwrap();
    let table: Value = serde_json::from_str(&text).unwrap();
    let w = World::new();
    let mut n = 0;
    for case in table["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut card = match case["state"].as_str().unwrap() {
            "blank" => w.blank_card(13),
            "personalized" => w.personalized_card(11),
            "blocked" => w.personalized_card(12),
            s => panic!("unknown state {s}"),
        };
        if case["state"] == "blocked" {
            select(&mut card);
            call(&mut card, 0x1E, &w.block_order(SERIAL, NOW)).unwrap();
        }
        card.insert(); // power cycle: nothing selected
        for step in case["steps"].as_array().unwrap() {
            let cmd = step[0].as_str().unwrap();
            let expected = step[1].as_str().unwrap();
            let got = raw(&mut card, cmd);
            assert!(
                glob(expected, &got),
                "{name}: {cmd} -> {got}, expected {expected}"
            );
            n += 1;
        }
    }
    println!("{n} command/response pairs checked");
    assert!(n >= 60);
}

#[test]
fn glob_matches() {
    assert!(glob("*9000", "0102039000"));
    assert!(glob("01??9000", "01AB9000"));
    assert!(!glob("01??9000", "01AB6985"));
    assert!(!glob("6982", "69829000"));
}

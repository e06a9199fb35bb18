//! Decoders of unsigned command data and list items (what a card or a server reads first).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared_crypto::model::*;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => {
            let _ = decode_command::<SelectResponse>(body);
        }
        1 => {
            let _ = decode_command::<TerminalAuth>(body);
        }
        2 => {
            let _ = decode_command::<DebitRequest>(body);
        }
        3 => {
            let _ = decode_command::<CreditCommand>(body);
        }
        4 => {
            let _ = decode_command::<BlockCommand>(body);
        }
        5 => {
            let _ = decode_plain::<TapRecord>(body);
        }
        _ => {
            let _ = decode_plain::<Disclosure>(body);
        }
    }
});

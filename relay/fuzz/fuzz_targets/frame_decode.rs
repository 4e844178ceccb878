#![no_main]
//! Arbitrary bytes through the frame decoder: must never panic, and every decoded frame
//! must re-encode to exactly the bytes it came from.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wirekube_relay_proto::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match Frame::decode(&mut buf) {
            Ok(Some(f)) => {
                let used = before.len() - buf.len();
                let re = f.to_bytes().expect("decoded frames are within limits");
                assert_eq!(&re[..], &before[..used]);
            }
            Ok(None) | Err(_) => break,
        }
    }
});

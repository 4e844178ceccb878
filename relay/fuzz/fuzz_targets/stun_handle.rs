#![no_main]
//! Arbitrary datagrams through the STUN handler: must never panic.

use libfuzzer_sys::fuzz_target;
use wirekube_relay::stun::{StunLayout, handle};

fuzz_target!(|data: &[u8]| {
    let layout = StunLayout {
        ips: vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        ports: [3478, 3479],
    };
    let src = "198.51.100.7:40000".parse().unwrap();
    if let Ok(r) = handle(&layout, 0, 1, src, data) {
        assert!(r.ip < 2 && r.port < 2);
    }
});

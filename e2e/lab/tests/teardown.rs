//! Teardown leaves nothing, even after a panic; prefixes isolate parallel labs (run as root).

mod common;

use std::panic;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use wirekube_lab::{Lab, LabError, NatKind, SiteSpec};

#[test]
fn teardown_after_a_panic_leaves_nothing() {
    common::require_root();
    let prefix = Lab::unique_prefix("pan");
    let p2 = prefix.clone();
    let res = panic::catch_unwind(move || {
        let lab = Lab::new(&p2).unwrap();
        lab.add_site(SiteSpec::new("s", NatKind::Symmetric, "10.1.0.0/24"))
            .unwrap();
        let a = lab.add_node("s", "a").unwrap();
        let mut sleep = Command::new("sleep");
        sleep.arg("1000");
        lab.spawn(&a, sleep).unwrap();
        // A grandchild the lab never saw, and a process that ignores TERM.
        let mut sh = Command::new("sh");
        sh.args(["-c", "sleep 1000 & wait"]);
        lab.spawn(&a, sh).unwrap();
        let mut stubborn = Command::new("sh");
        stubborn.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
        lab.spawn(&a, stubborn).unwrap();
        assert!(!Lab::leftovers(&p2).is_empty());
        panic!("test failure inside the lab");
    });
    assert!(res.is_err());
    assert_eq!(Lab::leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn purge_cleans_a_lab_whose_process_died() {
    let lab = common::lab("prg");
    let prefix = lab.prefix().to_owned();
    let a = lab.add_public_node("a").unwrap();
    let mut sleep = Command::new("sleep");
    sleep.arg("1000");
    lab.spawn(&a, sleep).unwrap();
    // Same prefix twice is refused.
    assert!(matches!(Lab::new(&prefix), Err(LabError::PrefixInUse(_))));
    // Simulate a test process killed before Drop: nothing ran.
    std::mem::forget(lab);
    let left = Lab::leftovers(&prefix);
    assert!(left.iter().any(|l| l.starts_with("namespace")), "{left:?}");
    assert!(left.iter().any(|l| l.starts_with("process")), "{left:?}");
    Lab::purge(&prefix).unwrap();
    assert_eq!(Lab::leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn parallel_labs_with_the_same_names_do_not_collide() {
    common::require_root();
    let t = Instant::now();
    let handles: Vec<_> = (0..3)
        .map(|i| {
            thread::spawn(move || {
                let lab = Lab::new_unique("par").unwrap();
                lab.add_site(SiteSpec::new("home", NatKind::FullCone, "192.168.1.0/24"))
                    .unwrap();
                let a = lab.add_node("home", "a").unwrap();
                let pubn = lab.add_public_node("pub").unwrap();
                // Same names and addresses in every lab, each its own world.
                assert_eq!(a.ip().to_string(), "192.168.1.11");
                lab.ping_until(&a, pubn.ip(), Duration::from_secs(5))
                    .unwrap();
                lab.tcp_transfer(&a, &pubn, pubn.ip(), 256 << 10).unwrap();
                let p = lab.prefix().to_owned();
                lab.shutdown().unwrap();
                (i, p)
            })
        })
        .collect();
    let mut prefixes = Vec::new();
    for h in handles {
        let (_, p) = h.join().unwrap();
        assert!(Lab::leftovers(&p).is_empty());
        prefixes.push(p);
    }
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), 3);
    eprintln!(
        "3 parallel labs built, used and torn down in {:?}",
        t.elapsed()
    );
}

#[test]
fn invalid_names_are_refused() {
    assert!(matches!(Lab::new("Bad"), Err(LabError::InvalidName { .. })));
    assert!(matches!(
        Lab::new("waytoolongprefix"),
        Err(LabError::InvalidName { .. })
    ));
    let lab = common::lab("nam");
    assert!(
        lab.add_site(SiteSpec::new("verylongsite", NatKind::None, "10.0.0.0/24"))
            .is_err()
    );
    assert!(lab.add_public_node("inet").is_err());
    assert!(lab.add_node("nosuchsite", "a").is_err());
    lab.add_public_node("a").unwrap();
    assert!(lab.add_public_node("a").is_err(), "duplicate host");
}

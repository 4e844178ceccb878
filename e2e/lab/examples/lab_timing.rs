//! Prints how long building and tearing down a lab takes: `cargo run -p wirekube-lab --example lab_timing`.

use std::time::Instant;

use wirekube_lab::{Lab, NatKind, SiteSpec};

fn main() -> Result<(), wirekube_lab::LabError> {
    for round in 0..3 {
        let t = Instant::now();
        let lab = Lab::new_unique("tim")?;
        let kinds = [
            ("sym", NatKind::Symmetric, "10.1.0.0/24"),
            ("prc", NatKind::PortRestrictedCone, "10.2.0.0/24"),
            ("arc", NatKind::AddressRestrictedCone, "192.168.1.0/24"),
            ("full", NatKind::FullCone, "192.168.2.0/24"),
            ("fw", NatKind::TcpOnlyFirewall, "10.6.0.0/24"),
        ];
        for (name, kind, lan) in kinds {
            lab.add_site(SiteSpec::new(name, kind, lan))?;
            lab.add_node(name, &format!("{name}-a"))?;
        }
        lab.add_public_node("pub")?;
        lab.add_dmz("dmz", &[])?;
        let built = t.elapsed();
        let n = lab.hosts().len();
        let t = Instant::now();
        lab.shutdown()?;
        println!(
            "round {round}: {n} namespaces built in {built:?}, torn down and verified in {:?}",
            t.elapsed()
        );
    }
    Ok(())
}

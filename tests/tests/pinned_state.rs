//! Pinned datapath state that does not match this build's layouts is refused, never reused.
//!
//! The refusal names a way out.

use aya::maps::{HashMap, MapData};
use lb_userspace::datapath::{balancer, objects};

/// A private bpffs pin directory, removed on drop.
struct PinDir(std::path::PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/xdplb-test-{}-{tag}",
            std::process::id()
        ));
        let _ = balancer::detach(&dir);
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = balancer::detach(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_map_with_another_layout_is_refused() {
    let pins = PinDir::new("layout");
    let state = balancer::state_dir(&pins.0);
    std::fs::create_dir_all(&state).unwrap();
    // A VIP table from a hypothetical other build: a hash map u32 → u32 instead of an array
    // of VipSlot.
    let wrong = HashMap::<MapData, u32, u32>::create(16, 0).unwrap();
    wrong.pin(state.join(lb_common::maps::VIP_TABLE)).unwrap();
    let err = balancer::load_pinned(&pins.0, 4096)
        .err()
        .expect("must refuse");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("refusing to reuse") && msg.contains("xdplb detach --pin-path"),
        "{msg}"
    );
}

#[test]
fn state_of_another_layout_version_is_refused() {
    let pins = PinDir::new("version");
    std::fs::create_dir_all(pins.0.join("v999")).unwrap();
    let err = balancer::load_pinned(&pins.0, 4096)
        .err()
        .expect("must refuse");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("layout v999") && msg.contains(&format!("v{}", lb_common::LAYOUT_VERSION)),
        "{msg}"
    );
}

#[test]
fn fresh_state_is_created_and_then_adopted() {
    let pins = PinDir::new("adopt");
    let first = balancer::load_pinned(&pins.0, 4096).unwrap();
    assert!(!first.adopted);
    for spec in &lb_common::BALANCER_MAPS {
        assert!(
            balancer::state_dir(&pins.0).join(spec.name).exists(),
            "{} pinned",
            spec.name
        );
    }
    // The object's maps, as the kernel created them, are what lb-common's specs say.
    let mismatches =
        objects::check_pinned_layouts(&balancer::state_dir(&pins.0), &lb_common::BALANCER_MAPS);
    assert!(mismatches.is_empty(), "{mismatches:?}");
    let second = balancer::load_pinned(&pins.0, 4096).unwrap();
    assert!(second.adopted, "the second load reuses the pinned maps");
    drop((first, second));
}

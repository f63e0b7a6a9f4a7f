//! Announcing through a real BIRD (in a namespace of the test's own).
//!
//! The routes xdplb asks for appear in BIRD's table and go when withdrawn, they outlive the agent's
//! side, and a wrong socket is an error that names it.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use lb_userspace::agent::announce::{bird::Bird, routes_text, Announcer};
use xdplb_lab::{
    netns::{unique_prefix, NetNs},
    scenario::{lab_config, small_lab, Balancer, Member},
};

/// The routes BIRD's static protocols hold, as `show route` prints their prefixes. Before the
/// agent's first routes file is configured, BIRD does not know the protocols yet (it answers
/// "syntax error, unexpected CF_SYM_UNDEFINED"): that reads as no routes, any other error fails.
fn bird_routes(socket: &Path) -> Vec<String> {
    let show = |protocol: &str| -> Vec<String> {
        match Bird::connect(socket)
            .unwrap()
            .command(&format!("show route protocol {protocol}"))
        {
            Ok((_, lines)) => lines,
            Err(e) if format!("{e:#}").contains("CF_SYM_UNDEFINED") => Vec::new(),
            Err(e) => panic!("{e:#}"),
        }
    };
    let (lines, lines6) = (show("xdplb_vips4"), show("xdplb_vips6"));
    lines
        .iter()
        .chain(&lines6)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('/'))
        .map(str::to_owned)
        .collect()
}

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// Starts BIRD in namespace `ns` with a config that includes `dir/routes/*.conf`; returns it
/// once its control socket answers.
fn start_bird(ns: &str, dir: &Path) -> std::process::Child {
    let socket = dir.join("bird.ctl");
    std::fs::create_dir_all(dir.join("routes")).unwrap();
    // The shape of deploy/bird/balancer.conf's include: a glob, so BIRD starts before the
    // agent has written anything.
    std::fs::write(
        dir.join("bird.main"),
        format!(
            "router id 192.0.2.1;\nprotocol device {{}}\ninclude \"{}/routes/*.conf\";\n",
            dir.display()
        ),
    )
    .unwrap();
    let bird = Command::new("ip")
        .args(["netns", "exec", ns, "bird", "-f", "-c"])
        .arg(dir.join("bird.main"))
        .arg("-s")
        .arg(&socket)
        .spawn()
        .expect("bird2 installed (cargo xtask setup)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Bird::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "BIRD never opened {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bird
}

#[test]
fn the_agent_announces_servable_vips_and_withdraws_them_before_it_detaches() {
    let mut lab = small_lab(2).expect("lab");
    let members: Vec<_> = (0..2).map(|i| (i, Member::Active)).collect();
    let yaml = lab_config(&mut lab, "generic", &members).unwrap();
    let dir = lab.dir().join("bird");
    let socket = dir.join("bird.ctl");
    let mut bird = start_bird(lab.gateway_ns(), &dir);
    let yaml = yaml.replacen(
        "flow_table_size: 65536\n",
        &format!(
            "flow_table_size: 65536\nannounce:\n  bird_socket: {}\n  routes_file: {}\n  withdraw_delay: 300ms\n",
            socket.display(),
            dir.join("routes/vips.conf").display()
        ),
        1,
    );
    assert!(yaml.contains("announce:"), "fixture: {yaml}");
    let balancer = Balancer::start(&mut lab, "generic", &yaml).expect("agent starts");
    let want = {
        let mut w = vec![format!("{}/32", lab.vip4()), format!("{}/128", lab.vip6())];
        w.sort();
        w
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut have = bird_routes(&socket);
        have.sort();
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD announces {have:?}, not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Balancer::status(&lab).unwrap();
    let announced = status["announced"]
        .as_array()
        .expect("status lists what is announced");
    assert_eq!(announced.len(), 2, "{status}");

    // A stop that detaches: withdrawn first, then (after the delay) detached.
    let log = balancer.stop(&mut lab).unwrap();
    assert!(
        bird_routes(&socket).is_empty(),
        "still announced after the stop:\n{log}"
    );
    let withdrawn = log.find("VIPs withdrawn").expect("the log says so");
    let detached = log.find("detached from").expect("the log says so");
    assert!(withdrawn < detached, "{log}");
    bird.kill().ok();
    bird.wait().ok();
}

#[test]
fn routes_follow_the_announcer_and_outlive_it() {
    let name = unique_prefix();
    let ns = NetNs::new(&name).unwrap();
    let dir = std::env::temp_dir().join(format!("{name}-bird"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = scopeguard(dir.clone());
    let routes = dir.join("routes/vips.conf");
    let socket = dir.join("bird.ctl");
    let mut bird = start_bird(ns.name(), &dir);

    let mut a = Announcer::new(routes.clone(), socket.clone());
    assert!(a.update(&addrs(&["10.201.0.10", "fd00:201::10"])).unwrap());
    let mut have = bird_routes(&socket);
    have.sort();
    assert_eq!(have, ["10.201.0.10/32", "fd00:201::10/128"]);
    // The same set again asks BIRD nothing.
    assert!(!a.update(&addrs(&["10.201.0.10", "fd00:201::10"])).unwrap());
    assert!(a.update(&addrs(&["fd00:201::10"])).unwrap());
    assert_eq!(bird_routes(&socket), ["fd00:201::10/128"]);

    // The agent goes (a crash): BIRD keeps announcing what it was told. A new agent that
    // announces the same finds it in place and tells BIRD again (it cannot know).
    drop(a);
    assert_eq!(bird_routes(&socket), ["fd00:201::10/128"]);
    let mut b = Announcer::new(routes.clone(), socket.clone());
    assert!(b.update(&addrs(&["fd00:201::10"])).unwrap());
    assert!(b.update(&BTreeSet::new()).unwrap());
    assert!(bird_routes(&socket).is_empty());
    assert_eq!(
        std::fs::read_to_string(&routes).unwrap(),
        routes_text(&BTreeSet::new())
    );

    // A socket nobody serves: the error names it, and what BIRD announces is unchanged.
    let mut wrong = Announcer::new(routes.clone(), dir.join("nobody.ctl"));
    let e = wrong.update(&addrs(&["10.201.0.99"])).unwrap_err();
    assert!(format!("{e:#}").contains("nobody.ctl"), "{e:#}");
    assert!(wrong.announced().is_none());
    assert_eq!(
        std::fs::read_to_string(&routes).unwrap(),
        routes_text(&BTreeSet::new())
    );
    bird.kill().ok();
    bird.wait().ok();
}

/// Removes the test's directory when the test ends, passing or not.
fn scopeguard(dir: std::path::PathBuf) -> impl Drop {
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    Rm(dir)
}

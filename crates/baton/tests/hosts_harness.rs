//! The SSH test hosts themselves (`hosts/mod.rs`): each host is reachable over SSH
//! only with its known key, is a machine of its own (addresses, ports, firewall),
//! its faults do what they say, and nothing of a fleet outlives it.
//!
//! Without root, sshd or ip these tests print "skipped" (unless
//! `BATON_REQUIRE_SSH=1`, which `scripts/test.sh` sets).

#[path = "hosts/mod.rs"]
mod hosts;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hosts::{Fleet, wait_for};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// The port the sample service listens on inside a host.
const SAMPLE_PORT: u16 = 8080;

/// Generous: the machine may be busy with the other tests.
const DEADLINE: Duration = Duration::from_secs(30);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ssh` to host i running `remote`, giving up on a connection after 3 s.
fn ssh(fleet: &Fleet, i: usize, remote: &[&str]) -> Output {
    fleet
        .ssh(i)
        .args(["-o", "ConnectTimeout=3"])
        .args(remote)
        .output()
        .expect("run ssh")
}

/// Starts the sample service on host i's address; its pid.
fn start_sample(fleet: &Fleet, i: usize) -> u32 {
    let host = &fleet.hosts()[i];
    let address = host.address.to_string();
    let port = SAMPLE_PORT.to_string();
    let argv = [BATON, "sample", "--host", &address, "--port", &port];
    let pid = fleet.spawn(i, &[&argv[..], &["--version", &host.name]].concat());
    wait_for(
        &format!("the sample service on {}", host.name),
        DEADLINE,
        || healthz(host.address).is_some(),
    );
    pid
}

/// `GET /healthz` at `address`:8080 from the root namespace; the response, if any.
fn healthz(address: IpAddr) -> Option<String> {
    let addr = SocketAddr::new(address, SAMPLE_PORT);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.").then_some(response)
}

#[test]
fn each_host_is_reachable_over_ssh_only_with_its_known_key() {
    let Some(fleet) = Fleet::create(3) else {
        return;
    };
    let hosts = fleet.hosts();
    assert_eq!(hosts.len(), 3);
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(host.name, format!("h{i}"));
        assert!(host.host_key_fingerprint.starts_with("SHA256:"), "{host:?}");
        let out = ssh(&fleet, i, &["ip", "-4", "-o", "addr"]);
        assert!(out.status.success(), "ssh to {}: {}", host.name, text(&out));
        let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
        // Inside that host: its address and no other host's.
        for (j, other) in hosts.iter().enumerate() {
            let here = addrs.contains(&format!("inet {}/24", other.address));
            assert_eq!(here, i == j, "`ip -4 -o addr` on {}:\n{addrs}", host.name);
        }
    }

    // A port opened in host 2 is host 2's alone, and reachable from the root namespace.
    start_sample(&fleet, 2);
    let response = healthz(hosts[2].address).expect("sample on h2 answers");
    assert!(response.contains(" 200 "), "{response}");
    assert!(healthz(hosts[1].address).is_none(), "h1 has no sample");

    // A known_hosts file without h2's key, an empty one, and one that gives h2's
    // address h1's key: each refused.
    let without = fleet.dir().join("known_hosts_without_h2");
    let lines = [&hosts[0], &hosts[1]].map(|h| format!("{}\n", h.known_hosts_line));
    std::fs::write(&without, lines.concat()).unwrap();
    let swapped = fleet.dir().join("known_hosts_swapped");
    let h1_key = hosts[1].known_hosts_line.split_once(' ').unwrap().1;
    std::fs::write(&swapped, format!("{} {h1_key}\n", hosts[2].address)).unwrap();
    for known_hosts in [&without, Path::new("/dev/null"), &swapped] {
        let out = Command::new("ssh")
            .args(["-F", "none", "-i"])
            .arg(fleet.client_key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=3"])
            .arg(format!("root@{}", hosts[2].address))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        assert!(
            !out.status.success() && text(&out).contains("Host key verification failed"),
            "ssh with {}: {}",
            known_hosts.display(),
            text(&out)
        );
    }
}

#[test]
fn cut_ssh_stops_only_ssh_and_restore_brings_it_back() {
    let Some(fleet) = Fleet::create(3) else {
        return;
    };
    let h1 = fleet.hosts()[1].clone();
    start_sample(&fleet, 1);

    fleet.cut_ssh(1);
    let out = ssh(&fleet, 1, &["true"]);
    assert!(!out.status.success(), "ssh to a cut host: {}", text(&out));
    assert!(text(&out).contains("timed out"), "{}", text(&out));
    assert!(healthz(h1.address).is_some(), "other ports keep working");
    let out = ssh(&fleet, 0, &["true"]);
    assert!(out.status.success(), "h0 is not cut: {}", text(&out));

    fleet.restore_ssh(1);
    wait_for("ssh to h1 after restore_ssh", DEADLINE, || {
        ssh(&fleet, 1, &["true"]).status.success()
    });

    // stop_sshd: refused at once; start_sshd: the same key again.
    fleet.stop_sshd(1);
    let out = ssh(&fleet, 1, &["true"]);
    assert!(text(&out).contains("Connection refused"), "{}", text(&out));
    fleet.start_sshd(1);
    let out = ssh(&fleet, 1, &["true"]);
    assert!(out.status.success(), "after start_sshd: {}", text(&out));

    // kill_all_in: the sample dies with sshd; exec still runs commands there.
    fleet.kill_all_in(1);
    assert!(healthz(h1.address).is_none(), "sample killed");
    let out = fleet.exec(1, &["ip", "-4", "-o", "addr"]);
    assert!(text(&out).contains(&format!("inet {}/24", h1.address)));
    fleet.start_sshd(1);
    let out = ssh(&fleet, 1, &["true"]);
    assert!(out.status.success(), "after kill_all_in: {}", text(&out));
}

#[test]
fn a_dropped_fleet_leaves_nothing_behind() {
    let Some(fleet) = Fleet::create(2) else {
        return;
    };
    let netns: Vec<String> = fleet.hosts().iter().map(|h| h.netns.clone()).collect();
    let bridge = fleet.bridge().to_owned();
    let dir = fleet.dir().to_owned();
    let address = fleet.hosts()[0].address;
    // Something for Drop to kill, and a rule for it to remove.
    let sample = start_sample(&fleet, 0);
    fleet.cut_ssh(0);
    drop(fleet);

    assert!(
        !Path::new(&format!("/proc/{sample}")).exists(),
        "sample killed and reaped"
    );
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let (list, links) = (text(&list), text(&links));
    for name in &netns {
        assert!(!list.contains(name.as_str()), "netns {name} left:\n{list}");
        assert!(
            !links.contains(&format!(" {name}@")),
            "veth {name} left:\n{links}"
        );
        assert!(
            !Path::new("/etc/netns").join(name).exists(),
            "/etc/netns/{name} left"
        );
    }
    assert!(
        !links.contains(&format!(" {bridge}:")),
        "bridge {bridge} left:\n{links}"
    );
    assert!(!dir.exists(), "{} left", dir.display());
    let routes = Command::new("ip")
        .args(["-4", "route", "get", &address.to_string()])
        .output()
        .unwrap();
    assert!(!text(&routes).contains(&bridge), "{}", text(&routes));
}

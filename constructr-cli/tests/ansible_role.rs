//! The Ansible role `constructr-serf/examples/ansible`, run for real: Debian's
//! `ansible-playbook` provisions three throwaway Debian hosts (containers of the image
//! `constructr-test/systemd:trixie` that `scripts/images.sh` builds with debootstrap, with
//! systemd as PID 1 and sshd) over ssh, in two datacenters. The test then checks what an
//! operator would: the services are active and enabled, the host is not degraded, each
//! bridge's view equals `serf members`, the secrets stay out of the output, the command
//! lines and world-readable files, a `kill -9` of the bridge or the agent is followed by a
//! restart (and the restarted bridge knows the members again), and a second run changes
//! nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RPC_AUTH: &str = "rpc-secret-3f9a";
const ENCRYPT_KEY: &str = "cg8StVXbQJ0gPvMd9o7yrg==";

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The image and tools this test needs, or `None` (skipped) with `CONSTRUCTR_SKIP_DOCKER=1`.
fn prerequisites() -> Option<String> {
    let image = std::env::var("CONSTRUCTR_SYSTEMD_IMAGE")
        .unwrap_or_else(|_| "constructr-test/systemd:trixie".to_owned());
    let mut missing = Vec::new();
    for tool in ["ansible-playbook", "ssh-keygen", "ssh", "docker"] {
        if !on_path(tool) {
            missing.push(tool.to_owned());
        }
    }
    if missing.is_empty() {
        let found = Command::new("docker")
            .args(["image", "inspect", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!("the image {image}"));
        }
    }
    if missing.is_empty() {
        return Some(image);
    }
    if std::env::var("CONSTRUCTR_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("skipped: missing {missing:?} and CONSTRUCTR_SKIP_DOCKER=1");
        return None;
    }
    panic!(
        "the Ansible role test needs {missing:?}: run scripts/install-deps.sh (ansible-core, \
         debootstrap, openssh-client) and scripts/images.sh; CONSTRUCTR_SKIP_DOCKER=1 skips it"
    )
}

/// Three hosts on a private network, removed (with the network) on drop.
struct Hosts {
    network: String,
    names: Vec<String>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = run(Command::new("docker").args(["rm", "-f", n]));
        }
        let _ = run(Command::new("docker").args(["network", "rm", &self.network]));
    }
}

impl Hosts {
    fn exec(&self, host: usize, script: &str) -> String {
        ok(Command::new("docker").args(["exec", &self.names[host], "sh", "-c", script]))
    }

    fn try_exec(&self, host: usize, script: &str) -> Output {
        run(Command::new("docker").args(["exec", &self.names[host], "sh", "-c", script]))
    }

    fn main_pid(&self, host: usize, unit: &str) -> String {
        self.exec(host, &format!("systemctl show -p MainPID --value {unit}"))
            .trim()
            .to_owned()
    }
}

/// Polls `check` every 250 ms until it returns `Ok`, for at most `limit`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(t) => return t,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `serf members` of the host's agent, as dc → names of alive members.
fn serf_members(hosts: &Hosts, host: usize) -> BTreeMap<String, Vec<String>> {
    let text = hosts.exec(
        host,
        &format!("serf members -rpc-auth={RPC_AUTH} -status=alive -format=json"),
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("serf members json");
    let mut view: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in v["members"].as_array().expect("members") {
        let dc = m["tags"]["dc"].as_str().unwrap_or("default").to_owned();
        view.entry(dc)
            .or_default()
            .push(m["name"].as_str().unwrap().to_owned());
    }
    view.values_mut().for_each(|v| v.sort());
    view
}

/// The bridge's `GET /members`, as dc → names of alive members.
fn bridge_members(hosts: &Hosts, host: usize) -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = hosts.try_exec(host, "curl -sf 127.0.0.1:8888/members");
    if !out.status.success() {
        return Err(format!("curl: {:?}", out.status));
    }
    let v: BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v.into_iter()
        .map(|(dc, ms)| {
            let mut names: Vec<String> = ms
                .iter()
                .filter(|m| m["status"] == "alive")
                .map(|m| m["name"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            (dc, names)
        })
        .filter(|(_, names)| !names.is_empty())
        .collect())
}

fn expected_view(names: &[String]) -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("dc1".to_owned(), vec![names[0].clone(), names[1].clone()]),
        ("dc2".to_owned(), vec![names[2].clone()]),
    ])
}

/// Runs the example playbook with `extra` variables (after the binary's, so they win): its
/// output, and whether it succeeded.
fn try_playbook(inventory: &Path, dir: &Path, extra: &[&str]) -> (bool, String) {
    let role_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../constructr-serf/examples/ansible");
    let mut cmd = Command::new("ansible-playbook");
    cmd.arg("-i")
        .arg(inventory)
        .arg(role_dir.join("playbook.yml"))
        .arg("-e")
        .arg(format!(
            "constructr_serf_constructr_binary={}",
            env!("CARGO_BIN_EXE_constructr")
        ));
    for e in extra {
        cmd.arg("-e").arg(e);
    }
    let out = run(cmd
        .current_dir(dir)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", "/tmp/.ansible"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn playbook(inventory: &Path, dir: &Path) -> String {
    let (success, text) = try_playbook(inventory, dir, &[]);
    assert!(success, "ansible-playbook failed:\n{text}");
    text
}

/// The `changed=N` of every host in the play recap.
fn changed_counts(output: &str) -> Vec<(String, u32)> {
    let recap = output.split("PLAY RECAP").nth(1).expect("a play recap");
    recap
        .lines()
        .filter(|l| l.contains("changed="))
        .map(|l| {
            let host = l.split_whitespace().next().unwrap().to_owned();
            let n = l
                .split("changed=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .expect("changed=N");
            (host, n)
        })
        .collect()
}

#[test]
fn the_ansible_role_provisions_supervised_serf_agents_and_bridges() {
    let Some(image) = prerequisites() else {
        return;
    };
    let tag = format!("ansible-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("constructr-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("id_ed25519");
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key));
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();

    let network = format!("constructr-{tag}");
    ok(Command::new("docker").args(["network", "create", &network]));
    let mut hosts = Hosts {
        network: network.clone(),
        names: Vec::new(),
    };
    for i in 1..=3 {
        let name = format!("{tag}-h{i}");
        // systemd as PID 1: its own /run, /tmp, the cgroup tree to read, and what its
        // sandboxing (DynamicUser=, ProtectSystem=) needs: mount namespaces.
        ok(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "--network",
            &network,
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "-p",
            "127.0.0.1::22",
            &image,
        ]));
        hosts.names.push(name);
    }
    let mut inventory = String::from("[serf]\n");
    for (i, name) in hosts.names.iter().enumerate() {
        let port = ok(Command::new("docker").args(["port", name, "22/tcp"]));
        let port = port
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .unwrap()
            .trim()
            .to_owned();
        let dc = if i < 2 { "dc1" } else { "dc2" };
        inventory.push_str(&format!(
            "{name} ansible_host=127.0.0.1 ansible_port={port} constructr_serf_dc={dc}\n"
        ));
        eventually("systemd up", Duration::from_secs(60), || {
            let out = hosts.try_exec(i, "systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                Ok(())
            } else {
                Err(state)
            }
        });
        let out = Command::new("docker")
            .args(["exec", "-i", name, "sh", "-c"])
            .arg("mkdir -p -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys")
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(public.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(out.success());
    }
    inventory.push_str(&format!(
        "[serf:vars]\nansible_user=root\nansible_ssh_private_key_file={}\n\
         ansible_python_interpreter=/usr/bin/python3\n\
         constructr_serf_rpc_auth={RPC_AUTH}\nconstructr_serf_encrypt_key={ENCRYPT_KEY}\n\
         constructr_serf_bridge_quorum=true\nconstructr_serf_tags={{\"role\": \"web\"}}\n",
        key.display()
    ));
    let inventory_file = dir.join("inventory.ini");
    std::fs::write(&inventory_file, inventory).unwrap();

    // Variables that do not fit stop the role before it touches a host, naming them.
    for bad in [
        "constructr_serf_serf_install=snap",
        "constructr_serf_constructr_binary=",
        r#"{"constructr_serf_join": "h1:7946"}"#,
    ] {
        let (success, text) = try_playbook(&inventory_file, &dir, &[bad]);
        assert!(!success, "{bad} was accepted:\n{text}");
        assert!(
            text.contains("constructr_serf: invalid variables"),
            "{bad}:\n{text}"
        );
        assert_eq!(
            hosts
                .try_exec(0, "test -e /etc/serf/serf.json")
                .status
                .code(),
            Some(1),
            "{bad}: the role wrote the configuration"
        );
    }

    // The first run provisions everything.
    let first = playbook(&inventory_file, &dir);
    assert!(
        !first.contains(RPC_AUTH) && !first.contains(ENCRYPT_KEY),
        "a secret in the playbook output:\n{first}"
    );
    for i in 0..3 {
        assert_eq!(
            hosts.exec(i, "systemctl is-active serf-agent constructr-serf-bridge"),
            "active\nactive\n"
        );
        assert_eq!(
            hosts.exec(i, "systemctl is-enabled serf-agent constructr-serf-bridge"),
            "enabled\nenabled\n"
        );
        // Debian's own serf.service (enabled by its package) is off, masked and not
        // left failed: the host is `running`, not `degraded`.
        assert_eq!(
            hosts.exec(i, "systemctl is-enabled serf || true").trim(),
            "masked"
        );
        eventually("host not degraded", Duration::from_secs(10), || {
            let out = hosts.try_exec(
                i,
                "systemctl is-system-running; systemctl --failed --no-legend",
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.trim() == "running" {
                Ok(())
            } else {
                Err(text)
            }
        });
        // Secrets: not on any command line, not in a world-readable file.
        let ps = hosts.exec(i, "ps -eo args");
        assert!(!ps.contains(RPC_AUTH) && !ps.contains(ENCRYPT_KEY), "{ps}");
        assert_eq!(
            hosts.exec(
                i,
                "stat -c '%a %U %G' /etc/serf/serf.json /etc/default/constructr-serf-bridge"
            ),
            "640 root serf\n600 root root\n"
        );
    }
    let names = hosts.names.clone();
    for i in 0..3 {
        eventually(
            "the bridge's view equals serf members",
            Duration::from_secs(60),
            || {
                let bridge = bridge_members(&hosts, i)?;
                let serf = serf_members(&hosts, i);
                if bridge == serf && serf == expected_view(&names) {
                    Ok(())
                } else {
                    Err(format!("bridge {bridge:?}, serf {serf:?}"))
                }
            },
        );
    }
    let quorum: serde_json::Value =
        serde_json::from_str(&hosts.exec(0, "curl -sf 127.0.0.1:8888/quorum")).unwrap();
    assert_eq!(quorum["state"], "independent", "{quorum}");

    // kill -9 of the bridge: systemd restarts it, and the new bridge loads the members
    // from the agent (--rpc, with the auth key from its environment file).
    let old = hosts.main_pid(0, "constructr-serf-bridge");
    hosts.exec(0, &format!("kill -9 {old}"));
    eventually("the bridge restarted", Duration::from_secs(30), || {
        let pid = hosts.main_pid(0, "constructr-serf-bridge");
        let view = bridge_members(&hosts, 0)?;
        if pid != old && pid != "0" && view == expected_view(&names) {
            Ok(())
        } else {
            Err(format!("pid {pid}, view {view:?}"))
        }
    });
    assert_eq!(
        hosts
            .exec(
                0,
                "systemctl show -p NRestarts --value constructr-serf-bridge"
            )
            .trim(),
        "1"
    );

    // kill -9 of an agent: restarted, it rejoins (snapshot), and every view has it again.
    let old = hosts.main_pid(2, "serf-agent");
    hosts.exec(2, &format!("kill -9 {old}"));
    eventually("the agent restarted", Duration::from_secs(30), || {
        let pid = hosts.main_pid(2, "serf-agent");
        if pid != old && pid != "0" {
            Ok(())
        } else {
            Err(pid)
        }
    });
    for i in 0..3 {
        eventually(
            "every view has the restarted agent",
            Duration::from_secs(60),
            || {
                let view = bridge_members(&hosts, i)?;
                if view == expected_view(&names) {
                    Ok(())
                } else {
                    Err(format!("{view:?}"))
                }
            },
        );
    }

    // A second run changes nothing.
    let second = playbook(&inventory_file, &dir);
    let changed = changed_counts(&second);
    assert_eq!(changed.len(), 3, "{second}");
    assert!(
        changed.iter().all(|(_, n)| *n == 0),
        "not idempotent: {changed:?}\n{second}"
    );
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

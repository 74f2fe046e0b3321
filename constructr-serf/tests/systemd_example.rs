//! The install steps of `examples/systemd/README.md`, run as written (the paths moved under
//! a scratch root) on a machine where Serf has never been installed.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_systemd_readme_install_steps_work_where_etc_serf_does_not_exist() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a sh block");
    let root = std::env::temp_dir().join(format!("constructr-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // A fresh Debian machine: systemd's own directory exists, /etc/serf does not.
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    let installs: Vec<String> = block
        .lines()
        .filter(|l| l.starts_with("install "))
        .map(|l| l.replace(" /etc/", &format!(" {}/etc/", root.display())))
        .collect();
    assert_eq!(installs.len(), 2, "{block}");
    for cmd in &installs {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for file in [
        "etc/serf/serf.json",
        "etc/systemd/system/serf-agent.service",
        "etc/systemd/system/constructr-serf-bridge.service",
        "etc/systemd/system/my-service.service",
    ] {
        assert!(root.join(file).is_file(), "{file} was not installed");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

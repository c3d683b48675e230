//! The `svcnat` command's conventions: `version` (text, JSON, YAML) names
//! the commit it was built from and the pin layout, `--version` the commit,
//! `completions` writes scripts clap generates from the real flags, the exit
//! status tells a usage error (2) from no pins (3) from success (0), and
//! `--help` names the defaults of the flags that have one.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_svcnat");

fn svcnat(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run svcnat")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The checkout's HEAD, when this is a git checkout.
fn head() -> Option<String> {
    let o = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

#[test]
fn version_names_the_commit_and_the_pin_layout_in_every_format() {
    let json = svcnat(&["version", "-o", "json"]);
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["pinLayout"], proxy_common::LAYOUT_VERSION);
    let commit = v["commit"].as_str().expect("a commit").to_owned();
    match (std::env::var("SVCNAT_COMMIT").ok(), head()) {
        (Some(set), _) if !set.is_empty() => assert_eq!(commit, set),
        (_, Some(head)) => assert_eq!(commit, head, "built from another commit?"),
        _ => assert_eq!(commit, "unknown"),
    }
    let yaml = svcnat(&["version", "-o", "yaml"]);
    let y: serde_json::Value = serde_saphyr::from_str(&stdout(&yaml)).expect("YAML");
    assert_eq!(y, v);
    let text = stdout(&svcnat(&["version"]));
    assert!(
        text.starts_with(&format!("svcnat {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains(&format!("commit: {commit}\n")), "{text}");
    assert!(
        text.contains(&format!("pin layout: v{}\n", proxy_common::LAYOUT_VERSION)),
        "{text}"
    );
    let flag = stdout(&svcnat(&["--version"]));
    assert!(flag.contains(&commit), "{flag}");
}

#[test]
fn completions_cover_the_subcommands_and_their_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let o = svcnat(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        let script = stdout(&o);
        for word in [
            "inspect",
            "cleanup",
            "version",
            "field-selector",
            "pod-interfaces",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    assert_eq!(svcnat(&["completions", "cmd.exe"]).status.code(), Some(2));
}

#[test]
fn exit_codes_tell_usage_errors_from_missing_pins() {
    let missing = "/nonexistent/svcnat-cli-test";
    let no_pins = svcnat(&["inspect", "services", "--bpffs", missing]);
    assert_eq!(no_pins.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&no_pins.stderr).contains("no svcnat pins"));
    for usage in [
        &["inspect", "services", "--bpffs", missing, "-l", "a in ("][..],
        &["inspect", "services", "--field-selector", "kind in (x)"],
        &["inspect", "pods"],
        &["inspect", "services", "-o", "csv"],
        &["inspect", "services", "--json", "-o", "yaml"],
        &["no-such-command"],
    ] {
        let o = svcnat(usage);
        assert_eq!(o.status.code(), Some(2), "{usage:?}: {o:?}");
    }
    let help = stdout(&svcnat(&["--help"]));
    assert!(help.contains("Exit status"), "{help}");
}

#[test]
fn help_names_the_defaults() {
    let help = stdout(&svcnat(&["run", "--help"]));
    for (flag, default) in [
        ("--api-server-port", "6443"),
        ("--conntrack-size", "524288"),
        ("--metrics-addr", "127.0.0.1:10249"),
        ("--healthz-addr", "0.0.0.0:10256"),
        ("--socket-lb", "host"),
        ("--bpffs", "/sys/fs/bpf/svcnat"),
    ] {
        let at = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("no {flag}"));
        let next = help[at + 2..]
            .find("\n      --")
            .map_or(help.len(), |n| at + 2 + n);
        assert!(
            help[at..next].contains(&format!("[default: {default}]")),
            "{flag}: {}",
            &help[at..next]
        );
    }
}

//! Living with a node, through the binary: the systemd unit (rendered, installed, verified by
//! `systemd-analyze`), shell completions, man pages, `doctor` against a local Horizon, the
//! Debian package's assets, and every command's `--json` output against its JSON Schema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crank_testnet::server::LocalHorizon;
use serde_json::Value;

use super::{crank, dead_bootstrap, text};
use crate::repo;

/// Whether a missing tool must fail the test (CI) rather than skip it.
pub(super) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The path of `tool` when installed; under CI a missing tool fails the test.
pub(super) fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "{name} is not installed, and CI=true: install it (.ci/run does)"
        );
        eprintln!("skipping the {name} part: {name} is not installed");
    }
    found
}

/// Runs `crank-node --json ARGS` on `dir` with `env`, and parses its stdout.
fn json(dir: &Path, env: &[(&str, String)], args: &[&str]) -> (Output, Value) {
    let out = crank(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "crank-node --json {}: not JSON ({e}): {}",
            args.join(" "),
            text(&out)
        )
    });
    (out, value)
}

/// Validates `value` against docs/schemas/`name`.schema.json (draft 2020-12).
pub(crate) fn check_schema(name: &str, value: &Value) {
    let path = repo().join(format!("docs/schemas/{name}.schema.json"));
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{name}"
    );
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{name}: not a schema: {e}"));
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: output does not match its schema:\n  {}\noutput: {value:#}",
        errors.join("\n  ")
    );
}

/// `(command words, schema name)`: the commands with `--json` output. Commands without it
/// (`join`, `bootstrap` and `config`, which print TOML) are absent on purpose.
const JSON_COMMANDS: &[(&str, &str)] = &[
    ("status", "status"),
    ("peer", "peer"),
    ("dashboard", "dashboard"),
    ("id", "id"),
    ("submit", "submit"),
    ("models list", "models-list"),
    ("models add", "models-add"),
    ("wallet address", "wallet-address"),
    ("wallet fund", "wallet-fund"),
    ("wallet balance", "wallet-balance"),
    ("wallet settle", "wallet-settle"),
    ("wallet history", "wallet-history"),
    ("doctor", "doctor"),
    ("service install", "service-install"),
    ("service uninstall", "service-uninstall"),
    ("service status", "service-status"),
    ("policy test", "policy-test"),
    ("policy check", "policy-check"),
];

#[test]
fn every_command_with_json_output_has_a_schema() {
    use clap::CommandFactory;
    let without_json = ["join", "bootstrap", "config", "completions", "man"];
    let cli = crank_node::commands::Cli::command();
    let mut leaves = Vec::new();
    for c in cli.get_subcommands() {
        let subs: Vec<_> = c.get_subcommands().collect();
        if subs.is_empty() {
            leaves.push(c.get_name().to_string());
        }
        for s in subs {
            leaves.push(format!("{} {}", c.get_name(), s.get_name()));
        }
    }
    for leaf in &leaves {
        if without_json.contains(&leaf.as_str()) {
            continue;
        }
        let Some((_, schema)) = JSON_COMMANDS.iter().find(|(c, _)| c == leaf) else {
            panic!("`crank-node {leaf}` has --json output but no schema in docs/schemas");
        };
        assert!(
            repo()
                .join(format!("docs/schemas/{schema}.schema.json"))
                .is_file(),
            "{schema}"
        );
    }
    // And no schema for a command that is gone.
    for entry in std::fs::read_dir(repo().join("docs/schemas")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.trim_end_matches(".schema.json");
        assert!(
            JSON_COMMANDS.iter().any(|(_, s)| *s == stem),
            "docs/schemas/{name} belongs to no command"
        );
    }
}

/// The local Horizon-compatible network, in a runtime that serves it while the test blocks
/// on child processes.
struct Network {
    // Dropped before the runtime that serves it.
    horizon: LocalHorizon,
    _rt: tokio::runtime::Runtime,
}

impl Network {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let horizon = rt
            .block_on(LocalHorizon::start(
                crank_testnet::network::NetworkConfig::default(),
                "127.0.0.1:0".parse().unwrap(),
            ))
            .unwrap();
        Self { horizon, _rt: rt }
    }

    /// The environment pointing a node at this network.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CRANK_STELLAR__HORIZON_URL", self.horizon.url()),
            (
                "CRANK_STELLAR__FRIENDBOT_URL",
                format!("{}/friendbot", self.horizon.url()),
            ),
            (
                "CRANK_STELLAR__NETWORK_PASSPHRASE",
                self.horizon.passphrase(),
            ),
            // The gate's inputs differ by machine; under `always` neither can fail.
            ("CRANK_DEVICE__RUN_WHEN", "always".into()),
        ]
    }
}

/// The verdict of check `name` in a doctor report.
fn verdict<'a>(report: &'a Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report:#}"))["verdict"]
        .as_str()
        .unwrap()
}

#[test]
fn doctor_tells_funded_unfunded_and_unreachable_apart() {
    let net = Network::start();
    let env = net.env();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A bootstrap port that accepts connections (the check dials TCP only).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let live = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        listener.local_addr().unwrap().port(),
        libp2p::PeerId::random()
    );

    // No payout key yet: a warning, not a failure.
    let (out, report) = json(dir, &env, &["doctor", "--bootstrap", &live]);
    check_schema("doctor", &report);
    assert_eq!(verdict(&report, "wallet"), "warn", "{report:#}");

    let (_, address) = json(dir, &env, &["wallet", "address"]);
    let address = address["address"].as_str().unwrap().to_string();
    assert!(out.status.success(), "{}", text(&out));

    // Unfunded: the account does not exist.
    let (out, report) = json(dir, &env, &["doctor", "--bootstrap", &live]);
    check_schema("doctor", &report);
    assert_eq!(verdict(&report, "wallet"), "fail", "{report:#}");
    assert_eq!(verdict(&report, "horizon"), "ok", "{report:#}");
    assert_eq!(verdict(&report, "clock"), "ok", "{report:#}");
    assert_eq!(verdict(&report, "bootstrap"), "ok", "{report:#}");
    assert_eq!(report["verdict"], "fail");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Funded through the local friendbot.
    let (out, fund) = json(dir, &env, &["wallet", "fund"]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("wallet-fund", &fund);
    let (out, report) = json(dir, &env, &["doctor", "--bootstrap", &live]);
    for name in [
        "wallet",
        "horizon",
        "clock",
        "bootstrap",
        "data_dir",
        "ledger",
        "disk",
    ] {
        assert_eq!(verdict(&report, name), "ok", "{name}: {report:#}");
    }
    // No node runs on this data dir: worth a warning only.
    assert_eq!(verdict(&report, "node"), "warn", "{report:#}");
    assert!(out.status.success(), "{}", text(&out));
    assert!(net.horizon.account(&address).is_some());

    // An unreachable bootstrap fails, and the text report says what to fix.
    let dead = dead_bootstrap();
    let out = crank(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["doctor", "--bootstrap", &dead])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    let line = shown
        .lines()
        .find(|l| l.starts_with("fail") && l.contains("bootstrap"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(line.contains("none of 1 reachable"), "{shown}");
    assert!(shown.contains("fix: check the address"), "{shown}");

    // An unreachable Horizon fails the horizon check and leaves the wallet unchecked.
    let closed: Vec<(&str, String)> = env
        .iter()
        .map(|(k, v)| {
            let v = if k.starts_with("CRANK_STELLAR__") && k.ends_with("_URL") {
                "http://127.0.0.1:9".to_string()
            } else {
                v.clone()
            };
            (*k, v)
        })
        .collect();
    let (out, report) = json(dir, &closed, &["doctor"]);
    check_schema("doctor", &report);
    assert_eq!(verdict(&report, "horizon"), "fail", "{report:#}");
    assert_eq!(verdict(&report, "wallet"), "warn", "{report:#}");
    assert_eq!(verdict(&report, "bootstrap"), "warn", "{report:#}");
    assert_eq!(out.status.code(), Some(1));
    drop(listener);
}

#[test]
fn wallet_and_model_commands_match_their_schemas() {
    let net = Network::start();
    let env = net.env();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let model = repo().join("models/digits-mlp.onnx");

    let (_, v) = json(dir, &env, &["id"]);
    check_schema("id", &v);
    let (_, v) = json(dir, &env, &["wallet", "address"]);
    check_schema("wallet-address", &v);
    let (_, v) = json(dir, &env, &["wallet", "fund"]);
    check_schema("wallet-fund", &v);
    let (out, v) = json(dir, &env, &["wallet", "balance"]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("wallet-balance", &v);
    let (_, v) = json(dir, &env, &["wallet", "history"]);
    check_schema("wallet-history", &v);
    // Nothing owed, with and without --dry-run: said in words and in the JSON.
    for args in [
        &["wallet", "settle", "--dry-run"][..],
        &["wallet", "settle"],
    ] {
        let (out, v) = json(dir, &env, args);
        assert!(out.status.success(), "{}", text(&out));
        check_schema("wallet-settle", &v);
        let inner = v.as_object().unwrap().values().next().unwrap();
        assert_eq!(inner["nothing_owed"], true, "{v:#}");
        let out = crank(dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(args)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("nothing owed"),
            "{}",
            text(&out)
        );
    }
    let (out, v) = json(dir, &env, &["models", "add", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("models-add", &v);
    let (_, v) = json(dir, &env, &["models", "list"]);
    check_schema("models-list", &v);
    assert_eq!(v.as_array().unwrap().len(), 1);
}

/// `crank-node service …` with its user unit under `config_home`.
fn service(dir: &Path, config_home: &Path) -> Command {
    let mut c = crank(dir);
    c.env("XDG_CONFIG_HOME", config_home).arg("service");
    c
}

#[test]
fn the_service_unit_installs_verifies_and_reports_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config_home = dir.path().join("config");
    let boot = "/ip4/127.0.0.1/tcp/7400/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let unit = config_home.join("systemd/user/crank-node.service");

    // Printing writes nothing.
    let out = service(&data, &config_home)
        .args(["install", "--print", "--bootstrap", boot])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("ProtectSystem=strict"), "{printed}");
    assert!(!unit.exists());

    let (out, v) = json(
        &data,
        &[("XDG_CONFIG_HOME", config_home.display().to_string())],
        &["service", "status", "--bootstrap", boot],
    );
    assert!(out.status.success(), "{}", text(&out));
    check_schema("service-status", &v);
    assert_eq!(v["installed"], false, "{v:#}");
    assert_eq!(v["next"], "crank-node service install", "{v:#}");

    let (out, v) = json(
        &data,
        &[("XDG_CONFIG_HOME", config_home.display().to_string())],
        &[
            "service",
            "install",
            "--bootstrap",
            boot,
            "--cpu-quota",
            "150%",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    check_schema("service-install", &v);
    let written = std::fs::read_to_string(&unit).unwrap();
    assert_eq!(v["unit"], written.as_str());
    assert!(
        v["next"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "systemctl --user enable --now crank-node"),
        "{v:#}"
    );
    // ExecStart runs this very binary on this data dir.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_crank-node")).unwrap();
    assert!(
        written.contains(&format!(
            "ExecStart={} --data-dir {} join --bootstrap {boot}\n",
            exe.display(),
            data.display()
        )),
        "{written}"
    );
    assert!(
        data.is_dir(),
        "install creates the data dir the unit may write"
    );

    // Same flags: up to date; other flags: stale.
    let (_, v) = json(
        &data,
        &[("XDG_CONFIG_HOME", config_home.display().to_string())],
        &[
            "service",
            "status",
            "--bootstrap",
            boot,
            "--cpu-quota",
            "150%",
        ],
    );
    check_schema("service-status", &v);
    assert_eq!(v["installed"], true, "{v:#}");
    assert_eq!(v["up_to_date"], true, "{v:#}");
    let (_, v) = json(
        &data,
        &[("XDG_CONFIG_HOME", config_home.display().to_string())],
        &["service", "status"],
    );
    assert_eq!(v["up_to_date"], false, "{v:#}");
    assert!(v["next"].as_str().unwrap().contains("restart"), "{v:#}");

    if let Some(analyze) = tool("systemd-analyze") {
        // Both scopes: the user unit as installed, and the system unit the package ships,
        // its ExecStart pointed at a binary that exists.
        let system = dir.path().join("system/crank-node.service");
        let out = service(&data, &config_home)
            .args(["install", "--print", "--system", "--exe"])
            .arg(&exe)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        std::fs::create_dir_all(system.parent().unwrap()).unwrap();
        std::fs::write(&system, &out.stdout).unwrap();
        // verify also checks that `Documentation=man:crank-node(1)` opens: the page as the
        // package installs it.
        let man = dir.path().join("man");
        let out = crank(&data)
            .args(["man", "--out-dir"])
            .arg(man.join("man1"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        for (file, user) in [(&unit, true), (&system, false)] {
            let mut cmd = Command::new(&analyze);
            cmd.env("MANPATH", &man);
            if user {
                // A user manager of its own, with its runtime dir here.
                let runtime = dir.path().join("runtime");
                std::fs::create_dir_all(&runtime).unwrap();
                cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime);
            }
            let out = cmd
                .env("XDG_CONFIG_HOME", &config_home)
                .arg("verify")
                .arg(file)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // verify names every problem with the unit's own file name; messages about
            // other units of this machine (or no running manager) are not ours.
            let ours: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("crank-node.service"))
                .collect();
            eprintln!(
                "systemd-analyze verify {}: exit {:?}, {stderr}",
                file.display(),
                out.status.code()
            );
            assert!(out.status.success(), "{}: {stderr}", file.display());
            assert!(ours.is_empty(), "{}: {}", file.display(), ours.join("\n"));
        }
    }

    let (out, v) = json(
        &data,
        &[("XDG_CONFIG_HOME", config_home.display().to_string())],
        &["service", "uninstall"],
    );
    assert!(out.status.success(), "{}", text(&out));
    check_schema("service-uninstall", &v);
    assert_eq!(v["removed"], true);
    assert!(!unit.exists());
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let subcommands = [
        "join",
        "bootstrap",
        "submit",
        "status",
        "models",
        "wallet",
        "config",
        "id",
        "doctor",
        "service",
        "completions",
    ];
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = crank(&data).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for s in ["join", "submit", "wallet", "doctor", "service"] {
            assert!(script.contains(s), "{shell} completions lack {s}");
        }
        if shell == "bash" {
            let path = dir.path().join("crank-node.bash");
            std::fs::write(&path, &script).unwrap();
            let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(out.status.success(), "bash -n: {}", text(&out));
        }
    }

    let out = crank(&data).arg("man").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains("\n.TH crank-node 1"),
        "{page}"
    );
    assert!(page.contains(".TH crank-node 1"), "{page}");
    for s in subcommands {
        assert!(page.contains(s), "the man page lacks {s}");
    }
    assert!(
        !page.contains("\nman\n"),
        "the hidden man command is not documented"
    );

    // One page per command, as the package ships them; each renders.
    let pages = dir.path().join("man");
    let out = crank(&data)
        .args(["man", "--out-dir"])
        .arg(&pages)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for s in subcommands {
        assert!(pages.join(format!("crank-node-{s}.1")).is_file(), "{s}");
    }
    assert!(pages.join("crank-node-wallet-settle.1").is_file());
    if let Some(groff) = tool("groff") {
        let out = Command::new(groff)
            .args(["-man", "-Tutf8", "-ww"])
            .arg(pages.join("crank-node.1"))
            .output()
            .unwrap();
        assert!(out.status.success(), "groff: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("crank-node"), "{shown}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "groff: {}",
            text(&out)
        );
    }
}

#[test]
fn the_debian_package_assets_exist() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("node/Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let dir = tempfile::tempdir().unwrap();
    // What scripts/deb.sh generates into target/release/deb, generated here from this build.
    let generated = dir.path().join("deb");
    let out = Command::new(repo().join("scripts/deb-assets.sh"))
        .arg(env!("CARGO_BIN_EXE_crank-node"))
        .arg(&generated)
        .output()
        .unwrap();
    assert!(out.status.success(), "deb-assets.sh: {}", text(&out));
    let assets = deb["assets"].as_array().unwrap();
    assert!(!assets.is_empty());
    for asset in assets {
        let source = asset[0].as_str().unwrap();
        let found = if source == "target/release/crank-node" {
            true
        } else if let Some(rest) = source.strip_prefix("target/release/deb/") {
            match rest.strip_suffix("*.1") {
                Some(folder) => std::fs::read_dir(generated.join(folder))
                    .unwrap()
                    .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".1")),
                None => generated.join(rest).is_file(),
            }
        } else {
            repo().join("node").join(source).is_file()
        };
        assert!(found, "deb asset {source} is missing");
    }
    // The unit cargo-deb installs (systemd-units) and the user the maintainer script makes.
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    let unit = repo().join("node").join(scripts).join("crank-node.service");
    let unit = std::fs::read_to_string(unit).unwrap();
    assert!(unit.contains("User=crank-node"), "{unit}");
    let postinst =
        std::fs::read_to_string(repo().join("node").join(scripts).join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("#DEBHELPER#"), "{postinst}");
}

#[test]
fn policy_commands_test_a_file_and_check_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policies = repo().join("docs/policies");
    let admission = policies.join("admission.rego");
    let admission = admission.to_str().unwrap();

    // The sample input: a known requester on mains, nothing to decline.
    let (out, v) = json(&data, &[], &["policy", "test", admission]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("policy-test", &v);
    assert_eq!(v["kind"], "admission");
    assert_eq!(v["decision"]["deny"], serde_json::json!([]));

    // An input file: a stranger offering too little on a hot device, on battery.
    let input = dir.path().join("call.json");
    let mut call = serde_json::to_value(crank_policy::sample::admission()).unwrap();
    call["requester"]["trust"]["known"] = false.into();
    call["price"]["max_stroops"] = 10.into();
    call["device"]["temperature_c"] = 91.0.into();
    call["gate"]["on_battery"] = true.into();
    std::fs::write(&input, call.to_string()).unwrap();
    let input = input.to_str().unwrap();
    let (out, v) = json(&data, &[], &["policy", "test", admission, "--input", input]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("policy-test", &v);
    assert_eq!(v["decision"]["deny"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["decision"]["price_multiplier"], 2.0);
    // Without --json it says what the node would do.
    let out = crank(&data)
        .args(["policy", "test", admission, "--input", input])
        .output()
        .unwrap();
    assert!(text(&out).contains("decline: policy: "), "{}", text(&out));

    // The example directory loads; a broken one names the file and fails.
    let (out, v) = json(&data, &[], &["policy", "check", policies.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    check_schema("policy-check", &v);
    assert_eq!(
        v["kinds"],
        serde_json::json!(["admission", "placement", "output"])
    );
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("owner.rego"),
        "package crank.admission\ndeny contains if {\n",
    )
    .unwrap();
    let (out, v) = json(&data, &[], &["policy", "check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    check_schema("policy-check", &v);
    assert!(v["error"].as_str().unwrap().contains("owner.rego"), "{v}");

    // A node whose policy directory does not load refuses to start, naming the file.
    std::fs::create_dir_all(data.join("policies")).unwrap();
    std::fs::copy(broken.join("owner.rego"), data.join("policies/owner.rego")).unwrap();
    let mut child = crank(&data)
        .args([
            "join",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("a node with a broken policy kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("owner.rego"), "{}", text(&out));
}

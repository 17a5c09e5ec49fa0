//! The owner's dashboard on a seeded ledger: a node whose ledger holds a week of receipts
//! (served and bought) and gate changes, joined to a bootstrap node and one other worker.
//! Its one-time link, session cookie, Host and CSRF checks are exercised over raw HTTP, then
//! the page is loaded in a real headless Chromium: the DOM must show every chart with data
//! points, and the screenshot must not be blank.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crank_node::dashboard::{GateEvent, record_gate};
use crank_payments::{Check, Ledger, ReceiptKey, Role, Stored, Wallet};
use crank_protocol::{
    ContentHash, CounterSigned, Energy, EnergyMethod, ExecPath, Identity, ModelId, Signed, TaskId,
    Timings, WorkReceipt,
};
use serde_json::Value;

use super::living::{check_schema, tool};
use super::{Daemon, crank, ledger_path, text};

const SERVED: u64 = 30;
const BOUGHT: u64 = 12;
const DAY: u64 = 86_400_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn receipt(
    ledger: &Ledger,
    requester: &Identity,
    worker: &Identity,
    i: u64,
    finished_at: u64,
) -> Signed<WorkReceipt> {
    let price = 1_000 + 50 * i;
    let mut task = [0u8; 32];
    task[..8].copy_from_slice(&i.to_le_bytes());
    task[8..16].copy_from_slice(&finished_at.to_le_bytes());
    ledger
        .issue_receipt(
            &requester.node_id(),
            &worker.node_id(),
            price,
            |seq, cum| {
                Signed::sign(
                    WorkReceipt {
                        task_id: TaskId(task),
                        requester: requester.node_id(),
                        worker: worker.node_id(),
                        model: ModelId([0x33; 32]),
                        input_hash: ContentHash([0x44; 32]),
                        output_hash: ContentHash([0x55; 32]),
                        price_stroops: price,
                        energy: Energy {
                            microjoules: 40_000 + 3_000 * (i % 7),
                            method: EnergyMethod::CpuTimeEstimate,
                        },
                        path: ExecPath::Cpu,
                        timings: Timings {
                            accepted_at: finished_at - 30,
                            started_at: finished_at - 20,
                            finished_at,
                            run_micros: 9_000,
                        },
                        pair_seq: seq,
                        cumulative_stroops: cum,
                        payout: Wallet::from_seed([0x71; 32]).address(),
                        payer: Wallet::from_seed([0x81; 32]).address(),
                    },
                    worker,
                )
            },
        )
        .unwrap()
}

/// A week of work in `dir`'s ledger: [`SERVED`] tasks this node served and [`BOUGHT`] it
/// bought, spread over six days, and five gate changes.
fn seed(dir: &Path) {
    crank_node::identity::create_private_dir(dir).unwrap();
    let (me, _) = crank_node::identity::load_or_create(dir).unwrap();
    let ledger = Ledger::open(&ledger_path(dir)).unwrap();
    let now = now_ms();
    let requester = Identity::from_secret([0x51; 32]);
    for i in 0..SERVED {
        let signed = receipt(
            &ledger,
            &requester,
            &me,
            i,
            now - 6 * DAY + i * (6 * DAY / SERVED),
        );
        let cs = CounterSigned::countersign(signed, &requester).unwrap();
        assert_eq!(
            ledger
                .store_receipt(&cs, Role::Worker, Check::Passed)
                .unwrap(),
            Stored::New
        );
    }
    let scratch = tempfile::tempdir().unwrap();
    let other = Ledger::open(&scratch.path().join("worker.redb")).unwrap();
    let worker = Identity::from_secret([0x62; 32]);
    for i in 0..BOUGHT {
        let signed = receipt(
            &other,
            &me,
            &worker,
            i,
            now - 5 * DAY + i * (5 * DAY / BOUGHT),
        );
        let cs = CounterSigned::countersign(signed, &me).unwrap();
        let stored = ledger
            .store_receipt(&cs, Role::Requester, Check::AwaitingOutputs { since: now })
            .unwrap();
        assert_eq!(stored, Stored::New);
        assert!(
            ledger
                .outputs_passed(&ReceiptKey::of(&cs.inner.body))
                .unwrap()
        );
    }
    for (k, (open, reason)) in [
        (true, None),
        (false, Some("on battery 54 %")),
        (true, None),
        (false, Some("user active")),
        (true, None),
    ]
    .into_iter()
    .enumerate()
    {
        record_gate(
            &ledger,
            GateEvent {
                at: now - 6 * DAY + k as u64 * DAY,
                open,
                reason: reason.map(str::to_string),
            },
        );
    }
    ledger.audit().unwrap();
}

/// One HTTP/1.1 request on a fresh connection: status, headers (lower-cased names), body.
fn http(addr: &str, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn get(
    addr: &str,
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n"),
    )
}

fn post(addr: &str, path: &str, extra: &str) -> u16 {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .0
}

/// `crank-node --json dashboard` on `dir`: the link, checked against its schema.
fn link(dir: &Path) -> (String, String) {
    let out = crank(dir).args(["--json", "dashboard"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    check_schema("dashboard", &v);
    (
        v["url"].as_str().unwrap().to_string(),
        v["addr"].as_str().unwrap().to_string(),
    )
}

/// The path and query of a link.
fn path_of(url: &str, addr: &str) -> String {
    url.strip_prefix(&format!("http://{addr}"))
        .unwrap()
        .to_string()
}

/// The `data-points` of the `<svg id=ID>` in a serialised DOM.
fn points(dom: &str, id: &str) -> usize {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    let tag = &dom[at..at + dom[at..].find('>').unwrap()];
    let v = tag
        .split("data-points=\"")
        .nth(1)
        .unwrap_or_else(|| panic!("#{id} was never drawn: {tag}"));
    v[..v.find('"').unwrap()].parse().unwrap()
}

fn chromium(profile: &Path, args: &[&str], url: &str) -> (std::process::Output, Duration) {
    let bin = tool("chromium").expect("checked by the caller");
    let started = Instant::now();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-extensions",
            "--virtual-time-budget=15000",
            "--window-size=1280,1500",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    (out, started.elapsed())
}

/// Whether a PNG has more than a handful of colours (a blank page has one).
fn colours(png_path: &Path) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let mut seen = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        seen.insert(p.to_vec());
        if seen.len() > 1000 {
            break;
        }
    }
    seen.len()
}

#[test]
fn the_dashboard_shows_a_seeded_ledger_in_a_real_browser_and_keeps_strangers_out() {
    let root = tempfile::tempdir().unwrap();
    let (boot_dir, peer_dir, dir) = (
        root.path().join("boot"),
        root.path().join("peer"),
        root.path().join("node"),
    );
    seed(&dir);
    for d in [&boot_dir, &peer_dir] {
        crank_node::identity::create_private_dir(d).unwrap();
    }
    let boot = Daemon::start(&boot_dir, &["bootstrap"], &[]);
    let join = ["join", "--bootstrap", boot.addr.as_str()];
    let _peer = Daemon::start(&peer_dir, &join, &[]);
    let _node = Daemon::start(&dir, &join, &[]);

    // The other worker's advert arrives (gossip), so there is trust to draw.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = crank(&dir).args(["--json", "status"]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["adverts"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no advert arrived: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Over raw HTTP: the link, the cookie, and everything a stranger might try.
    let (url, addr) = link(&dir);
    let login = path_of(&url, &addr);
    let (code, _, _) = get(&addr, "evil.example", &login, None);
    assert_eq!(
        code, 421,
        "a rebinding Host is refused, and the code not spent"
    );
    assert_eq!(get(&addr, &addr, "/", None).0, 401, "no session, no page");
    assert_eq!(
        get(&addr, &addr, "/data", None).0,
        401,
        "no session, no data"
    );
    let bogus = format!("/login?code={}", "0".repeat(64));
    assert_eq!(get(&addr, &addr, &bogus, None).0, 403);
    let (code, headers, _) = get(&addr, &addr, &login, None);
    assert_eq!(code, 303, "{headers:?}");
    assert_eq!(header(&headers, "location"), Some("/"));
    let set = header(&headers, "set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert_eq!(get(&addr, &addr, &login, None).0, 403, "a link works once");

    let (code, headers, body) = get(&addr, &addr, "/data", Some(&cookie));
    assert_eq!(code, 200, "{body}");
    let csp = header(&headers, "content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let data: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(data["totals"]["served"], SERVED, "{data:#}");
    assert_eq!(data["totals"]["bought"], BOUGHT, "{data:#}");
    assert_eq!(
        data["bucket_secs"], 86_400,
        "a week of receipts is drawn per day"
    );
    let served: u64 = data["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served, SERVED, "every served task lands in a bucket");
    assert_eq!(
        data["energy"].as_array().unwrap().len() as u64,
        SERVED + BOUGHT
    );
    let gate_events = data["gate_history"].as_array().unwrap().len();
    assert!(gate_events >= 5, "{data:#}");
    assert!(
        !data["peers"]["trust"].as_array().unwrap().is_empty(),
        "{data:#}"
    );
    assert_eq!(
        get(&addr, "attacker.example:80", "/data", Some(&cookie)).0,
        421,
        "the session cookie is no use through another Host"
    );
    let (_, _, page) = get(&addr, &addr, "/", Some(&cookie));
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .map(|v| v[..64].to_string())
        .unwrap();
    // What a browser fetches: the page, its script and style, and the data.
    let weight: usize = ["/", "/app.js", "/app.css"]
        .iter()
        .map(|p| get(&addr, &addr, p, Some(&cookie)).2.len())
        .sum::<usize>()
        + body.len();

    let with_cookie = format!("Cookie: {cookie}\r\n");
    assert_eq!(post(&addr, "/logout", &with_cookie), 403, "no CSRF token");
    assert_eq!(
        post(
            &addr,
            "/logout",
            &format!("{with_cookie}x-csrf-token: {csrf}\r\nOrigin: http://evil.example\r\n")
        ),
        403,
        "a cross-site Origin"
    );
    assert_eq!(
        post(
            &addr,
            "/logout",
            &format!("{with_cookie}x-csrf-token: {csrf}\r\nSec-Fetch-Site: cross-site\r\n")
        ),
        403,
        "a cross-site fetch"
    );
    assert_eq!(
        get(&addr, &addr, "/data", Some(&cookie)).0,
        200,
        "still signed in"
    );
    assert_eq!(
        post(
            &addr,
            "/logout",
            &format!("{with_cookie}x-csrf-token: {csrf}\r\n")
        ),
        204
    );
    assert_eq!(
        get(&addr, &addr, "/data", Some(&cookie)).0,
        401,
        "signed out"
    );

    // A real browser: the link, the redirect with its cookie, the script, the charts.
    let Some(_) = tool("chromium") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let (url, _) = link(&dir);
    let (out, took) = chromium(profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("data-ready=\"1\""),
        "{}\n{dom}",
        text(&out)
    );
    assert_eq!(points(&dom, "energy") as u64, SERVED + BOUGHT, "{dom}");
    assert!(
        points(&dom, "money") >= 2 * 6,
        "two lines over at least six days: {dom}"
    );
    assert!(points(&dom, "tasks") >= 6, "{dom}");
    assert_eq!(points(&dom, "gatehistory"), gate_events, "{dom}");
    assert!(points(&dom, "trust") >= 1, "{dom}");
    assert!(
        dom.contains(&format!("<b>{SERVED}</b>tasks served")),
        "{dom}"
    );
    assert!(dom.matches("class=\"point").count() > 50, "{dom}");
    let render_ms = dom
        .split("data-render-ms=\"")
        .nth(1)
        .map(|v| v[..v.find('"').unwrap()].to_string())
        .unwrap_or_default();

    let shot = root.path().join("dashboard.png");
    let (url, _) = link(&dir);
    let (out, _) = chromium(
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(out.status.success(), "{}", text(&out));
    let n = colours(&shot);
    assert!(n > 20, "the screenshot is blank or nearly so ({n} colours)");
    eprintln!(
        "dashboard: page weight {weight} bytes (HTML+JS+CSS+data); first render {render_ms} ms after navigation (browser clock); chromium --dump-dom {:.1} s; screenshot {n}+ colours",
        took.as_secs_f64()
    );
}

//! The file source end to end: the real agent and central store, real files, real
//! rotation, truncation, deletion and restarts; the archive checked line by line.

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn source(w: &World, include: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"app\"\ninclude = [\"{}/{include}\"]\npoll_interval = \"200ms\"\npartial_line_timeout = \"1s\"\nrotate_wait = \"1s\"\nmax_line_bytes = 2048\n{extra}\n",
        w.logs().display()
    )
}

fn write_lines(path: &Path, tag: &str, from: usize, to: usize) {
    let mut f = std::io::BufWriter::new(open_append(path));
    for i in from..to {
        writeln!(f, "{tag} {i:07} payload text of the line").unwrap();
    }
    f.flush().unwrap();
}

fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!("{tag} {i:07} payload text of the line"))
        .collect()
}

/// Every expected body exactly once among the records, whatever path it came from.
fn assert_each_once(records: &[serde_json::Value], expected: &[String]) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *count.entry(r["body"].as_str().unwrap()).or_default() += 1;
    }
    for e in expected {
        assert_eq!(
            count.get(e.as_str()),
            Some(&1),
            "line {e:?} not exactly once"
        );
    }
    assert_eq!(records.len(), expected.len(), "unexpected extra records");
}

fn fds_to(pid: i32, needle: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|t| t.to_string_lossy().contains(needle))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn copytruncate_copy_matched_by_the_glob_is_not_read_again() {
    let mut w = World::new();
    w.sources = source(&w, "app.log*", "");
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let app = w.logs().join("app.log");
    write_lines(&app, "a", 0, 1000);
    w.wait_records(1000, LONG);
    // More lines, then logrotate's copytruncate at once: the copy holds lines the agent
    // may not have read yet; it continues where the truncated file was left.
    write_lines(&app, "a", 1000, 1200);
    std::fs::copy(&app, w.logs().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&app)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_lines(&app, "b", 0, 100);
    let records = w.wait_records(1300, LONG);
    let mut expected = lines("a", 0, 1200);
    expected.extend(lines("b", 0, 100));
    assert_each_once(&records, &expected);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.records().len(), 1300, "something was read twice later");
    let logs = agent.log_text();
    assert!(logs.contains("truncated"), "truncation is logged: {logs}");
    assert!(
        !logs.contains("payload text"),
        "agent logs hold no line content"
    );
}

#[test]
fn rename_rotation_twice_before_the_reader_catches_up_loses_nothing() {
    let mut w = World::new();
    w.sources = source(&w, "app.log", "");
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let app = w.logs().join("app.log");
    write_lines(&app, "x", 0, 10);
    w.wait_records(10, LONG);
    // Far more than one read pass, renamed away twice at once, then a new file.
    write_lines(&app, "x", 10, 60_000);
    std::fs::rename(&app, w.logs().join("app.log.1")).unwrap();
    std::fs::rename(w.logs().join("app.log.1"), w.logs().join("app.log.2")).unwrap();
    write_lines(&app, "y", 0, 500);
    let records = w.wait_records(60_500, LONG);
    let mut expected = lines("x", 0, 60_000);
    expected.extend(lines("y", 0, 500));
    assert_each_once(&records, &expected);
}

#[test]
fn compressed_rotated_files_are_not_shipped_again() {
    let mut w = World::new();
    w.sources = source(&w, "app.log*", "");
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let app = w.logs().join("app.log");
    write_lines(&app, "z", 0, 300);
    w.wait_records(300, LONG);
    let rotated = w.logs().join("app.log.1");
    std::fs::rename(&app, &rotated).unwrap();
    write_lines(&app, "n", 0, 10);
    // logrotate's delaycompress: gzip the rotated file later; and a compressed file
    // without a telling name (zstd magic) that appears by rotation.
    let st = std::process::Command::new("gzip")
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        w.logs().join("app.log.2"),
        b"\x28\xb5\x2f\xfdcompressed bytes\nmore\n",
    )
    .unwrap();
    let records = w.wait_records(310, LONG);
    std::thread::sleep(Duration::from_secs(2));
    let records2 = w.records();
    assert_eq!(records2.len(), 310, "compressed content was shipped");
    let mut expected = lines("z", 0, 300);
    expected.extend(lines("n", 0, 10));
    assert_each_once(&records, &expected);
}

#[test]
fn deleted_file_is_read_to_its_end_its_descriptor_closed_and_a_recreated_one_read_from_start() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "");
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let app = w.logs().join("gone.log");
    write_lines(&app, "d", 0, 10);
    w.wait_records(10, LONG);
    wait_until(LONG, "agent has the file open", || {
        fds_to(agent.pid(), "gone.log") == 1
    });
    write_lines(&app, "d", 10, 20_000);
    std::fs::remove_file(&app).unwrap();
    w.wait_records(20_000, LONG);
    wait_until(LONG, "no descriptor of the deleted file left", || {
        fds_to(agent.pid(), "gone.log") == 0
    });
    write_lines(&app, "e", 0, 5);
    let records = w.wait_records(20_005, LONG);
    let mut expected = lines("d", 0, 20_000);
    expected.extend(lines("e", 0, 5));
    assert_each_once(&records, &expected);
    let new_first = records
        .iter()
        .find(|r| r["body"] == lines("e", 0, 1)[0])
        .unwrap();
    assert_eq!(new_first["offset"], 0, "the re-created file is read from 0");
}

#[test]
fn checkpoints_of_files_gone_longer_than_the_expiry_are_deleted() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "checkpoint_expiry = \"2s\"");
    w.agent_env
        .push(("LOGVEIL_LOG".into(), "info,logveil::source=debug".into()));
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let gone = w.logs().join("gone.log");
    let kept = w.logs().join("kept.log");
    write_lines(&gone, "g", 0, 5);
    write_lines(&kept, "k", 0, 5);
    w.wait_records(10, LONG);
    std::fs::remove_file(&gone).unwrap();
    wait_until(LONG, "the expired checkpoint forgotten", || {
        agent.log_text().contains("Forgetting the checkpoint")
    });
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(LONG).success());
    let buffer = logveil::buffer::Buffer::open(&w.path("data/buffer"), 1 << 20, 1 << 30).unwrap();
    let paths: Vec<_> = buffer
        .checkpoints()
        .unwrap()
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(
        paths,
        vec![kept],
        "only the present file keeps its checkpoint; agent log: {}",
        w.agent_logs()
    );
}

#[test]
fn read_from_end_at_first_start_then_restarts_resume_and_new_files_start_at_zero() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "read_from = \"end\"");
    let _store = w.start_receiver();
    let old = w.logs().join("old.log");
    write_lines(&old, "old", 0, 100);
    let mut agent = w.start_agent();
    // Reading starts at the end: probe lines appended from now on are read.
    let mut probes = 0;
    wait_until(LONG, "a probe line read", || {
        std::thread::sleep(Duration::from_millis(200));
        write_lines(&old, "probe", probes, probes + 1);
        probes += 1;
        !w.records().is_empty()
    });
    // Probes written before the agent's first look are backlog: the rest must arrive.
    let first_read = w.records()[0]["body"].as_str().unwrap().to_string();
    let first_index = (0..probes)
        .position(|i| lines("probe", i, i + 1)[0] == first_read)
        .expect("the first record is a probe");
    let probes = probes - first_index;
    w.wait_records(probes, LONG);
    write_lines(&old, "new", 0, 10);
    w.wait_records(probes + 10, LONG);
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(LONG).success());
    write_lines(&old, "down", 0, 5);
    let fresh = w.logs().join("fresh.log");
    write_lines(&fresh, "fresh", 0, 7);
    let _agent = w.start_agent();
    let records = w.wait_records(probes + 22, LONG);
    let bodies: Vec<&str> = records
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert!(
        !bodies.iter().any(|b| b.starts_with("old ")),
        "backlog read"
    );
    for e in lines("new", 0, 10)
        .iter()
        .chain(&lines("down", 0, 5))
        .chain(&lines("fresh", 0, 7))
    {
        assert_eq!(bodies.iter().filter(|b| *b == e).count(), 1, "{e}");
    }
}

#[test]
fn ignore_older_skips_the_backlog_of_old_files_but_reads_their_new_lines() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "ignore_older = \"1h\"");
    let _store = w.start_receiver();
    let stale = w.logs().join("stale.log");
    let recent = w.logs().join("recent.log");
    write_lines(&stale, "stale", 0, 50);
    write_lines(&recent, "recent", 0, 50);
    let two_days_ago = nix::sys::time::TimeSpec::new(
        (std::time::SystemTime::now() - Duration::from_secs(2 * 86400))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        0,
    );
    nix::sys::stat::utimensat(
        None,
        &stale,
        &two_days_ago,
        &two_days_ago,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    let _agent = w.start_agent();
    w.wait_records(50, LONG);
    std::thread::sleep(Duration::from_secs(1));
    write_lines(&stale, "stale-new", 0, 3);
    let records = w.wait_records(53, LONG);
    let mut expected = lines("recent", 0, 50);
    expected.extend(lines("stale-new", 0, 3));
    assert_each_once(&records, &expected);
}

#[test]
fn restart_after_sigterm_and_after_sigkill_ships_each_line_once() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "");
    let _store = w.start_receiver();
    let app = w.logs().join("r.log");
    let mut n = 0;
    for round in 0..4 {
        let mut agent = w.start_agent();
        write_lines(&app, "r", n, n + 5000);
        n += 5000;
        std::thread::sleep(Duration::from_millis(300));
        if round % 2 == 0 {
            agent.kill9();
        } else {
            agent.signal(Signal::SIGTERM);
            assert!(agent.wait_exit(LONG).success());
        }
    }
    let _agent = w.start_agent();
    let records = w.wait_records(n, LONG);
    assert_file_shipped_exactly_once(&records, &app);
}

#[test]
fn rotation_to_an_unmatched_name_while_the_agent_is_down_ships_the_rotated_tail() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "");
    let _store = w.start_receiver();
    let app = w.logs().join("app.log");
    let mut agent = w.start_agent();
    write_lines(&app, "a", 0, 500);
    w.wait_records(500, LONG);
    agent.kill9();
    // While the agent is down: more lines, then logrotate's rename to a name `*.log` does
    // not match, and a new file under the old name.
    write_lines(&app, "a", 500, 800);
    let rotated = w.logs().join("app.log-20261203");
    std::fs::rename(&app, &rotated).unwrap();
    write_lines(&app, "b", 0, 100);
    // And a file unrelated to any checkpoint under an unmatched name is never read.
    write_lines(&w.logs().join("other.txt"), "x", 0, 10);
    let agent = w.start_agent();
    let records = w.wait_records(900, LONG);
    let mut expected = lines("a", 0, 800);
    expected.extend(lines("b", 0, 100));
    assert_each_once(&records, &expected);
    // The rotated file is read to its end and then let go.
    wait_until(LONG, "rotated file closed", || {
        fds_to(agent.pid(), "app.log-20261203") == 0
    });
}

/// Runs the agent in a user namespace of its own whose inotify limit `limit` (a file
/// under /proc/sys/user/) is 0: as on a host whose `max_user_instances` or
/// `max_user_watches` other programs used up.
/// Returns false (the caller skips, saying so) where user namespaces are not allowed.
fn without_inotify(w: &mut World, limit: &str) -> bool {
    let probe = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg(format!("echo 0 > /proc/sys/user/{limit}"))
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED: this machine cannot lower {limit} in a user namespace (unshare --user failed)"
        );
        return false;
    }
    w.agent_wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        &format!("echo 0 > /proc/sys/user/{limit} && exec \"$@\""),
        "sh",
    ]
    .map(String::from)
    .to_vec();
    true
}

fn inotify_exhausted_falls_back_to_polling(limit: &str) {
    let mut w = World::new();
    w.sources = source(&w, "**/*.log", "");
    if !without_inotify(&mut w, limit) {
        return;
    }
    let _store = w.start_receiver();
    write_lines(&w.logs().join("first.log"), "first", 0, 50);
    let _agent = w.start_agent();
    w.wait_records(50, LONG);
    // Files and directories that appear later, and lines appended to a known file, are
    // found by polling alone.
    std::fs::create_dir_all(w.logs().join("later/deeper")).unwrap();
    write_lines(&w.logs().join("later/deeper/new.log"), "new", 0, 30);
    write_lines(&w.logs().join("first.log"), "first", 50, 60);
    let records = w.wait_records(90, LONG);
    let mut expected = lines("first", 0, 60);
    expected.extend(lines("new", 0, 30));
    assert_each_once(&records, &expected);
    assert!(
        w.agent_logs().contains("relying on polling"),
        "the fallback is logged"
    );
}

#[test]
fn exhausted_inotify_instances_fall_back_to_polling() {
    inotify_exhausted_falls_back_to_polling("max_inotify_instances");
}

#[test]
fn exhausted_inotify_watches_fall_back_to_polling() {
    inotify_exhausted_falls_back_to_polling("max_inotify_watches");
}

#[test]
fn a_parked_file_renamed_to_an_unmatched_name_before_its_new_lines_were_read_loses_none() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "max_open_files = 2");
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let [a, b, c] = ["a.log", "b.log", "c.log"].map(|n| w.logs().join(n));
    // One file at a time, so the least recently active one (a.log) is the one closed
    // to open the third.
    write_lines(&a, "a", 0, 100);
    w.wait_records(100, LONG);
    write_lines(&b, "b", 0, 100);
    w.wait_records(200, LONG);
    write_lines(&c, "c", 0, 100);
    w.wait_records(300, LONG);
    wait_until(LONG, "a.log parked (its descriptor closed)", || {
        fds_to(agent.pid(), "a.log") == 0 && fds_to(agent.pid(), "c.log") == 1
    });
    // New lines in the parked file, then a rename to a name `*.log` does not match, then
    // more lines into it under that name; a new a.log appears.
    write_lines(&a, "a", 100, 3000);
    let rotated = w.logs().join("a.log-20261204");
    std::fs::rename(&a, &rotated).unwrap();
    write_lines(&rotated, "a", 3000, 3500);
    write_lines(&a, "new", 0, 50);
    let mut expected = lines("a", 0, 3500);
    expected.extend(lines("b", 0, 100));
    expected.extend(lines("c", 0, 100));
    expected.extend(lines("new", 0, 50));
    let records = w.wait_records(expected.len(), LONG);
    assert_each_once(&records, &expected);
    // Read to its end, then let go.
    wait_until(LONG, "the renamed file closed", || {
        fds_to(agent.pid(), "a.log-20261204") == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        w.records().len(),
        expected.len(),
        "something was read twice later"
    );
}

#[test]
fn side_by_side_files_with_the_same_first_line_are_both_read_whole_never_merged() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "");
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let header = "# service log v1, fields: time level message\n";
    let (a, b) = (w.logs().join("a.log"), w.logs().join("b.log"));
    append(&a, header);
    write_lines(&a, "a", 0, 200);
    w.wait_records(201, LONG);
    // A second file with the same header appears while the first is open (it may be held
    // for rotate_wait as a possible copy, then is read as the file it is).
    append(&b, header);
    write_lines(&b, "b", 0, 200);
    w.wait_records(402, LONG);
    write_lines(&a, "a", 200, 300);
    write_lines(&b, "b", 200, 300);
    w.wait_records(602, LONG);
    // And after a crash, each resumes at its own checkpoint.
    agent.kill9();
    write_lines(&a, "a", 300, 350);
    write_lines(&b, "b", 300, 350);
    let _agent = w.start_agent();
    let records = w.wait_records(702, LONG);
    assert_eq!(assert_file_shipped_exactly_once(&records, &a), 351);
    assert_eq!(assert_file_shipped_exactly_once(&records, &b), 351);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.records().len(), 702, "something was read twice later");
}

#[test]
fn copytruncate_refilled_past_the_checkpoint_between_looks_is_read_from_zero_and_counted() {
    let mut w = World::new();
    let telemetry = free_port();
    w.sources = source(&w, "*.log", "");
    w.agent_extra = format!("[telemetry]\nlisten = \"127.0.0.1:{telemetry}\"\n");
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let app = w.logs().join("app.log");
    write_lines(&app, "old", 0, 300);
    w.wait_records(300, LONG);
    wait_until(LONG, "telemetry up", || {
        metric(telemetry, "logveil_agent_truncations").is_some()
    });
    assert_eq!(metric(telemetry, "logveil_agent_truncations"), Some(0.0));
    // The agent cannot look while the file is truncated and refilled past its position.
    agent.signal(Signal::SIGSTOP);
    let old_size = std::fs::metadata(&app).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&app)
        .unwrap()
        .set_len(0)
        .unwrap();
    write_lines(&app, "new", 0, 500);
    assert!(std::fs::metadata(&app).unwrap().len() > old_size);
    std::thread::sleep(Duration::from_millis(600));
    agent.signal(Signal::SIGCONT);
    let records = w.wait_records(800, LONG);
    let mut expected = lines("old", 0, 300);
    expected.extend(lines("new", 0, 500));
    assert_each_once(&records, &expected);
    let first_new = records
        .iter()
        .find(|r| r["body"] == lines("new", 0, 1)[0])
        .unwrap();
    assert_eq!(first_new["offset"], 0, "the new content is read from 0");
    wait_until(LONG, "the truncation counted", || {
        metric(telemetry, "logveil_agent_truncations") == Some(1.0)
    });
    let logs = agent.log_text();
    assert!(
        logs.contains("WARN") && logs.contains("reading it again from its start"),
        "the truncation is logged as a warning: {logs}"
    );
    assert!(
        !logs.contains("payload text"),
        "agent logs hold no line content"
    );
}

#[test]
fn an_excluded_rotated_name_is_never_opened() {
    let mut w = World::new();
    // read_compressed: only the exclude keeps the .bz2 file out.
    let extra = format!(
        "exclude = [\"{}/*.bz2\"]\nread_compressed = true",
        w.logs().display()
    );
    w.sources = source(&w, "app.log*", &extra);
    let _store = w.start_receiver();
    let agent = w.start_agent();
    let app = w.logs().join("app.log");
    write_lines(&app, "z", 0, 300);
    w.wait_records(300, LONG);
    // Rotation: rename, new file, then the rotated file compressed (a new inode).
    let rotated = w.logs().join("app.log.1");
    std::fs::rename(&app, &rotated).unwrap();
    write_lines(&app, "n", 0, 10);
    w.wait_records(310, LONG);
    let st = std::process::Command::new("bzip2")
        .arg(&rotated)
        .status()
        .unwrap();
    assert!(st.success());
    let bz2 = w.logs().join("app.log.1.bz2");
    assert!(bz2.exists());
    // Several scans and change notifications while it exists: never a descriptor of it.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert_eq!(
            fds_to(agent.pid(), "app.log.1.bz2"),
            0,
            "excluded file opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    write_lines(&app, "n", 10, 20);
    let records = w.wait_records(320, LONG);
    let mut expected = lines("z", 0, 300);
    expected.extend(lines("n", 0, 20));
    assert_each_once(&records, &expected);
    assert!(
        !records.iter().any(|r| r["path"] == bz2.to_str().unwrap()),
        "nothing shipped from the excluded file"
    );
    assert_eq!(fds_to(agent.pid(), "app.log.1.bz2"), 0);
}

#[test]
fn a_symlink_and_its_target_both_matched_are_read_once() {
    let mut w = World::new();
    // As Kubernetes: /var/log/containers/<pod>_<ns>_<c>.log → /var/log/pods/<ns>_<pod>/<c>/0.log
    w.sources = format!(
        "[[sources]]\nname = \"k8s\"\ninclude = [\"{0}/containers/*.log\", \"{0}/pods/**/*.log\"]\npoll_interval = \"200ms\"\npartial_line_timeout = \"1s\"\nrotate_wait = \"1s\"\n",
        w.logs().display()
    );
    let _store = w.start_receiver();
    let target_dir = w.logs().join("pods/ns_web-1/app");
    std::fs::create_dir_all(&target_dir).unwrap();
    std::fs::create_dir_all(w.logs().join("containers")).unwrap();
    let target = target_dir.join("0.log");
    write_lines(&target, "k", 0, 100);
    std::os::unix::fs::symlink(&target, w.logs().join("containers/web-1_ns_app.log")).unwrap();
    let mut agent = w.start_agent();
    w.wait_records(100, LONG);
    write_lines(&target, "k", 100, 200);
    w.wait_records(200, LONG);
    // Also across a crash: one identity, one checkpoint.
    agent.kill9();
    write_lines(&target, "k", 200, 250);
    let _agent = w.start_agent();
    let records = w.wait_records(250, LONG);
    assert_each_once(&records, &lines("k", 0, 250));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.records().len(), 250, "read under both paths");
}

#[test]
fn a_utf8_bom_at_the_start_of_a_file_is_not_part_of_the_first_line() {
    let mut w = World::new();
    w.sources = source(&w, "*.log", "");
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let f = w.logs().join("bom.log");
    append(&f, "\u{feff}first line\nsecond line\n");
    let records = w.wait_records(2, LONG);
    assert_eq!(records[0]["body"], "first line");
    assert_eq!(
        records[0]["offset"], 3,
        "the first line starts after the BOM"
    );
    assert_eq!(records[1]["body"], "second line");
    assert_eq!(records[1]["offset"], 14);
}

#[test]
fn a_symlink_to_a_file_its_owner_does_not_own_is_not_followed() {
    let mut w = World::new();
    w.sources = source(&w, "**/*.log", "");
    let _store = w.start_receiver();
    let nobody = 65534;
    // Outside the glob: a file only root owns, and one a user owns.
    let outside = w.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    write_lines(&secret, "secret", 0, 5);
    let theirs = outside.join("theirs");
    write_lines(&theirs, "theirs", 0, 5);
    std::os::unix::fs::chown(&theirs, Some(nobody), Some(nobody)).unwrap();
    // A user who may write into the log directory links both, and a directory only root owns.
    let link = |target: &Path, name: &str| {
        let l = w.logs().join(name);
        std::os::unix::fs::symlink(target, &l).unwrap();
        std::os::unix::fs::lchown(&l, Some(nobody), Some(nobody)).unwrap();
    };
    link(&secret, "stolen.log");
    link(&outside, "rootdir");
    std::fs::copy(&secret, outside.join("also-secret.log")).unwrap();
    link(&theirs, "own.log");
    // A link root made is followed as before.
    std::os::unix::fs::symlink(&secret, w.logs().join("by-root.log")).unwrap();
    let agent = w.start_agent();
    let mut expected = lines("theirs", 0, 5);
    expected.extend(lines("secret", 0, 5));
    let records = w.wait_records(10, LONG);
    assert_each_once(&records, &expected);
    wait_until(LONG, "the refused links are logged", || {
        w.agent_logs().matches("symlink not followed").count() >= 2
    });
    assert_eq!(fds_to(agent.pid(), "also-secret.log"), 0);
    let paths: Vec<String> = w
        .records()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| !p.ends_with("stolen.log") && !p.contains("rootdir")),
        "{paths:?}"
    );
}

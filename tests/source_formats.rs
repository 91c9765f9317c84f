//! Multiline records and container log formats end to end: the real agent and store.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn source(w: &World, include: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"app\"\ninclude = [\"{}/{include}\"]\npoll_interval = \"200ms\"\npartial_line_timeout = \"4s\"\nrotate_wait = \"1s\"\nmax_line_bytes = 65536\n{extra}\n",
        w.logs().display()
    )
}

fn java_frames(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| format!("\tat com.example.Service.method{i}(Service.java:{i})\n"))
        .collect()
}

#[test]
fn a_500_line_java_trace_arriving_slowly_and_across_a_kill9_stays_one_record() {
    let mut w = World::new();
    w.sources = source(
        &w,
        "*.log",
        "[sources.multiline]\nstart_pattern = '^\\d{4}-\\d\\d-\\d\\d '\ntimeout = \"1500ms\"",
    );
    w.agent_extra = "batch_max_bytes = 1048576".into();
    let _store = w.start_receiver();
    let mut agent = w.start_agent();
    let app = w.logs().join("java.log");
    append(&app, "2024-01-01 10:00:00 INFO before\n");
    append(
        &app,
        "2024-01-01 10:00:01 ERROR request failed\njava.lang.IllegalStateException: boom\n",
    );
    // Slowly, in many reads, with gaps shorter than the timeout; one line left unfinished
    // for longer than the timeout: it still continues the record.
    for k in 0..5 {
        append(&app, &java_frames(k * 50, k * 50 + 50));
        std::thread::sleep(Duration::from_millis(500));
    }
    append(&app, "\tat com.example.Unfinished");
    std::thread::sleep(Duration::from_millis(2500));
    append(&app, ".line(X.java:1)\n");
    // A crash in the middle of the record: after the restart it is assembled whole again.
    agent.kill9();
    let _agent = w.start_agent();
    for k in 5..10 {
        append(&app, &java_frames(k * 50, k * 50 + 50));
        std::thread::sleep(Duration::from_millis(300));
    }
    append(&app, "2024-01-01 10:00:02 INFO after\n");
    let records = w.wait_records(3, LONG);
    let bodies: Vec<&str> = records
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies[0], "2024-01-01 10:00:00 INFO before");
    let trace = bodies[1];
    assert_eq!(
        trace.lines().count(),
        2 + 500 + 1,
        "one record holds the whole trace"
    );
    assert!(trace.starts_with("2024-01-01 10:00:01 ERROR request failed\njava.lang"));
    assert!(trace.contains("\tat com.example.Unfinished.line(X.java:1)\n"));
    assert!(trace.ends_with("method499(Service.java:499)"));
    // The last record is held until the timeout, then shipped.
    assert_eq!(bodies[2], "2024-01-01 10:00:02 INFO after");
}

#[test]
fn python_tracebacks_join_by_continue_pattern() {
    let mut w = World::new();
    w.sources = source(
        &w,
        "*.log",
        "[sources.multiline]\ncontinue_pattern = '^(\\s|Traceback |[A-Za-z.]+Error: )'\ntimeout = \"1s\"",
    );
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let app = w.logs().join("py.log");
    let mut tb = String::from("ERROR handler crashed\nTraceback (most recent call last):\n");
    for i in 0..250 {
        tb.push_str(&format!(
            "  File \"/app/m{i}.py\", line {i}, in f{i}\n    f{}()\n",
            i + 1
        ));
    }
    tb.push_str("ValueError: bad value\nINFO next\n");
    append(&app, &tb);
    let records = w.wait_records(2, LONG);
    let body = records[0]["body"].as_str().unwrap();
    assert_eq!(body.lines().count(), 2 + 500 + 1);
    assert!(body.ends_with("ValueError: bad value"));
    assert_eq!(records[1]["body"], "INFO next");
}

#[test]
fn cri_lines_join_partials_per_stream_and_carry_timestamp_and_iostream() {
    let mut w = World::new();
    w.sources = source(&w, "pods/*.log", "format = \"cri\"");
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    std::fs::create_dir_all(w.logs().join("pods")).unwrap();
    let f = w.logs().join("pods/c.log");
    append(
        &f,
        "2024-03-01T12:00:00.123456789Z stdout P out part one, \n\
         2024-03-01T12:00:00.200000000Z stderr P err part one, \n\
         2024-03-01T12:00:00.300000000Z stdout F out part two\n\
         2024-03-01T12:00:00.400000000Z stderr F err part two\n\
         2024-03-01T12:00:01+00:00 stdout F whole line\n",
    );
    let records = w.wait_records(3, LONG);
    let by_body = |b: &str| {
        records
            .iter()
            .find(|r| r["body"] == b)
            .unwrap_or_else(|| panic!("no record {b:?} in {records:?}"))
    };
    let out = by_body("out part one, out part two");
    assert_eq!(out["timestamp"], "2024-03-01T12:00:00.123456789Z");
    assert_eq!(out["attributes"]["log.iostream"], "stdout");
    assert_eq!(out["stream"], "default", "the routing stream is unchanged");
    assert!(out["observed_timestamp"].is_string());
    let err = by_body("err part one, err part two");
    assert_eq!(err["attributes"]["log.iostream"], "stderr");
    assert_eq!(err["timestamp"], "2024-03-01T12:00:00.200000000Z");
    by_body("whole line");
}

#[test]
fn docker_json_file_lines_are_decoded() {
    let mut w = World::new();
    w.sources = source(&w, "containers/*-json.log", "format = \"docker\"");
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    std::fs::create_dir_all(w.logs().join("containers")).unwrap();
    let f = w.logs().join("containers/abc-json.log");
    append(
        &f,
        "{\"log\":\"GET / 200\\n\",\"stream\":\"stdout\",\"time\":\"2024-03-01T12:00:00.5Z\"}\n\
         {\"log\":\"long line first half \",\"stream\":\"stderr\",\"time\":\"2024-03-01T12:00:01Z\"}\n\
         {\"log\":\"second half\\n\",\"stream\":\"stderr\",\"time\":\"2024-03-01T12:00:01.1Z\"}\n",
    );
    let records = w.wait_records(2, LONG);
    assert_eq!(records[0]["body"], "GET / 200");
    assert_eq!(records[0]["timestamp"], "2024-03-01T12:00:00.500000000Z");
    assert_eq!(records[0]["attributes"]["log.iostream"], "stdout");
    assert_eq!(records[1]["body"], "long line first half second half");
    assert_eq!(records[1]["attributes"]["log.iostream"], "stderr");
}

fn cri(stream: &str, flag: &str, content: &str) -> String {
    format!("2024-03-01T12:00:00.000000001Z {stream} {flag} {content}\n")
}

#[test]
fn kill9_while_a_cri_stdout_fragment_is_held_ships_every_stderr_line_once() {
    let mut w = World::new();
    // The held fragment must outlive each crash: no flush on partial_line_timeout.
    w.sources = source(&w, "pods/*.log", "format = \"cri\"").replace(
        "partial_line_timeout = \"4s\"",
        "partial_line_timeout = \"60s\"",
    );
    let _store = w.start_receiver();
    std::fs::create_dir_all(w.logs().join("pods")).unwrap();
    let f = w.logs().join("pods/c.log");
    let mut expected: Vec<String> = Vec::new();
    let mut agent = w.start_agent();
    for round in 0..4 {
        // A stdout line begun, then stderr lines after it: shipped while it is held.
        let mut text = cri("stdout", "P", &format!("out {round} first half, "));
        for k in 0..5 {
            text.push_str(&cri("stderr", "F", &format!("err {round}.{k}")));
        }
        append(&f, &text);
        expected.extend((0..5).map(|k| format!("err {round}.{k}")));
        match round {
            // Crash once the stderr lines are sealed and shipped.
            0 | 2 => {
                w.wait_records(expected.len(), LONG);
                agent.kill9();
            }
            // Crash at once, wherever the agent is.
            1 => agent.kill9(),
            // The stdout line finished, then a crash at once.
            _ => {
                append(&f, &cri("stdout", "F", &format!("out {round} second half")));
                agent.kill9();
            }
        }
        agent = w.start_agent();
        if round != 3 {
            append(&f, &cri("stdout", "F", &format!("out {round} second half")));
        }
        expected.push(format!("out {round} first half, out {round} second half"));
    }
    let records = w.wait_records(expected.len(), LONG);
    // Nothing arrives late either.
    std::thread::sleep(Duration::from_secs(2));
    let records2 = w.records();
    assert_eq!(records2.len(), records.len(), "late duplicates");
    let mut got: Vec<&str> = records2
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    got.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "each record exactly once");
    for r in &records2 {
        let body = r["body"].as_str().unwrap();
        let stream = if body.starts_with("out") {
            "stdout"
        } else {
            "stderr"
        };
        assert_eq!(r["attributes"]["log.iostream"], stream, "{body}");
    }
    drop(agent);
}

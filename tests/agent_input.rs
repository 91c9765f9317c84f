//! Bad and real input through the real agent and store: CRLF, invalid UTF-8, NUL, long
//! lines, empty files, and the real-world corpus.

mod common;

use common::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn body_bytes(r: &serde_json::Value) -> Vec<u8> {
    let body = r["body"].as_str().unwrap();
    if r["body_encoding"] == "escaped" {
        logveil::pipeline::record::unescape_body(body)
    } else {
        body.as_bytes().to_vec()
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return (from <= hay.len()).then_some(from);
    }
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The text of `body` outside its `[REDACTED:<type>]` markers, cut at the markers into
/// pieces: each piece stands in `line` in order, the first at its start, the last at its
/// end, and each marker takes the place of at least one byte of the line.
fn matches_outside_markers(body: &[u8], line: &[u8]) -> Result<(), String> {
    const MARK: &[u8] = b"[REDACTED:";
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut rest = body;
    while let Some(at) = find(rest, MARK, 0) {
        pieces.push(&rest[..at]);
        let after = &rest[at + MARK.len()..];
        let close = find(after, b"]", 0).ok_or("a marker is not closed")?;
        let kind = &after[..close];
        if kind.is_empty()
            || !kind
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            return Err(format!(
                "marker type {:?} is not a type name",
                String::from_utf8_lossy(kind)
            ));
        }
        rest = &after[close + 1..];
    }
    pieces.push(rest);
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !line.starts_with(first) {
        return Err("the text before the first marker is not the line's start".into());
    }
    // The byte after each piece (a marker's place) must be replaced text: at least one byte.
    let mut cursor = first.len() + 1;
    for (n, piece) in pieces[1..pieces.len() - 1].iter().enumerate() {
        let at = find(line, piece, cursor)
            .ok_or_else(|| format!("piece {} between markers is not in the line", n + 1))?;
        cursor = at + piece.len() + 1;
    }
    if !line.ends_with(last) {
        return Err("the text after the last marker is not the line's end".into());
    }
    if line.len() - last.len() < cursor {
        return Err("the pieces overlap: a marker stands for no text".into());
    }
    Ok(())
}

#[test]
fn the_marker_check_accepts_redactions_and_catches_changed_text() {
    let line = b"user jane@example.com from 10.0.0.1 ok";
    let good = b"user [REDACTED:email] from [REDACTED:ip] ok";
    assert_eq!(matches_outside_markers(good, line), Ok(()));
    assert_eq!(matches_outside_markers(b"[REDACTED:record]", line), Ok(()));
    assert!(matches_outside_markers(b"user [REDACTED:email] FROM [REDACTED:ip] ok", line).is_err());
    assert!(
        matches_outside_markers(b"user [REDACTED:email] from [REDACTED:ip] ok!", line).is_err()
    );
    assert!(matches_outside_markers(b"usr [REDACTED:email] from [REDACTED:ip] ok", line).is_err());
    assert!(matches_outside_markers(
        b"user jane@example.com[REDACTED:email] from 10.0.0.1 ok",
        line
    )
    .is_err());
}

#[test]
fn crlf_invalid_utf8_nul_and_empty_files_are_shipped_faithfully() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    std::fs::write(w.logs().join("empty.log"), b"").unwrap();
    let raw: &[u8] =
        b"dos line one\r\ndos line two\r\nbad \xff\xfe bytes \\x41 here\nnul\0inside\n\n";
    std::fs::write(w.logs().join("mixed.log"), raw).unwrap();
    let records = w.wait_records(5, LONG);
    let got: Vec<(u64, Vec<u8>)> = records
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), body_bytes(r)))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, b"dos line one".to_vec()),
            (14, b"dos line two".to_vec()),
            (28, b"bad \xff\xfe bytes \\x41 here".to_vec()),
            (51, b"nul\0inside".to_vec()),
            (62, b"".to_vec()),
        ]
    );
    assert_eq!(records[2]["body_encoding"], "escaped");
    assert!(records
        .iter()
        .all(|r| r["path"] != w.logs().join("empty.log").to_str().unwrap()));
}

#[test]
fn a_line_longer_than_max_line_bytes_is_split_into_counted_parts() {
    let mut w = World::new();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    // max_line_bytes is 2048 in the test config.
    let long: String = (0..1500).map(|i| format!("w{i} ")).collect();
    let file = w.logs().join("long.log");
    append(&file, &format!("short\n{long}\nafter\n"));
    let mut records = Vec::new();
    wait_until(LONG, "the line after the long one arrives", || {
        records = w.records();
        records.last().is_some_and(|r| r["body"] == "after")
    });
    let parts: Vec<&serde_json::Value> =
        records.iter().filter(|r| r.get("part").is_some()).collect();
    assert!(
        parts.len() >= 3,
        "expected several parts, got {}",
        parts.len()
    );
    let mut joined = String::new();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p["part"], i as u64);
        assert_eq!(p["last_part"], i + 1 == parts.len());
        assert!(p["body"].as_str().unwrap().len() <= 2048);
        assert_eq!(p["offset"].as_u64().unwrap(), 6 + joined.len() as u64);
        joined.push_str(p["body"].as_str().unwrap());
    }
    assert_eq!(joined, long, "the parts put together are the line");
}

#[test]
fn real_world_logs_arrive_line_for_line_at_their_offsets() {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/realworld");
    let mut w = World::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&corpus).expect("shared corpus present") {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let dst = w.logs().join(p.file_name().unwrap());
            std::fs::copy(&p, &dst).unwrap();
            files.push(dst);
        }
    }
    assert!(files.len() >= 10);
    // Default max_line_bytes: no real line is split. Most of these files end without a
    // newline: their last line ships once the file is idle.
    w.sources = format!(
        "[[sources]]\nname = \"real\"\ninclude = [\"{}/*.log\"]\npartial_line_timeout = \"500ms\"\n",
        w.logs().display()
    );
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let expected: usize = files
        .iter()
        .map(|f| {
            std::fs::read(f)
                .unwrap()
                .split_inclusive(|&b| b == b'\n')
                .count()
        })
        .sum();
    let records = w.wait_records(expected, LONG);
    let mut redacted = 0;
    for f in &files {
        let content = std::fs::read(f).unwrap();
        let path = f.to_str().unwrap();
        let mine: Vec<&serde_json::Value> = records.iter().filter(|r| r["path"] == path).collect();
        let mut offset = 0u64;
        let mut i = 0;
        for line in content.split_inclusive(|&b| b == b'\n') {
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let r = mine
                .get(i)
                .unwrap_or_else(|| panic!("{path}: line {i} missing"));
            assert_eq!(
                r["offset"].as_u64().unwrap(),
                offset,
                "{path}: line {i} offset"
            );
            let body = body_bytes(r);
            if body.windows(10).any(|w| w == b"[REDACTED:") {
                redacted += 1;
                // Outside the markers, the text is the file's: the pieces between markers
                // stand in the line in order, each marker in place of some text.
                if let Err(e) = matches_outside_markers(&body, text) {
                    panic!(
                        "{path}: line {i}: {e}\n  body: {}\n  line: {}",
                        String::from_utf8_lossy(&body),
                        String::from_utf8_lossy(text)
                    );
                }
            } else {
                assert_eq!(body, text, "{path}: line {i} differs");
            }
            offset += line.len() as u64;
            i += 1;
        }
        assert_eq!(mine.len(), i, "{path}: extra records");
    }
    assert!(
        redacted > 0,
        "the corpus holds IP addresses, so some lines are redacted"
    );
}

#[test]
fn pii_in_file_names_stays_out_of_records_and_the_agents_logs() {
    let mut w = World::new();
    w.agent_env = vec![("LOGVEIL_LOG".into(), "debug".into())];
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let dir = w.logs().join("jane.doe@example.com");
    std::fs::create_dir_all(&dir).unwrap();
    append(&dir.join("export 641-31-9853.log"), "exported\n");
    let records = w.wait_records(1, LONG);
    let path = records[0]["path"].as_str().unwrap();
    assert!(path.contains("[REDACTED:email]"), "{path}");
    assert!(
        !path.contains("jane.doe") && !path.contains("641-31-9853"),
        "{path}"
    );
    let logs = w.agent_logs();
    assert!(logs.contains("DEBUG"), "the agent ran at debug level");
    assert!(
        !logs.contains("jane.doe@example.com"),
        "an e-mail from a file name is in the agent's logs"
    );
    assert!(
        !logs.contains("641-31-9853"),
        "an SSN from a file name is in the agent's logs"
    );
}

#[test]
fn a_record_over_the_redaction_limit_is_shipped_masked_whole_and_logged_without_content() {
    let mut w = World::new();
    w.agent_env = vec![("LOGVEIL_LOG".into(), "debug".into())];
    w.agent_extra = "[redact]\nmax_record_bytes = 64\n".into();
    let _store = w.start_receiver();
    let _agent = w.start_agent();
    let short = "mail jane@x.io";
    let long = format!(
        "card 4111 1111 1111 1111 holder Jane Roe mail jane.roe@example.com {}",
        "x".repeat(40)
    );
    assert!(long.len() > 64);
    append(&w.logs().join("app.log"), &format!("{short}\n{long}\n"));
    let records = w.wait_records(2, LONG);
    assert_eq!(records[0]["body"], "mail [REDACTED:email]");
    assert_eq!(records[1]["body"], "[REDACTED:unscannable]");
    assert_eq!(
        records[1]["redactions"],
        serde_json::json!({"unscannable": 1})
    );
    let offset = short.len() + 1;
    assert_eq!(records[1]["offset"], offset);
    let logs = w.agent_logs();
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("could not be scanned"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning for the one record: {logs}");
    assert!(
        warned[0].contains(&format!("offset={offset}")) && warned[0].contains("source=app"),
        "{}",
        warned[0]
    );
    for value in [
        "4111 1111 1111 1111",
        "Jane Roe",
        "jane.roe@example.com",
        "jane@x.io",
    ] {
        assert!(!logs.contains(value), "{value} is in the agent's logs");
    }
}

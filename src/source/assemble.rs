//! Record assembly for one file: turns framed lines into records, after the framer and
//! before the chunk. Two optional stages, in this order:
//!
//! 1. **Container formats** (`format = "cri"` or `"docker"`). Each line is parsed; its
//!    content, the runtime's timestamp and its stream (stdout/stderr) are kept. A partial
//!    line (CRI flag `P`; Docker: a `log` value without a trailing `\n`) is held and the
//!    next fragments *of the same stream* are appended until the final one (CRI `F`;
//!    Docker: `log` ending in `\n`, which is removed). Fragments of stdout and stderr are
//!    never glued together. A line that does not parse is passed on unchanged, without
//!    event data. A joined line that would grow past `max_line_bytes` is emitted as it is
//!    and the rest continues as a new line. Framer parts of an over-long physical line:
//!    the first carries the prefix, the others are content of the same line.
//! 2. **Multiline** (`multiline` with `start_pattern` or `continue_pattern`), one record in
//!    progress per stream (stdout, stderr, or the file's only stream). With a start
//!    pattern, a matching line begins a new record and any other line is added to the
//!    record in progress; with a continue pattern, a matching line is added and any other
//!    begins a new record. Lines are joined with `\n`. A record is emitted when the next
//!    one begins, when adding a line would pass `max_lines` or `max_bytes` (the line then
//!    begins a new record), or when no line was added to it for `timeout` *and* nothing
//!    could still continue it: the file is read to its end, has no unfinished last line
//!    and no held container fragment of that stream. A framer part of an over-long line
//!    ends the record in progress and is passed on alone.
//!
//! # Offsets and checkpoints
//! A record's `offset` is the offset of its first physical line. Whatever is held starts
//! at [`Assembler::held_from`]; the file's checkpoint is never past it, so after a
//! restart the held lines are read again and the record is assembled whole. A record's
//! `end` (its resume point) is the end of its last line, lowered to `held_from` when bytes
//! before that are still held (for instance a stdout fragment interleaved with stderr
//! lines).
//!
//! Resuming there reads again the lines of the other stream between the two, which were
//! already shipped. So each resume point also carries, per stream (stdout, stderr, lines
//! without one), where that stream's emitted lines end (`shipped_to`, kept when past the
//! resume offset). Within one stream lines are emitted in file order, so after a resume
//! every line of a stream that starts before its mark was shipped, and every other line
//! was not: the assembler drops the former as they are read again (before joining, so a
//! multiline record is never half dropped). A crash while a fragment is held thus ships
//! each record once.
//!
//! On shutdown nothing held is emitted (the checkpoint stays before it); when the file is
//! closed for good (rotated away or deleted and idle) everything held is emitted.

use super::{Event, IoStream, Line};
use crate::config::{Format, MultilineRules};
use std::time::{Duration, Instant, SystemTime};

/// A container line's fragments of one stream, joined so far.
#[derive(Debug)]
struct Partial {
    offset: u64,
    /// End of the last fragment joined.
    end: u64,
    bytes: Vec<u8>,
    read_at: SystemTime,
    timestamp: Option<SystemTime>,
}

/// A multiline record in progress.
#[derive(Debug)]
struct Record {
    offset: u64,
    end: u64,
    bytes: Vec<u8>,
    lines: usize,
    read_at: SystemTime,
    event: Option<Event>,
    last_add: Instant,
}

/// Slot of a stream: 0 stdout, 1 stderr, 2 a line without container data.
fn slot(event: Option<Event>) -> usize {
    match event.map(|e| e.iostream) {
        Some(IoStream::Stdout) => 0,
        Some(IoStream::Stderr) => 1,
        None => 2,
    }
}

/// The physical container line whose framer parts are still arriving.
#[derive(Debug, Clone, Copy)]
struct InLine {
    stream: Option<(IoStream, bool)>,
}

pub(crate) struct Assembler {
    format: Format,
    max_line_bytes: usize,
    multiline: Option<MultilineRules>,
    partials: [Option<Partial>; 2],
    in_line: Option<InLine>,
    records: [Option<Record>; 3],
    /// Per slot: end of the last line emitted, or after a resume the checkpoint's mark.
    /// A line of the slot starting before it was shipped already and is dropped.
    shipped: [u64; 3],
}

impl Assembler {
    pub(crate) fn new(
        format: Format,
        max_line_bytes: usize,
        multiline: Option<MultilineRules>,
    ) -> Self {
        Assembler {
            format,
            max_line_bytes,
            multiline,
            partials: [None, None],
            in_line: None,
            records: [None, None, None],
            shipped: [0; 3],
        }
    }

    /// Continues after a checkpoint at `offset` whose per-stream marks are `shipped_to`.
    pub(crate) fn resume(&mut self, offset: u64, shipped_to: [u64; 3]) {
        self.shipped = shipped_to.map(|m| if m > offset { m } else { 0 });
    }

    /// The per-stream marks a resume point at `offset` must carry (see the module doc).
    pub(crate) fn shipped_past(&self, offset: u64) -> [u64; 3] {
        self.shipped.map(|m| if m > offset { m } else { 0 })
    }

    /// True when lines pass through unchanged (plain or json, no multiline).
    pub(crate) fn is_passthrough(&self) -> bool {
        self.multiline.is_none() && !matches!(self.format, Format::Cri | Format::Docker)
    }

    /// Offset of the first byte held (not yet emitted), if any.
    pub(crate) fn held_from(&self) -> Option<u64> {
        let p = self.partials.iter().flatten().map(|p| p.offset);
        let r = self.records.iter().flatten().map(|r| r.offset);
        p.chain(r).min()
    }

    /// Forgets everything held: the file is read again from its start (truncation).
    pub(crate) fn reset(&mut self) {
        self.partials = [None, None];
        self.in_line = None;
        self.records = [None, None, None];
        self.shipped = [0; 3];
    }

    /// Takes one framed line; appends the records it completes to `out`.
    pub(crate) fn push(&mut self, line: Line, out: &mut Vec<Line>) {
        match self.format {
            Format::Cri | Format::Docker => self.push_container(line, out),
            Format::Plain | Format::Json | Format::Logfmt | Format::Auto => {
                self.push_record(line, out)
            }
        }
    }

    /// Emits multiline records idle for their timeout (see the module doc), and container
    /// fragments held while the file was idle for `partial_timeout`. `at_rest`: the file
    /// is read to its end and has no unfinished last line; `idle`: how long since bytes
    /// last arrived.
    pub(crate) fn flush_idle(
        &mut self,
        at_rest: bool,
        idle: Duration,
        partial_timeout: Duration,
        out: &mut Vec<Line>,
    ) {
        if !at_rest {
            return;
        }
        if idle >= partial_timeout {
            for s in 0..2 {
                if let Some(p) = self.partials[s].take() {
                    let end = p.end;
                    let line = self.partial_line(p, s, end);
                    self.push_record(line, out);
                }
            }
        }
        let Some(rules) = &self.multiline else {
            return;
        };
        let timeout = rules.timeout;
        for s in 0..3 {
            let due = self.records[s]
                .as_ref()
                .is_some_and(|r| r.last_add.elapsed() >= timeout)
                && (s == 2 || self.partials[s].is_none());
            if due {
                self.emit_record(s, out);
            }
        }
    }

    /// Emits everything held: the file is closed for good.
    pub(crate) fn flush_all(&mut self, out: &mut Vec<Line>) {
        for s in 0..2 {
            if let Some(p) = self.partials[s].take() {
                let end = p.end;
                let line = self.partial_line(p, s, end);
                self.push_record(line, out);
            }
        }
        for s in 0..3 {
            self.emit_record(s, out);
        }
    }

    /// The earliest moment a multiline record may become due, if one is held.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeout = self.multiline.as_ref()?.timeout;
        self.records
            .iter()
            .flatten()
            .map(|r| r.last_add + timeout)
            .min()
    }

    fn push_container(&mut self, line: Line, out: &mut Vec<Line>) {
        let first_piece = matches!(line.part, None | Some((0, _)));
        let last_piece = matches!(line.part, None | Some((_, true)));
        let (content, stream, ts, complete) = if first_piece {
            let parsed = match self.format {
                Format::Cri => parse_cri(&line.bytes),
                _ => parse_docker(&line.bytes),
            };
            match parsed {
                Some(p) => p,
                None => {
                    // Not in the format: passed on as it is (each framer part alone).
                    self.in_line = Some(InLine { stream: None });
                    if last_piece {
                        self.in_line = None;
                    }
                    self.push_record(line, out);
                    return;
                }
            }
        } else {
            match self.in_line.and_then(|l| l.stream) {
                Some((stream, complete)) => (line.bytes.clone(), stream, None, complete),
                None => {
                    if last_piece {
                        self.in_line = None;
                    }
                    self.push_record(line, out);
                    return;
                }
            }
        };
        self.in_line = (!last_piece).then_some(InLine {
            stream: Some((stream, complete)),
        });
        let s = slot(Some(Event {
            timestamp: None,
            iostream: stream,
        }));
        if self.partials[s]
            .as_ref()
            .is_some_and(|p| p.bytes.len() + content.len() > self.max_line_bytes)
        {
            let p = self.partials[s].take().expect("checked");
            let held = self.partial_line(p, s, line.offset);
            self.push_record(held, out);
        }
        let p = self.partials[s].get_or_insert_with(|| Partial {
            offset: line.offset,
            end: line.end,
            bytes: Vec::new(),
            read_at: line.read_at,
            timestamp: ts,
        });
        p.bytes.extend_from_slice(&content);
        p.end = line.end;
        if last_piece && complete {
            let p = self.partials[s].take().expect("just inserted");
            let joined = self.partial_line(p, s, line.end);
            self.push_record(joined, out);
        }
    }

    fn partial_line(&self, p: Partial, s: usize, end: u64) -> Line {
        let iostream = if s == 0 {
            IoStream::Stdout
        } else {
            IoStream::Stderr
        };
        Line {
            offset: p.offset,
            end,
            shipped_to: [0; 3],
            bytes: p.bytes,
            read_at: p.read_at,
            part: None,
            event: Some(Event {
                timestamp: p.timestamp,
                iostream,
            }),
        }
    }

    /// `end` lowered to the first held byte, if that is earlier.
    fn cap_end(&self, end: u64) -> u64 {
        self.held_from().map_or(end, |h| h.min(end))
    }

    /// Hands a line out: its resume point lowered to what is held, with the marks of
    /// every stream (its own first: `end` is the end of its last physical line).
    fn emit(&mut self, s: usize, mut line: Line, out: &mut Vec<Line>) {
        self.shipped[s] = line.end;
        line.end = self.cap_end(line.end);
        line.shipped_to = self.shipped_past(line.end);
        out.push(line);
    }

    /// Stage 2: multiline, or straight out. `line.end` is the end of its last physical
    /// line (not lowered yet).
    fn push_record(&mut self, line: Line, out: &mut Vec<Line>) {
        let s = slot(line.event);
        if line.offset < self.shipped[s] {
            // Read again after a resume before a held fragment: shipped already.
            return;
        }
        let Some(rules) = &self.multiline else {
            self.emit(s, line, out);
            return;
        };
        if line.part.is_some() {
            self.emit_record(s, out);
            self.emit(s, line, out);
            return;
        }
        let matches = rules.regex.is_match(&line.bytes);
        let (max_lines, max_bytes) = (rules.max_lines, rules.max_bytes);
        let joins = if rules.is_start { !matches } else { matches };
        let fits = self.records[s].as_ref().is_some_and(|r| {
            r.lines < max_lines && r.bytes.len() + 1 + line.bytes.len() <= max_bytes
        });
        if joins && fits {
            let r = self.records[s].as_mut().expect("fits implies a record");
            r.bytes.push(b'\n');
            r.bytes.extend_from_slice(&line.bytes);
            r.lines += 1;
            r.end = line.end;
            r.last_add = Instant::now();
            return;
        }
        self.emit_record(s, out);
        self.records[s] = Some(Record {
            offset: line.offset,
            end: line.end,
            bytes: line.bytes,
            lines: 1,
            read_at: line.read_at,
            event: line.event,
            last_add: Instant::now(),
        });
    }

    fn emit_record(&mut self, s: usize, out: &mut Vec<Line>) {
        if let Some(r) = self.records[s].take() {
            let line = Line {
                offset: r.offset,
                end: r.end,
                shipped_to: [0; 3],
                bytes: r.bytes,
                read_at: r.read_at,
                part: None,
                event: r.event,
            };
            self.emit(s, line, out);
        }
    }
}

type Parsed = (Vec<u8>, IoStream, Option<SystemTime>, bool);

/// `<time> <stdout|stderr> <P|F> <content>`; content may be empty (then the space after the
/// flag may be missing too).
fn parse_cri(line: &[u8]) -> Option<Parsed> {
    let mut it = line.splitn(4, |&b| b == b' ');
    let ts = it.next()?;
    let stream = match it.next()? {
        b"stdout" => IoStream::Stdout,
        b"stderr" => IoStream::Stderr,
        _ => return None,
    };
    let complete = match it.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let content = it.next().unwrap_or(b"").to_vec();
    let ts = parse_rfc3339(std::str::from_utf8(ts).ok()?)?;
    Some((content, stream, Some(ts), complete))
}

#[derive(serde::Deserialize)]
struct DockerLine {
    log: String,
    stream: String,
    time: Option<String>,
}

fn parse_docker(line: &[u8]) -> Option<Parsed> {
    let d: DockerLine = serde_json::from_slice(line).ok()?;
    let stream = match d.stream.as_str() {
        "stdout" => IoStream::Stdout,
        "stderr" => IoStream::Stderr,
        _ => return None,
    };
    let ts = d.time.as_deref().and_then(parse_rfc3339);
    let mut log = d.log.into_bytes();
    let complete = log.last() == Some(&b'\n');
    if complete {
        log.pop();
    }
    Some((log, stream, ts, complete))
}

/// RFC 3339 with any number of fractional digits and `Z` or a `±HH:MM` offset.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[10] != b'T' {
        return None;
    }
    let (body, offset_secs): (&str, i64) = if let Some(body) = s.strip_suffix('Z') {
        (body, 0)
    } else {
        let sign_at = s.len().checked_sub(6)?;
        let sign = match b[sign_at] {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        if b[sign_at + 3] != b':' {
            return None;
        }
        let h: i64 = s.get(sign_at + 1..sign_at + 3)?.parse().ok()?;
        let m: i64 = s.get(sign_at + 4..)?.parse().ok()?;
        (&s[..sign_at], sign * (h * 3600 + m * 60))
    };
    let (secs_part, frac) = match body.split_once('.') {
        Some((a, f)) => (a, f),
        None => (body, ""),
    };
    if !frac.bytes().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let base = humantime::parse_rfc3339(&format!("{secs_part}Z")).ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let t = base + Duration::from_nanos(u64::from(nanos));
    if offset_secs >= 0 {
        t.checked_sub(Duration::from_secs(offset_secs as u64))
    } else {
        t.checked_add(Duration::from_secs((-offset_secs) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MultilineConfig;

    fn line(offset: u64, text: &str) -> Line {
        Line {
            offset,
            end: offset + text.len() as u64 + 1,
            shipped_to: [0; 3],
            bytes: text.as_bytes().to_vec(),
            read_at: SystemTime::now(),
            part: None,
            event: None,
        }
    }

    fn feed(a: &mut Assembler, texts: &[&str]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut off = 0;
        for t in texts {
            a.push(line(off, t), &mut out);
            off += t.len() as u64 + 1;
        }
        out
    }

    fn rules(start: Option<&str>, cont: Option<&str>) -> MultilineRules {
        MultilineConfig {
            start_pattern: start.map(String::from),
            continue_pattern: cont.map(String::from),
            timeout: Duration::from_secs(60),
            max_lines: 1000,
            max_bytes: 1 << 20,
        }
        .compile()
        .unwrap()
    }

    #[test]
    fn cri_partials_are_joined_per_stream_never_across() {
        let mut a = Assembler::new(Format::Cri, 1 << 16, None);
        let out = feed(
            &mut a,
            &[
                "2024-01-01T00:00:00.000000001Z stdout P out-a ",
                "2024-01-01T00:00:01Z stderr P err-a ",
                "2024-01-01T00:00:02Z stdout F out-b",
                "2024-01-01T00:00:03+01:00 stderr F err-b",
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, b"out-a out-b");
        assert_eq!(out[0].offset, 0);
        let ev = out[0].event.unwrap();
        assert_eq!(ev.iostream, IoStream::Stdout);
        assert_eq!(
            ev.timestamp.unwrap(),
            humantime::parse_rfc3339("2024-01-01T00:00:00.000000001Z").unwrap()
        );
        // The stderr fragment before it is still held: the resume point stays before it.
        assert_eq!(out[0].end, out[1].offset);
        assert_eq!(out[1].bytes, b"err-a err-b");
        assert_eq!(out[1].event.unwrap().iostream, IoStream::Stderr);
        assert_eq!(
            out[1].event.unwrap().timestamp.unwrap(),
            humantime::parse_rfc3339("2024-01-01T00:00:01Z").unwrap()
        );
        assert_eq!(a.held_from(), None);
    }

    #[test]
    fn a_resume_before_a_held_fragment_drops_the_other_streams_lines_shipped_after_it() {
        let texts = [
            "2024-01-01T00:00:00Z stdout P out-a ",
            "2024-01-01T00:00:01Z stderr F err-1",
            "2024-01-01T00:00:02Z stderr P err-2a ",
            "2024-01-01T00:00:03Z stderr F err-2b",
            "2024-01-01T00:00:04Z stderr F err-3",
            "2024-01-01T00:00:05Z stdout F out-b",
            "2024-01-01T00:00:06Z stderr F err-4",
        ];
        let mut offsets = Vec::new();
        let mut off = 0;
        for t in texts {
            offsets.push(off);
            off += t.len() as u64 + 1;
        }
        // Crash after each emitted line in turn: resume at its resume point with its marks.
        let mut a = Assembler::new(Format::Cri, 1 << 16, None);
        let before = feed(&mut a, &texts[..5]);
        assert_eq!(before.len(), 3, "err-1, err-2a err-2b, err-3");
        for (k, last) in before.iter().enumerate() {
            assert_eq!(
                last.end, 0,
                "the held stdout fragment keeps the resume point"
            );
            assert!(last.shipped_to[1] > 0);
            let mut b = Assembler::new(Format::Cri, 1 << 16, None);
            b.resume(last.end, last.shipped_to);
            let first = offsets.iter().position(|&o| o == last.end).unwrap();
            let mut again = Vec::new();
            for (t, &o) in texts[first..].iter().zip(&offsets[first..]) {
                b.push(line(o, t), &mut again);
            }
            let mut all: Vec<Vec<u8>> = before[..=k].iter().map(|l| l.bytes.clone()).collect();
            all.extend(again.iter().map(|l| l.bytes.clone()));
            let want: Vec<&[u8]> = vec![
                b"err-1",
                b"err-2a err-2b",
                b"err-3",
                b"out-a out-b",
                b"err-4",
            ];
            assert_eq!(all, want, "crash after line {k}");
        }
    }

    #[test]
    fn docker_json_lines_are_decoded_and_partials_joined() {
        let mut a = Assembler::new(Format::Docker, 1 << 16, None);
        let out = feed(
            &mut a,
            &[
                r#"{"log":"hello ","stream":"stdout","time":"2024-05-01T10:00:00.5Z"}"#,
                r#"{"log":"world\n","stream":"stdout","time":"2024-05-01T10:00:01Z"}"#,
                r#"{"log":"oops\n","stream":"stderr","time":"2024-05-01T10:00:02Z"}"#,
                "not json",
            ],
        );
        let texts: Vec<_> = out.iter().map(|l| l.bytes.clone()).collect();
        assert_eq!(
            texts,
            vec![
                b"hello world".to_vec(),
                b"oops".to_vec(),
                b"not json".to_vec()
            ]
        );
        assert_eq!(out[1].event.unwrap().iostream, IoStream::Stderr);
        assert!(out[2].event.is_none());
    }

    #[test]
    fn start_pattern_keeps_a_trace_in_one_record() {
        let mut a = Assembler::new(Format::Plain, 1 << 16, Some(rules(Some(r"^\d{4}-"), None)));
        let mut texts = vec!["2024-01-01 ERROR boom"];
        let frames: Vec<String> = (0..500).map(|i| format!("\tat f{i}(X.java:{i})")).collect();
        texts.extend(frames.iter().map(|s| s.as_str()));
        texts.push("2024-01-01 INFO next");
        let out = feed(&mut a, &texts);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes.split(|&b| b == b'\n').count(), 501);
        assert_eq!(a.held_from(), Some(out[0].end));
    }

    #[test]
    fn continue_pattern_and_timeout_only_when_at_rest() {
        let mut r = rules(None, r"^\s".into());
        r.timeout = Duration::from_millis(0);
        let mut a = Assembler::new(Format::Plain, 1 << 16, Some(r));
        let out = feed(&mut a, &["Traceback:", "  File x", "  File y"]);
        assert!(out.is_empty());
        let mut out = Vec::new();
        a.flush_idle(
            false,
            Duration::from_secs(9),
            Duration::from_secs(1),
            &mut out,
        );
        assert!(out.is_empty(), "not at rest: the next line may continue it");
        a.flush_idle(
            true,
            Duration::from_secs(9),
            Duration::from_secs(1),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, b"Traceback:\n  File x\n  File y");
    }

    #[test]
    fn max_lines_starts_a_new_record() {
        let mut r = rules(None, r"^\s".into());
        r.max_lines = 2;
        let mut a = Assembler::new(Format::Plain, 1 << 16, Some(r));
        let out = feed(&mut a, &["a", " b", " c", "d"]);
        let texts: Vec<_> = out.iter().map(|l| l.bytes.clone()).collect();
        assert_eq!(texts, vec![b"a\n b".to_vec(), b" c".to_vec()]);
    }

    #[test]
    fn rfc3339_offsets_and_fractions() {
        let z = parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2024-01-01T02:00:00+02:00").unwrap(), z);
        assert_eq!(parse_rfc3339("2023-12-31T23:30:00-00:30").unwrap(), z);
        assert_eq!(
            parse_rfc3339("2024-01-01T00:00:00.5Z").unwrap(),
            z + Duration::from_millis(500)
        );
        assert!(parse_rfc3339("yesterday").is_none());
    }
}

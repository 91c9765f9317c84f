//! Line framing for one file: turns the bytes read from it, in order, into [`Line`]s.
//!
//! Owns the rules of the module doc's "Framing", "Long lines" and "Final line without a
//! newline" sections; knows nothing of files, only of offsets. The framer holds at most
//! `max_line_bytes + 1` bytes of an unfinished line, so memory stays bounded whatever
//! the input.

use super::Line;
use std::time::SystemTime;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How far back from the cut limit a long line is searched for a space or tab.
const WORD_CUT_WINDOW: usize = 1024;

#[derive(Debug)]
pub(crate) struct Framer {
    max_line_bytes: usize,
    /// Bytes of the current line not yet emitted. May end in a `\r` that turns out to be
    /// part of a `\r\n` line end.
    pending: Vec<u8>,
    /// File offset of `pending[0]`; also the offset just past the last byte emitted or
    /// dropped as a line end, i.e. where a checkpoint may point.
    pending_start: u64,
    /// Parts of the current line already emitted (0 when it has not been split).
    parts_emitted: u32,
    /// True until the first bytes at offset 0 have been checked for a UTF-8 BOM.
    check_bom: bool,
}

/// What one call of [`Framer::feed`] or [`Framer::flush`] produced, besides lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameStats {
    /// Lines that were split into parts and whose first part was emitted by this call.
    pub lines_split: u64,
}

impl Framer {
    /// A framer whose next byte is at `offset` in the file.
    pub(crate) fn new(max_line_bytes: usize, offset: u64) -> Self {
        Framer {
            max_line_bytes: max_line_bytes.max(1),
            pending: Vec::new(),
            pending_start: offset,
            parts_emitted: 0,
            check_bom: offset == 0,
        }
    }

    /// Offset just past the last line end (or emitted part) consumed: where reading
    /// would resume if only the lines emitted so far were kept.
    pub(crate) fn committed_offset(&self) -> u64 {
        self.pending_start
    }

    /// Offset of the next byte to feed.
    pub(crate) fn read_offset(&self) -> u64 {
        self.pending_start + self.pending.len() as u64
    }

    /// True when bytes of an unfinished line are held back.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feeds the next bytes of the file; complete lines (and parts of over-long ones) are
    /// appended to `out`.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        read_at: SystemTime,
        out: &mut Vec<Line>,
    ) -> FrameStats {
        let mut stats = FrameStats::default();
        if self.check_bom {
            // The BOM may arrive over several reads: decide only once 3 bytes are known.
            let want = UTF8_BOM.len() - self.pending.len();
            let take = want.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < UTF8_BOM.len() && UTF8_BOM.starts_with(&self.pending) {
                return stats;
            }
            self.check_bom = false;
            if self.pending == UTF8_BOM {
                self.pending.clear();
                self.pending_start += UTF8_BOM.len() as u64;
            }
            // Bytes taken that were not a BOM are ordinary line bytes: frame them first.
            let held = std::mem::take(&mut self.pending);
            self.feed_plain(&held, read_at, out, &mut stats);
        }
        self.feed_plain(data, read_at, out, &mut stats);
        stats
    }

    fn feed_plain(
        &mut self,
        mut data: &[u8],
        read_at: SystemTime,
        out: &mut Vec<Line>,
        stats: &mut FrameStats,
    ) {
        while !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(nl) => {
                    self.pending.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    self.cut_parts(read_at, out, stats);
                    self.end_line(read_at, out);
                }
                None => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    self.cut_parts(read_at, out, stats);
                }
            }
        }
    }

    /// Emits the unfinished line as a whole line (or as the last part of a split one).
    /// Called when the file has been idle for `partial_line_timeout`, or is closed for good.
    pub(crate) fn flush(&mut self, read_at: SystemTime, out: &mut Vec<Line>) -> FrameStats {
        let mut stats = FrameStats::default();
        self.check_bom = false;
        if self.pending.is_empty() {
            return stats;
        }
        // Without a following `\n`, a trailing `\r` is content; it can make the line one
        // byte too long, and max_line_bytes is a hard bound.
        while self.pending.len() > self.max_line_bytes {
            self.cut_one(read_at, out, &mut stats);
        }
        let len = self.pending.len() as u64;
        let bytes = std::mem::take(&mut self.pending);
        out.push(Line {
            offset: self.pending_start,
            end: self.pending_start + len,
            shipped_to: [0; 3],
            bytes,
            read_at,
            part: self.last_part(),
            event: None,
        });
        self.pending_start += len;
        self.parts_emitted = 0;
        stats
    }

    /// `pending` holds a complete line (its `\n` already consumed).
    fn end_line(&mut self, read_at: SystemTime, out: &mut Vec<Line>) {
        let consumed = self.pending.len() as u64 + 1;
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let bytes = std::mem::take(&mut self.pending);
        out.push(Line {
            offset: self.pending_start,
            end: self.pending_start + consumed,
            shipped_to: [0; 3],
            bytes,
            read_at,
            part: self.last_part(),
            event: None,
        });
        self.pending_start += consumed;
        self.parts_emitted = 0;
    }

    fn last_part(&self) -> Option<(u32, bool)> {
        (self.parts_emitted > 0).then_some((self.parts_emitted, true))
    }

    /// Cuts parts off the front of `pending` while it holds more than `max_line_bytes` bytes
    /// that are certainly line content (a trailing `\r` may still be half of a line end).
    fn cut_parts(&mut self, read_at: SystemTime, out: &mut Vec<Line>, stats: &mut FrameStats) {
        loop {
            let content = self.pending.len() - usize::from(self.pending.last() == Some(&b'\r'));
            if content <= self.max_line_bytes {
                return;
            }
            self.cut_one(read_at, out, stats);
        }
    }

    fn cut_one(&mut self, read_at: SystemTime, out: &mut Vec<Line>, stats: &mut FrameStats) {
        let cut = cut_point(&self.pending, self.max_line_bytes);
        let rest = self.pending.split_off(cut);
        let part = std::mem::replace(&mut self.pending, rest);
        if self.parts_emitted == 0 {
            stats.lines_split += 1;
        }
        out.push(Line {
            offset: self.pending_start,
            end: self.pending_start + cut as u64,
            shipped_to: [0; 3],
            bytes: part,
            read_at,
            part: Some((self.parts_emitted, false)),
            event: None,
        });
        self.pending_start += cut as u64;
        self.parts_emitted += 1;
    }
}

/// Where to cut `bytes` (longer than `max`) so the first part has at most `max` bytes.
/// Each part is redacted on its own, so a cut must not fall inside a value (an address, a
/// card number): within the final [`WORD_CUT_WINDOW`] bytes before the limit, cut after the
/// last space or tab that is not between two digits; else after the last other delimiter
/// (a byte that cannot be part of an e-mail, number, IP address or token); only when the
/// window holds neither, at the last UTF-8 character boundary (else at the limit).
/// Always in `1..=max`.
pub(crate) fn cut_point(bytes: &[u8], max: usize) -> usize {
    debug_assert!(bytes.len() > max && max > 0);
    let floor = max.saturating_sub(WORD_CUT_WINDOW);
    let between_digits =
        |i: usize| i > 0 && bytes[i - 1].is_ascii_digit() && bytes[i + 1].is_ascii_digit();
    // A cut after index i yields a first part of i + 1 bytes, so i ranges over floor..max.
    for i in (floor..max).rev() {
        if (bytes[i] == b' ' || bytes[i] == b'\t') && !between_digits(i) {
            return i + 1;
        }
    }
    for i in (floor..max).rev() {
        if !is_value_byte(bytes[i]) && !between_digits(i) {
            return i + 1;
        }
    }
    // bytes[max] starts the second part; move back over at most 3 continuation bytes.
    for cut in (max.saturating_sub(3).max(1)..=max).rev() {
        if bytes[cut] & 0xC0 != 0x80 {
            return cut;
        }
    }
    max
}

/// Bytes that can be part of a value a detector looks for (e-mail, card, phone, IP
/// address, key, token); non-ASCII counts too, for names and addresses.
fn is_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'@' | b'.' | b'+' | b'-' | b'_' | b'%' | b':' | b'/' | b'='
        )
        || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_fall_inside_a_value_when_a_delimiter_is_near() {
        // No space near the limit: the cut goes after the `;`, not inside the card number.
        let mut line = "a".repeat(240).into_bytes();
        line.extend_from_slice(b";4111111111111111,jane.doe@example.com");
        line.extend_from_slice(&[b'b'; 100]);
        assert_eq!(cut_point(&line, 256), 241);
        // A spaced card number is not cut between its groups.
        let mut line = "c".repeat(240).into_bytes();
        line.extend_from_slice(b" 4111 1111 1111 1111");
        line.extend_from_slice(&[b'd'; 100]);
        assert_eq!(cut_point(&line, 256), 241);
    }

    fn frame(max: usize, start: u64, inputs: &[&[u8]]) -> (Vec<Line>, Framer) {
        let mut f = Framer::new(max, start);
        let mut out = Vec::new();
        for i in inputs {
            f.feed(i, SystemTime::now(), &mut out);
        }
        (out, f)
    }

    type Summary = (u64, String, Option<(u32, bool)>);

    fn summary(lines: &[Line]) -> Vec<Summary> {
        lines
            .iter()
            .map(|l| {
                (
                    l.offset,
                    String::from_utf8_lossy(&l.bytes).into_owned(),
                    l.part,
                )
            })
            .collect()
    }

    #[test]
    fn lines_carry_the_offset_of_their_first_byte() {
        let (lines, f) = frame(256, 0, &[b"ab\ncd", b"e\n\nxy"]);
        assert_eq!(
            summary(&lines),
            vec![
                (0, "ab".into(), None),
                (3, "cde".into(), None),
                (7, "".into(), None)
            ]
        );
        assert_eq!(f.committed_offset(), 8);
        assert_eq!(f.read_offset(), 10);
        assert!(f.has_pending());
    }

    #[test]
    fn crlf_line_end_is_dropped_but_lone_cr_is_kept() {
        let (lines, _) = frame(256, 0, &[b"a\r", b"\nb\rc\n"]);
        assert_eq!(
            summary(&lines),
            vec![(0, "a".into(), None), (3, "b\rc".into(), None)]
        );
    }

    #[test]
    fn bom_at_offset_zero_is_skipped_even_across_reads() {
        let (lines, _) = frame(256, 0, &[b"\xEF", b"\xBB", b"\xBFhi\n"]);
        assert_eq!(summary(&lines), vec![(3, "hi".into(), None)]);
        let (lines, _) = frame(256, 0, &[b"\xEF\xBBx\n"]);
        assert_eq!(lines[0].offset, 0);
        assert_eq!(lines[0].bytes, b"\xEF\xBBx");
        // Resuming past the start: the same bytes are content.
        let (lines, _) = frame(256, 10, &[b"\xEF\xBB\xBFhi\n"]);
        assert_eq!(lines[0].offset, 10);
        assert_eq!(lines[0].bytes, b"\xEF\xBB\xBFhi");
    }

    #[test]
    fn long_line_is_cut_into_parts_at_most_max_bytes() {
        let line = vec![b'x'; 700];
        let mut input = line.clone();
        input.push(b'\n');
        let mut f = Framer::new(256, 0);
        let mut out = Vec::new();
        let stats = f.feed(&input, SystemTime::now(), &mut out);
        assert_eq!(stats.lines_split, 1);
        let parts: Vec<_> = out
            .iter()
            .map(|l| (l.offset, l.bytes.len(), l.part))
            .collect();
        assert_eq!(
            parts,
            vec![
                (0, 256, Some((0, false))),
                (256, 256, Some((1, false))),
                (512, 188, Some((2, true)))
            ]
        );
        assert_eq!(f.committed_offset(), 701);
    }

    #[test]
    fn line_of_exactly_max_bytes_with_crlf_is_not_split() {
        let mut input = vec![b'y'; 256];
        input.extend_from_slice(b"\r\n");
        let (lines, _) = frame(256, 0, &[&input[..200], &input[200..257], &input[257..]]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].bytes.len(), 256);
        assert_eq!(lines[0].part, None);
    }

    #[test]
    fn cut_prefers_a_space_not_between_digits() {
        let mut bytes = b"aaaa bbbb 12 34cc".to_vec();
        bytes.extend_from_slice(b"dddddddd");
        // max 15: the space between "2" and "3" (index 12) is skipped, index 9 is used.
        assert_eq!(cut_point(&bytes, 15), 10);
    }

    #[test]
    fn cut_falls_back_to_a_char_boundary() {
        let s = "ééééé".as_bytes(); // 10 bytes, 2 per char
        assert_eq!(cut_point(s, 5), 4);
        assert_eq!(cut_point(s, 4), 4);
        let invalid = [0x80u8; 10];
        assert_eq!(cut_point(&invalid, 5), 5);
    }

    #[test]
    fn flush_emits_the_unfinished_line_whole_once() {
        let (mut out, mut f) = frame(256, 0, &[b"a\nbc"]);
        assert_eq!(out.len(), 1);
        f.flush(SystemTime::now(), &mut out);
        assert_eq!(summary(&out)[1], (2, "bc".into(), None));
        assert_eq!(f.committed_offset(), 4);
        f.flush(SystemTime::now(), &mut out);
        assert_eq!(out.len(), 2);
        f.feed(b"d\n", SystemTime::now(), &mut out);
        assert_eq!(summary(&out)[2], (4, "d".into(), None));
    }

    #[test]
    fn memory_stays_bounded_on_a_line_without_end() {
        let mut f = Framer::new(300, 0);
        let mut out = Vec::new();
        for _ in 0..100 {
            f.feed(&[b'z'; 1000], SystemTime::now(), &mut out);
            assert!(f.read_offset() - f.committed_offset() <= 301);
        }
        assert!(out.iter().all(|l| l.bytes.len() <= 300));
        assert_eq!(
            out.iter().map(|l| l.bytes.len() as u64).sum::<u64>(),
            f.committed_offset()
        );
    }
}

//! Property tests of the parsers that read what watchdog does not control:
//! ring-buffer records, mountinfo lines with user-chosen mount points,
//! recordings, command lines to redact. Each property runs on thousands of
//! generated inputs (proptest; failures are shrunk to a minimal case).
use std::path::Path;

use proptest::prelude::*;
use watchdog::bundle::redact;
use watchdog::context::mounts;
use watchdog::model::Time;
use watchdog::recording::{self, Header, Line};
use watchdog_common::decode::{Event, decode};

/// The kernel's mountinfo escaping (`show_mountinfo` -> `mangle`): space,
/// tab, newline and backslash as octal.
fn kernel_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes from the ring buffer: an event or an error, never a panic.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    /// A record of a known kind with a random body decodes to the same
    /// bytes (what the probes write is what the agent reads).
    #[test]
    fn fork_failure_records_round_trip(body in proptest::collection::vec(any::<u8>(), 256)) {
        use watchdog_common::{EventHeader, EventKind, ForkFailureEvent};
        let size = std::mem::size_of::<ForkFailureEvent>();
        let mut buf = body.into_iter().cycle().take(size).collect::<Vec<u8>>();
        let header = EventHeader::new(EventKind::ForkFailure, size, 1);
        buf[..std::mem::size_of::<EventHeader>()]
            .copy_from_slice(watchdog_common::decode::as_bytes(&header));
        match decode(&buf) {
            Ok(Event::ForkFailure(ev)) => {
                prop_assert_eq!(watchdog_common::decode::as_bytes(&ev), &buf[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A mount point of any characters comes back exact from its mountinfo
    /// line (spaces, tabs, newlines, backslashes, non-ASCII).
    #[test]
    fn mount_points_survive_mountinfo_escaping(
        mp in "/[ -~\t\n\u{e9}\u{4e2d}\u{1f600}]{0,40}",
        src in "[ -~]{1,20}",
    ) {
        let line = format!(
            "36 35 0:52 / {} rw,relatime shared:1 - fuse.test {} rw",
            kernel_escape(&mp),
            kernel_escape(&src)
        );
        let got = mounts::parse(&line);
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(&got[0].mount_point, &mp);
        prop_assert_eq!(&got[0].source, &src);
        prop_assert_eq!(&got[0].fs_type, "fuse.test");
    }

    /// Arbitrary text is never a panic for the mountinfo parser.
    #[test]
    fn mountinfo_parser_takes_any_text(text in "\\PC{0,400}") {
        let _ = mounts::parse(&text);
        let _ = mounts::unescape(&text);
    }

    /// A recording of ticks reads back to the same inputs.
    #[test]
    fn recordings_round_trip(ticks in proptest::collection::vec(0u64..4_102_444_800_000, 0..50)) {
        let mut text = serde_json::to_string(&Line::Recording(Header::new(
            &Default::default(),
            Some("node".into()),
            "6.1".into(),
        )))
        .unwrap();
        text.push('\n');
        for t in &ticks {
            text.push_str(&serde_json::to_string(&Line::Tick(Time::from_millis(*t))).unwrap());
            text.push('\n');
        }
        let rec = recording::read_from(std::io::Cursor::new(text), Path::new("prop")).unwrap();
        let got: Vec<Line> = rec.inputs;
        let want: Vec<Line> = ticks.iter().map(|t| Line::Tick(Time::from_millis(*t))).collect();
        prop_assert_eq!(got, want);
    }

    /// Garbage after a header is an error naming the line, never a panic.
    #[test]
    fn recordings_reject_garbage_with_a_line_number(garbage in "[^\n]{1,200}") {
        let header = serde_json::to_string(&Line::Recording(Header::new(
            &Default::default(),
            None,
            String::new(),
        )))
        .unwrap();
        let text = format!("{header}\n{garbage}\n{{\"tick\":\"2026-01-01T00:00:00Z\"}}\n");
        if let Err(e) = recording::read_from(std::io::Cursor::new(text), Path::new("prop")) {
            prop_assert!(e.to_string().contains("prop:2"), "{}", e);
        }
    }

    /// Whatever the arguments, a secret flag's value never survives
    /// redaction, and argv[0] always does.
    #[test]
    fn redaction_masks_every_secret_flag_value(
        argv0 in "[a-z/]{1,20}",
        args in proptest::collection::vec("[ -~]{0,20}", 0..10),
        secret in "[A-Za-z0-9]{12,20}",
        flag in prop::sample::select(vec!["--token", "--password", "--client-secret", "--api-key", "--credentials"]),
        pos in 0usize..10,
    ) {
        let mut argv: Vec<String> = std::iter::once(argv0.clone()).chain(args).collect();
        let at = 1 + pos.min(argv.len() - 1);
        argv.insert(at, format!("{flag}={secret}"));
        let (out, n) = redact::argv(&argv);
        prop_assert_eq!(&out[0], &argv0);
        prop_assert!(n >= 1);
        prop_assert!(!out[at].contains(&secret), "{:?}", out);
    }
}

//! Redaction of what a bundle copies from a node: command lines keep
//! argv[0] and every flag name, and mask values that look like secrets.
//! Environments are never read at all.

/// Words that make a flag's value a secret (case-insensitive, anywhere in
/// the flag's name or in a `NAME=value` argument's name).
const SECRET_WORDS: [&str; 9] = [
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "credential",
    "auth",
    "cookie",
    "session",
];

pub const MASK: &str = "<redacted>";

fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// A value that is a secret whatever its flag: a bearer string, a PEM
/// block, a JWT-looking token, a URL with a password.
fn secret_value(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    l.starts_with("bearer ")
        || l.contains("-----begin")
        || (v.starts_with("eyJ") && v.matches('.').count() == 2)
        || v.split_once("://").is_some_and(|(_, rest)| {
            rest.split('/')
                .next()
                .is_some_and(|auth| auth.contains(':') && auth.contains('@'))
        })
}

/// `argv` with secrets masked, and how many values were masked.
pub fn argv(args: &[String]) -> (Vec<String>, usize) {
    let mut out = Vec::with_capacity(args.len());
    let mut n = 0;
    let mut mask_next = false;
    for (i, a) in args.iter().enumerate() {
        if i == 0 {
            out.push(a.clone());
            continue;
        }
        if mask_next {
            mask_next = false;
            if !a.starts_with('-') {
                out.push(MASK.into());
                n += 1;
                continue;
            }
        }
        if let Some((name, value)) = a.split_once('=') {
            if secret_name(name) || secret_value(value) {
                out.push(format!("{name}={MASK}"));
                n += 1;
                continue;
            }
        } else if a.starts_with('-') && secret_name(a) {
            // `--token VALUE`: the next argument is the value.
            mask_next = true;
        }
        if secret_value(a) {
            out.push(MASK.into());
            n += 1;
        } else {
            out.push(a.clone());
        }
    }
    (out, n)
}

/// A `/proc/PID/cmdline` (NUL-separated) as one line, redacted.
pub fn cmdline(raw: &[u8]) -> (String, usize) {
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let (args, n) = argv(&args);
    (args.join(" "), n)
}

/// The kernel command line, redacted the same way (`name=value` words).
pub fn kernel_cmdline(text: &str) -> (String, usize) {
    let words: Vec<String> = std::iter::once(String::new())
        .chain(text.split_whitespace().map(String::from))
        .collect();
    let (words, n) = argv(&words);
    (words[1..].join(" "), n)
}

/// A log line with its secret words masked (`--token=x`, `password=x`,
/// `key="a b"`, bearer strings, JWTs, URLs with a password); the words
/// between are kept as they are.
pub fn log_line(text: &str) -> (String, usize) {
    let pieces: Vec<&str> = text.split(' ').collect();
    let mut out: Vec<String> = Vec::with_capacity(pieces.len());
    let mut n = 0;
    let mut mask_next = false;
    let mut i = 0;
    let quote = |c: char| c == '"' || c == '\'';
    while i < pieces.len() {
        let piece = pieces[i];
        i += 1;
        let word = piece.trim_matches(|c: char| quote(c) || c == ',');
        if std::mem::take(&mut mask_next) && !word.is_empty() && !word.starts_with('-') {
            out.push(MASK.into());
            n += 1;
            continue;
        }
        if let Some(eq) = piece.find('=') {
            let (name, value) = (&piece[..eq], &piece[eq + 1..]);
            let open = value.chars().next().filter(|c| quote(*c));
            // A quoted value goes on to the word that closes the quote.
            let mut whole = value.to_owned();
            let mut end = i;
            if let Some(q) = open
                && !(value.len() > 1 && value.ends_with(q))
            {
                while end < pieces.len() {
                    whole.push(' ');
                    whole.push_str(pieces[end]);
                    end += 1;
                    if pieces[end - 1].ends_with(q) {
                        break;
                    }
                }
            }
            let bare = whole.trim_matches(|c: char| quote(c) || c == ',');
            if !bare.is_empty() && (secret_name(name) || secret_value(bare)) {
                out.push(match open {
                    Some(q) => format!("{name}={q}{MASK}{q}"),
                    None => format!("{name}={MASK}"),
                });
                n += 1;
                i = end;
                continue;
            }
        }
        if secret_value(word) {
            out.push(MASK.into());
            n += 1;
            continue;
        }
        // `--token VALUE`, `Bearer VALUE`: the next word is the value.
        mask_next = (word.starts_with('-') && !word.contains('=') && secret_name(word))
            || word.eq_ignore_ascii_case("bearer");
        out.push(piece.to_owned());
    }
    (out.join(" "), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_keep_their_words_and_lose_their_secrets() {
        let (l, n) = log_line(
            "I0729 11:20:59 kubelet.go:1] flags: --token=abc --bootstrap-kubeconfig /etc/k \
             password=hunter2 Authorization: Bearer eyJa.b.c done",
        );
        assert_eq!(
            l,
            "I0729 11:20:59 kubelet.go:1] flags: --token=<redacted> --bootstrap-kubeconfig /etc/k \
             password=<redacted> Authorization: Bearer <redacted> done"
        );
        assert_eq!(n, 3);
        let (l, n) = log_line("PLEG is not healthy: pleg was last seen active 3m57s ago");
        assert_eq!(
            (l.as_str(), n),
            (
                "PLEG is not healthy: pleg was last seen active 3m57s ago",
                0
            )
        );
        let (l, n) = log_line("msg=\"pull https://user:pw@registry/x failed\" key=\"v\"");
        assert_eq!(n, 2, "{l}");
        assert!(!l.contains("pw@") && !l.contains("\"v\""), "{l}");
        // The name stays whole when the value is part of it; a quoted value
        // with spaces is masked to its closing quote.
        let (l, n) = log_line("password=pass level=info");
        assert_eq!((l.as_str(), n), ("password=<redacted> level=info", 1));
        let (l, n) = log_line("x password=\"a b c\" level=info");
        assert_eq!((l.as_str(), n), ("x password=\"<redacted>\" level=info", 1));
        let (l, n) = log_line("token='unterminated and more");
        assert_eq!((l.as_str(), n), ("token='<redacted>'", 1));
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn secrets_in_flags_and_values_are_masked() {
        let (out, n) = argv(&v(&[
            "/usr/bin/kubelet",
            "--token=hunter2",
            "--password",
            "s3cret",
            "--node-ip=10.0.0.1",
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap.conf",
            "Bearer abc.def",
            "--url=https://user:pw@example.com/x",
            "API_KEY=xyz",
            "-v",
            "2",
        ]));
        assert_eq!(
            out,
            v(&[
                "/usr/bin/kubelet",
                "--token=<redacted>",
                "--password",
                "<redacted>",
                "--node-ip=10.0.0.1",
                "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap.conf",
                "<redacted>",
                "--url=<redacted>",
                "API_KEY=<redacted>",
                "-v",
                "2",
            ])
        );
        assert_eq!(n, 5);
    }

    #[test]
    fn argv0_and_plain_arguments_stay() {
        let (line, n) = cmdline(b"python3\0-c\0import os\0/mnt/hang\0");
        assert_eq!(line, "python3 -c import os /mnt/hang");
        assert_eq!(n, 0);
        let (k, n) = kernel_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/vda1 secret_key=abc quiet\n");
        assert_eq!(
            k,
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 secret_key=<redacted> quiet"
        );
        assert_eq!(n, 1);
    }
}
